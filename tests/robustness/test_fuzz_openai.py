"""Fuzz the OpenAI front's HTTP endpoints on a real sim mesh, and pin its edge checks.

Bodies: random JSON of any shape, a valid chat or completion body with one or two
parameters replaced (wrong types, unknown enum values, NaN and huge numbers, unpaired
surrogate escapes), and raw bytes (invalid UTF-8, deep nesting, 5,000-digit numbers,
truncated JSON). Credentials: mostly the client key, else none or a random one.
Per case: never a 5xx for client input, an OpenAI-shaped error body naming a parameter
when one is at fault, no exception text in it. Afterwards: the mesh healthy, under its
RSS bounds, and the router still serving.
"""

from __future__ import annotations

import http.client
import json
import os
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.robustness.conftest import CASES, CODES
from tests.robustness.invariants import leaks, mesh_trouble
from tests.robustness.sim_mesh import CLIENT_KEY, SimMesh

pytestmark = pytest.mark.integration

EXAMPLES = round(200 * float(os.environ.get("MODELYARD_FUZZ_SCALE", "1")))
CHAT = {"model": "sim-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": "sim-a", "prompt": "Once upon a time", "max_tokens": 4}
PARAMETERS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed", "user", "logprobs",
    "top_logprobs", "response_format", "tools", "tool_choice", "presence_penalty",
    "frequency_penalty", "echo", "suffix", "structured_outputs", "guided_regex",
    "guided_grammar",
]  # fmt: skip
# Values OpenAI clients send to enum-like parameters, known and not.
ENUMISH = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {}},
        {"type": "yaml"},
        {"type": None},
        "none",
        "auto",
        "required",
        "sometimes",
        {"type": "function", "function": {"name": "f"}},
        [{"type": "function", "function": {"name": "f"}}],
        "\ud800",
    ]
)


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**31, 2**64, -1, 0, 10**400]),
        st.floats(),  # NaN and infinities: json.dumps writes them as NaN / Infinity
        st.text(max_size=20),
        st.sampled_from(["", "x" * 70_000, "\ud800", "sim-a"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )


def _dumps(value: Any) -> bytes:
    # ensure_ascii keeps an unpaired surrogate as its \\ud800 escape (valid bytes).
    return json.dumps(value).encode()


def near(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """`base` with one or two parameters (or the first message's fields) replaced."""
    keys = st.lists(st.sampled_from(PARAMETERS), min_size=1, max_size=2, unique=True)
    message_field = st.sampled_from(["role", "content", "name"])

    def build(keys: list[str], values: list[Any], field: str, in_message: Any) -> bytes:
        body = json.loads(json.dumps(base))
        for key, value in zip(keys, values, strict=False):
            body[key] = value
        if "messages" in base and in_message is not None:
            body["messages"] = [{**base["messages"][0], field: in_message}]
        return _dumps(body)

    values = st.lists(st.one_of(json_values(), ENUMISH), min_size=2, max_size=2)
    in_message = st.none() | json_values() | st.sampled_from(["wizard", "developer", "tool"])
    return st.builds(build, keys, values, message_field, in_message)


RAW = st.one_of(
    st.binary(max_size=40),  # mostly invalid UTF-8
    st.sampled_from(
        [
            b"",
            b"[" * 100_000 + b"]" * 100_000,
            b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
            b'{"model": "sim-a", "max_tokens": ' + b"1" * 5_000 + b"}",
            b'{"model": "sim-a", "temperature": NaN, "prompt": "x"}',
            b'{"model": "sim-a", "prompt": "x"',
            b"\xff\xfe{}",
            b'{"model": "sim-\xc3\x28", "prompt": "x"}',
        ]
    ),
)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    base: dict[str, Any]


ENDPOINTS = [
    Endpoint("POST", "/v1/chat/completions", CHAT),
    Endpoint("POST", "/v1/completions", COMPLETION),
    Endpoint("GET", "/v1/models", {}),
]


def bodies(endpoint: Endpoint) -> st.SearchStrategy[bytes]:
    if not endpoint.base:
        return st.sampled_from([b"", b"{}", b"\xff"])
    return st.one_of(near(endpoint.base), near(endpoint.base), json_values().map(_dumps), RAW)


def keys() -> st.SearchStrategy[str | None]:
    random = st.text(alphabet=string.ascii_letters + string.digits, max_size=30)
    return st.one_of(st.just(CLIENT_KEY), st.just(CLIENT_KEY), st.none(), random)


class Front:
    """One keep-alive HTTP connection to the front, opened again when the server closes it."""

    def __init__(self, address: str) -> None:
        self._host, _, port = address.rpartition(":")
        self._port = int(port)
        self._conn: http.client.HTTPConnection | None = None

    def send(self, endpoint: Endpoint, body: bytes, key: str | None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            self._conn.request(endpoint.method, endpoint.path, body=body, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.close()  # the server closed a kept-alive connection: once more, afresh
            return self.send(endpoint, body, key)
        if response.getheader("connection", "").lower() == "close":
            self.close()
        return response.status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@pytest.fixture
def front(fuzz_mesh: SimMesh) -> Iterator[Front]:
    address = fuzz_mesh.local.router_http_address
    assert address is not None
    client = Front(address)
    _until_served(client)
    yield client
    client.close()


def _until_served(client: Front, timeout_s: float = 60.0) -> None:
    """Wait out what the tests before left on the shared mesh (the gRPC fuzz unloads
    sim-a) before judging the front's answers, so a reload's wait is not one of them."""
    body = json.dumps({"model": "sim-a", "prompt": "hi", "max_tokens": 1}).encode()
    deadline = time.monotonic() + timeout_s
    status, data = client.send(ENDPOINTS[1], body, CLIENT_KEY)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, data = client.send(ENDPOINTS[1], body, CLIENT_KEY)
    assert status == 200, data[:300]


def check(endpoint: Endpoint, body: bytes, key: str | None, status: int, data: bytes) -> None:
    where = f"{endpoint.method} {endpoint.path} {body[:200]!r}"
    assert status < 500, f"{where}: {status} {data[:300]!r}"
    if status == 200:
        return
    error = json.loads(data)["error"]  # OpenAI's shape, always
    assert isinstance(error["message"], str) and error["message"], where
    sent = body.decode("utf-8", "replace")
    assert not leaks(error["message"], sent), f"{where}: leaks {leaks(error['message'], sent)}"
    if key != CLIENT_KEY:
        assert status == 401, f"{where}: {status} without a valid key"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.path for e in ENDPOINTS])
def test_fuzz_openai_endpoint(endpoint: Endpoint, front: Front, fuzz_mesh: SimMesh) -> None:
    name = f"HTTP {endpoint.method} {endpoint.path}"

    @settings(
        max_examples=EXAMPLES if endpoint.base else 12,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies(endpoint), key=keys())
    def case(body: bytes, key: str | None) -> None:
        CASES[name] += 1
        status, data = front.send(endpoint, body, key)
        CODES[f"HTTP {status}"] += 1
        check(endpoint, body, key, status, data)

    case()
    assert not mesh_trouble(fuzz_mesh), mesh_trouble(fuzz_mesh)


def _chat(**changes: Any) -> bytes:
    return _dumps({**CHAT, **changes})


# Each of these was a 500 or silently ignored before the front checked it (issue #11).
EDGE_CASES = [
    (_chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (_chat(messages=[{"role": "user", "content": "hi", "name": 7}]), "messages[0].name"),
    (_chat(response_format={"type": "yaml"}), "response_format.type"),
    # Honoured by the front; the sim engine cannot constrain output, so the worker refuses.
    (_chat(response_format={"type": "json_object"}), "response_format"),
    (_chat(response_format="text"), "response_format"),
    # The router's check, then the sim engine's refusal, named as the client sent them.
    (_chat(guided_regex="(x"), "guided_regex"),
    (_chat(structured_outputs={"grammar": 'root ::= "x"'}), "structured_outputs.grammar"),
    (_chat(tool_choice="sometimes"), "tool_choice"),
    (_chat(tool_choice="required"), "tool_choice"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (_chat(temperature=10**400), "temperature"),
    (_chat(max_tokens=2**40), "max_tokens"),
    (_chat(seed=2**64), "seed"),
    (_chat(stream="yes"), "stream"),
    (_chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (_chat(model="\ud800"), "model"),
    (_chat(user=["me"]), "user"),
    (_chat(stop=["ok", 3]), "stop[1]"),
    (b"[" * 100_000 + b"]" * 100_000, None),
    (b'{"model": "sim-a", "max_tokens": ' + b"1" * 5_000 + b"}", None),
    (b'{"model": "sim-a", "temperature": NaN, "prompt": "x"}', None),
    (b"\xff\xfe{}", None),
]


@pytest.mark.parametrize(("body", "param"), EDGE_CASES, ids=[str(p) for _, p in EDGE_CASES])
def test_the_front_refuses_bad_input_naming_the_parameter(
    body: bytes, param: str | None, front: Front
) -> None:
    status, data = front.send(ENDPOINTS[0], body, CLIENT_KEY)
    assert status == 400, data[:300]
    error = json.loads(data)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert not leaks(error["message"], body.decode("utf-8", "replace")), error["message"]


def test_a_valid_request_with_the_accepted_enum_values_is_served(front: Front) -> None:
    body = _chat(response_format={"type": "text"}, tool_choice="none", tools=[], stream=False)
    status, data = front.send(ENDPOINTS[0], body, CLIENT_KEY)
    assert status == 200, data[:300]
    assert json.loads(data)["usage"]["completion_tokens"] == 4
