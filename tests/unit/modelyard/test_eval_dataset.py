"""The prompt set: what a good file gives, and that each mistake names its line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelyard.evaluation.dataset import MAX_CASES, DatasetError, load_dataset


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_good_file_gives_its_cases_and_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        json.dumps({"id": "q1", "prompt": "2+2?", "reference": "4"}),
        "",  # blank lines are skipped but still count for numbering
        json.dumps(
            {
                "messages": [{"role": "user", "content": "a JSON object"}],
                "reference": ["x", "y"],
                "regex": r"\d+",
                "json_schema": {"type": "object"},
            }
        ),
    )
    data = load_dataset(path)
    assert data.name == "set.jsonl"
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first, second = data.cases
    assert (first.id, first.prompt, first.references) == ("q1", "2+2?", ("4",))
    assert second.id == "line-3"
    assert second.messages == (("user", "a JSON object"),)
    assert second.references == ("x", "y")
    assert second.regex is not None and second.regex.pattern == r"\d+"
    assert second.json_schema == {"type": "object"}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{not json", "is not a JSON object"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"reference": "4"}), "exactly one of prompt or messages"),
        (json.dumps({"prompt": "a", "messages": []}), "exactly one of prompt or messages"),
        (json.dumps({"prompt": ""}), "prompt must be a non-empty string"),
        (json.dumps({"prompt": "a", "answer": "b"}), "unknown key(s) answer"),
        (json.dumps({"prompt": "a", "reference": []}), "reference must be"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role is one of"),
        (json.dumps({"prompt": "a", "regex": "(unclosed"}), "regex does not compile"),
        (json.dumps({"prompt": "a", "json_schema": {"type": 7}}), "not a valid JSON Schema"),
        (json.dumps({"id": "q1", "prompt": "a"}), "id 'q1' is used twice"),
    ],
)
def test_a_bad_line_is_an_error_naming_the_line(tmp_path: Path, bad: str, says: str) -> None:
    path = _write(tmp_path, json.dumps({"id": "q1", "prompt": "fine"}), "", bad)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert caught.value.line == 3
    assert "set.jsonl line 3: " in caught.value.message
    assert says in caught.value.message


def test_the_file_is_bounded_in_line_length_and_cases(tmp_path: Path) -> None:
    long_line = json.dumps({"prompt": "x" * (1 << 20)})
    with pytest.raises(DatasetError, match="line 2: is longer than 1 MiB"):
        load_dataset(_write(tmp_path, json.dumps({"prompt": "a"}), long_line))
    many = [json.dumps({"prompt": "p"})] * (MAX_CASES + 1)
    with pytest.raises(DatasetError, match=f"line {MAX_CASES + 1}: more than {MAX_CASES} cases"):
        load_dataset(_write(tmp_path, *many))


def test_an_empty_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no cases"):
        load_dataset(_write(tmp_path, "", "  "))
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "absent.jsonl")
