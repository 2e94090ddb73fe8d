"""Model messages to table rows and back.

The stored spec is the Model without stage and timestamps: those change (or are
set) by the registry and live in columns, so the spec is exactly the immutable
content of a version.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from modelyard.v1 import model_pb2
from registry.tables import ModelLabelRow, ModelRow, ModelTagRow

# Fields the registry owns; they never count as a difference between versions.
REGISTRY_FIELDS = ("stage", "created_at", "updated_at")


def content_of(model: model_pb2.Model) -> model_pb2.Model:
    """The immutable content of a version: everything but stage and timestamps."""
    content = model_pb2.Model()
    content.CopyFrom(model)
    content.ClearField("stage")
    content.ClearField("created_at")
    content.ClearField("updated_at")
    return content


def differing_fields(a: model_pb2.Model, b: model_pb2.Model) -> list[str]:
    """Top-level content fields in which two versions differ, in proto order."""
    return [
        field.name
        for field in model_pb2.Model.DESCRIPTOR.fields
        if field.name not in REGISTRY_FIELDS and getattr(a, field.name) != getattr(b, field.name)
    ]


def new_row(model: model_pb2.Model, now: datetime) -> ModelRow:
    """A row for a validated model; its tag and label rows come from `tag_rows`, `label_rows`."""
    return ModelRow(
        name=model.name,
        version=model.version,
        stage=model.stage,
        chat=model.capabilities.chat,
        completion=model.capabilities.completion,
        created_at=now,
        updated_at=now,
        spec=content_of(model).SerializeToString(deterministic=True),
    )


def tag_rows(model_id: int, model: model_pb2.Model) -> list[ModelTagRow]:
    return [ModelTagRow(model_id=model_id, tag=tag) for tag in set(model.capabilities.tags)]


def label_rows(model_id: int, model: model_pb2.Model) -> list[ModelLabelRow]:
    return [
        ModelLabelRow(model_id=model_id, key=key, value=value)
        for key, value in model.labels.items()
    ]


def row_to_model(row: ModelRow) -> model_pb2.Model:
    model = model_pb2.Model.FromString(row.spec)
    model.stage = model_pb2.Stage.ValueType(row.stage)
    model.created_at.CopyFrom(to_timestamp(row.created_at))
    model.updated_at.CopyFrom(to_timestamp(row.updated_at))
    return model


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the registry only ever writes UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(as_utc(moment))
    return stamp
