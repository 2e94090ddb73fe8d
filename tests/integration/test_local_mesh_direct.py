"""LocalMesh(direct_streams=True) (`modelyard up --direct-streams`): the router issues
tickets, the worker verifies them and reports each outcome back to the router."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelyard.client import Client
from modelyard.errors import ResourceExhausted
from tests.robustness.sim_mesh import CLIENT_KEY, start_sim_mesh

pytestmark = pytest.mark.integration


def direct_tokens(client: Client, model: str) -> int:
    """One direct generation's token count; a pick refused while the last one's outcome report is
    on its way (the key's one slot is still held) is asked for again, for a few seconds."""
    deadline = time.monotonic() + 10
    while True:
        try:
            stream = client.generate(model=model, prompt="hello", max_tokens=4, direct=True)
            return sum(len(delta.token_ids) for delta in stream)
        except ResourceExhausted:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_direct_streams_on_a_local_mesh_report_their_outcomes(tmp_path: Path) -> None:
    # One slot per key: a pick holds it until the worker's report reaches the router, so
    # three direct generations in a row pass only if every outcome was reported.
    mesh = start_sim_mesh(
        tmp_path, direct=True, env={"MODELYARD_ROUTER_MAX_IN_FLIGHT_PER_KEY": "1"}
    )
    try:
        with Client(mesh.local.router_address, api_key=CLIENT_KEY, timeout_s=30) as client:
            for _ in range(3):
                assert direct_tokens(client, mesh.model.name) == 4
        assert (tmp_path / "tickets" / "ticket.pem").stat().st_mode & 0o777 == 0o600
        assert mesh.alive() == []
    finally:
        mesh.stop()
