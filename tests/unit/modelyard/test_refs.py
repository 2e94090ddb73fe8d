"""The model key has one constructor, and names are checked at the boundary."""

from __future__ import annotations

import pytest

from modelyard.errors import InvalidArgument
from modelyard.refs import ModelRef, key_of, model_key, parse_ref, split_key
from modelyard.v1 import model_pb2


def test_one_key_for_a_model_a_ref_and_parts() -> None:
    model = model_pb2.Model(name="smollm2", version="1.0")
    assert key_of(model) == model_key("smollm2", "1.0") == "smollm2@1.0"
    assert key_of(ModelRef("smollm2", "1.0")) == key_of(model)
    assert split_key(key_of(model)) == ("smollm2", "1.0")


def test_parse_ref_names_the_field() -> None:
    assert parse_ref("smollm2@1.0") == ModelRef("smollm2", "1.0")
    assert parse_ref(" smollm2 ") == ModelRef("smollm2")
    with pytest.raises(InvalidArgument) as bad:
        parse_ref("Bad Name", field="hints.model")
    assert [v.field for v in bad.value.violations] == ["hints.model"]
