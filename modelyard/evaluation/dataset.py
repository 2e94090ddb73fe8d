"""The prompt set: JSONL, one case a line, read once, checked once, hashed.

A line is a JSON object with `prompt` (text) or `messages` ([{role, content}, ...]), and
optionally `id`, `reference` (a string or a list of acceptable strings), `regex` and
`json_schema` (an object). Blank lines are skipped. Every mistake names its line, so a
user can fix the file without guessing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from modelyard.errors import InvalidArgument

MAX_CASES = 10_000
MAX_LINE_BYTES = 1 << 20
_KEYS = frozenset({"id", "prompt", "messages", "reference", "regex", "json_schema"})
_ROLES = frozenset({"system", "user", "assistant"})


class DatasetError(InvalidArgument):
    """A prompt set that cannot be used; the message names the file and line."""

    def __init__(self, where: str, line: int, problem: str) -> None:
        super().__init__(f"{where} line {line}: {problem}" if line else f"{where}: {problem}")
        self.line = line


@dataclass(frozen=True)
class Case:
    """One prompt with what a good answer looks like."""

    id: str
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    references: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    sha256: str
    cases: tuple[Case, ...] = field(default_factory=tuple)


def load_dataset(path: Path) -> Dataset:
    """Read and check the whole file; DatasetError names the first bad line."""
    digest = hashlib.sha256()
    cases: list[Case] = []
    seen: set[str] = set()
    try:
        with path.open("rb") as handle:
            for number, raw in _lines(handle, path.name):
                digest.update(raw)
                if not raw.strip():
                    continue
                if len(cases) == MAX_CASES:
                    raise DatasetError(path.name, number, f"more than {MAX_CASES} cases")
                case = parse_case(raw, number, path.name)
                if case.id in seen:
                    raise DatasetError(path.name, number, f"id {case.id!r} is used twice")
                seen.add(case.id)
                cases.append(case)
    except OSError as err:
        raise DatasetError(str(path), 0, f"cannot read: {err.strerror or err}") from err
    if not cases:
        raise DatasetError(path.name, 0, "holds no cases")
    return Dataset(name=path.name, sha256=digest.hexdigest(), cases=tuple(cases))


def _lines(handle: Any, where: str) -> Iterator[tuple[int, bytes]]:
    """Lines with their 1-based numbers, never holding more than one bound line."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DatasetError(where, number, "is longer than 1 MiB")
        yield number, raw


def parse_case(raw: bytes, number: int, where: str) -> Case:
    """One line as a Case; DatasetError naming `number` when it is not one."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(where, number, f"is not a JSON object ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(where, number, "is not a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise DatasetError(where, number, f"unknown key(s) {', '.join(unknown)}")
    try:
        return Case(
            id=_case_id(data.get("id"), number),
            prompt=_prompt(data),
            messages=_messages(data.get("messages")),
            references=_references(data.get("reference")),
            regex=_regex(data.get("regex")),
            json_schema=_schema(data.get("json_schema")),
        )
    except ValueError as err:
        raise DatasetError(where, number, str(err)) from None


def _case_id(value: Any, number: int) -> str:
    if value is None:
        return f"line-{number}"
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError("id must be a non-empty string or an integer")
    return str(value)


def _prompt(data: dict[str, Any]) -> str:
    has_prompt, has_messages = "prompt" in data, "messages" in data
    if has_prompt == has_messages:
        raise ValueError("needs exactly one of prompt or messages")
    if not has_prompt:
        return ""
    prompt = data["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    return prompt


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list of {role, content}")
    out: list[tuple[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = message["role"], message["content"]
        if role not in _ROLES or not isinstance(content, str):
            raise ValueError(f"messages[{i}]: role is one of {sorted(_ROLES)}, content a string")
        out.append((role, content))
    return tuple(out)


def _references(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("reference must be a string or a non-empty list of strings")
    return tuple(items)


def _regex(value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("regex must be a non-empty string")
    try:
        return re.compile(value)
    except re.error as err:
        raise ValueError(f"regex does not compile: {err}") from None


def _schema(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("json_schema must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as err:
        raise ValueError(f"json_schema is not a valid JSON Schema: {err.message}") from None
    return value
