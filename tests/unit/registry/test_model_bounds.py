"""Registration refuses unknown enum values and oversized fields before storing anything
(issue #11: enums validated at the client-facing edges; every input has a limit)."""

from __future__ import annotations

import pytest

from modelyard.errors import InvalidArgument
from modelyard.v1 import model_pb2
from registry.models import validated

SHA = "ab" * 32
PRICING = "model.pricing"


def model(**changes: object) -> model_pb2.Model:
    m = model_pb2.Model(
        name="m",
        version="1",
        artifact=model_pb2.Artifact(uri="file:///m.gguf", sha256=SHA),
    )
    for path, value in changes.items():
        target: object = m
        *parents, leaf = path.split("__")
        for part in parents:
            target = getattr(target, part)
        field = getattr(target, leaf)
        if isinstance(value, dict):
            field.update(value)
        elif isinstance(value, list):
            field.extend(value)
        else:
            setattr(target, leaf, value)
    return m


def fields(m: model_pb2.Model) -> list[str]:
    with pytest.raises(InvalidArgument) as err:
        validated(m)
    return [v.field for v in err.value.violations]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"artifact__format": 9}, "model.artifact.format"),
        ({"engines": [1, 42]}, "model.engines"),
        ({"engines": [0]}, "model.engines"),
        ({"artifact__uri": "file:///" + "x" * 3000}, "model.artifact.uri"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "model.labels"),
        ({"labels": {"k": "v" * 300}}, "model.labels"),
        ({"capabilities__tags": ["t"] * 65}, "model.capabilities.tags"),
        ({"description": "d" * 5000}, "model.description"),
        (
            {"pricing__input_usd_per_1k_tokens": float("nan")},
            "model.pricing.input_usd_per_1k_tokens",
        ),
        ({"pricing__output_usd_per_1k_tokens": -1.0}, "model.pricing.output_usd_per_1k_tokens"),
        ({"load_options__extra": {"n_gpu_layers": "9" * 300}}, "model.load_options.extra"),
    ],
)
def test_out_of_bounds_fields_are_named(changes: dict[str, object], field: str) -> None:
    assert field in fields(model(**changes))


def test_a_model_within_every_bound_is_stored_as_sent() -> None:
    m = model(
        engines=[1, 2],
        labels={f"k{i}": "v" for i in range(64)},
        capabilities__tags=["chat"] * 64,
        description="d" * 4096,
        pricing__input_usd_per_1k_tokens=0.5,
    )
    assert validated(m).labels == m.labels
