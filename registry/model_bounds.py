"""Bounds and known values for what a model version may carry (issue #11).

Checked at registration, before anything is stored: enum fields hold values this
registry knows (proto3 enums are open, so a newer or hostile client can send any
number), and every free-form field has a size a catalogue of thousands can afford to
copy into every Watch snapshot.
"""

from __future__ import annotations

import math

from modelyard.errors import FieldViolation
from modelyard.v1 import common_pb2, model_pb2

MAX_URI_CHARS = 2048
MAX_ENGINES = 8
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
MAX_TAGS = 64
MAX_TAG_CHARS = 64
MAX_DESCRIPTION_CHARS = 4096
MAX_EXTRA_ENTRIES = 32
MAX_EXTRA_VALUE_CHARS = 256

_ENGINES = frozenset(common_pb2.Engine.values()) - {common_pb2.ENGINE_UNSPECIFIED}
_FORMATS = frozenset(model_pb2.ArtifactFormat.values())


def bound_violations(model: model_pb2.Model) -> list[FieldViolation]:
    return _enum_violations(model) + _size_violations(model) + _price_violations(model)


def _enum_violations(model: model_pb2.Model) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if model.artifact.format not in _FORMATS:
        out.append(
            FieldViolation("model.artifact.format", f"unknown value {model.artifact.format}")
        )
    unknown = sorted({e for e in model.engines if e not in _ENGINES})
    if unknown:
        known = ", ".join(common_pb2.Engine.Name(e) for e in sorted(_ENGINES))
        out.append(FieldViolation("model.engines", f"unknown values {unknown}; one of {known}"))
    return out


def _size_violations(model: model_pb2.Model) -> list[FieldViolation]:
    extra = model.load_options.extra
    labels = model.labels
    tags = model.capabilities.tags
    checks = (
        ("artifact.uri", len(model.artifact.uri) > MAX_URI_CHARS, f"{MAX_URI_CHARS} characters"),
        ("engines", len(model.engines) > MAX_ENGINES, f"{MAX_ENGINES} entries"),
        (
            "labels",
            len(labels) > MAX_LABELS
            or any(
                len(k) > MAX_LABEL_KEY_CHARS or len(v) > MAX_LABEL_VALUE_CHARS
                for k, v in labels.items()
            ),
            f"{MAX_LABELS} labels, keys of {MAX_LABEL_KEY_CHARS} characters, values of "
            f"{MAX_LABEL_VALUE_CHARS}",
        ),
        (
            "capabilities.tags",
            len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_CHARS for t in tags),
            f"{MAX_TAGS} tags of {MAX_TAG_CHARS} characters",
        ),
        (
            "description",
            len(model.description) > MAX_DESCRIPTION_CHARS,
            f"{MAX_DESCRIPTION_CHARS} characters",
        ),
        (
            "load_options.extra",
            len(extra) > MAX_EXTRA_ENTRIES
            or any(len(v) > MAX_EXTRA_VALUE_CHARS for v in extra.values()),
            f"{MAX_EXTRA_ENTRIES} entries of {MAX_EXTRA_VALUE_CHARS} characters",
        ),
    )
    return [FieldViolation(f"model.{f}", f"at most {limit}") for f, over, limit in checks if over]


def _price_violations(model: model_pb2.Model) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for name in ("input_usd_per_1k_tokens", "output_usd_per_1k_tokens"):
        price = getattr(model.pricing, name)
        if not (math.isfinite(price) and price >= 0):
            out.append(
                FieldViolation(
                    f"model.pricing.{name}", f"must be a finite number >= 0, got {price}"
                )
            )
    return out
