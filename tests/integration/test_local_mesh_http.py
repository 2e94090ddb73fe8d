"""LocalMesh(router_http_port=...) starts the router's OpenAI-compatible front (as `up` does)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from modelyard.local_mesh import LocalMesh

pytestmark = pytest.mark.integration


def test_the_router_http_front_answers_once_the_mesh_is_started(tmp_path: Path) -> None:
    off = LocalMesh(data_dir=tmp_path)
    assert off.router_http_address is None  # off unless asked for

    mesh = LocalMesh(data_dir=tmp_path, worker_threads=1, router_http_port=0)
    assert mesh.router_http_address is not None
    assert mesh.router_http_port  # 0 became a free port before start
    mesh.start()
    try:
        # start() returned: the front listens already, no retry needed.
        host, _, port = mesh.router_http_address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("GET", "/v1/models")
            reply = conn.getresponse()
            body = json.loads(reply.read())
        finally:
            conn.close()
        assert reply.status == 200, body
        assert body["object"] == "list"
    finally:
        mesh.stop()
