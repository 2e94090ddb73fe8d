"""Artifact URI parsing: what each scheme's source receives."""

from __future__ import annotations

import pytest

from modelyard.errors import InvalidArgument
from worker.artifacts import parse_uri


def test_hf_file_with_revision() -> None:
    u = parse_uri("hf://HuggingFaceTB/SmolLM2-135M-Instruct@main/onnx/model.onnx")
    assert (u.scheme, u.location, u.path, u.revision) == (
        "hf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "onnx/model.onnx",
        "main",
    )
    assert u.filename == "model.onnx"


def test_hf_whole_repo_becomes_a_directory_named_after_it() -> None:
    u = parse_uri("hf://org/repo")
    assert (u.location, u.path, u.revision, u.filename) == ("org/repo", "", None, "repo")


@pytest.mark.parametrize(
    "uri", ["hf://org", "hf://org/", "hf://org/repo@/x", "hf:///repo/x", "hf://o/r/../x"]
)
def test_bad_hf_uris_are_invalid_arguments(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_uri(uri)


def test_s3_and_http() -> None:
    s3 = parse_uri("s3://models/smol/SmolLM2%20Q4.gguf")
    assert (s3.scheme, s3.location, s3.path, s3.filename) == (
        "s3",
        "models",
        "smol/SmolLM2 Q4.gguf",
        "SmolLM2_Q4.gguf",
    )
    http = parse_uri("https://example.com/a/b/m.gguf?sig=1")
    assert (http.scheme, http.location, http.filename) == ("https", "example.com", "m.gguf")
    with pytest.raises(InvalidArgument):
        parse_uri("s3://bucket-only")


def test_cache_keys_are_stable_and_distinct() -> None:
    a, b = parse_uri("s3://b/k1"), parse_uri("s3://b/k2")
    assert a.cache_key == parse_uri("s3://b/k1").cache_key != b.cache_key


def test_plain_paths_and_file_uris_are_local() -> None:
    assert not parse_uri("/models/x.gguf").is_remote
    assert not parse_uri("file:///models/x.gguf").is_remote


def test_payload_names_cannot_escape_the_cache() -> None:
    assert parse_uri("https://h/..%2F..%2Fetc%2Fpasswd").filename == "passwd"
    assert parse_uri("https://h/a/..").filename == "artifact"
    assert parse_uri("https://h/.bashrc").filename == "bashrc"
