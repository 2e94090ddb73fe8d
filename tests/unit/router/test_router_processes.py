"""The settings and checks of `router serve --processes N` (the processes themselves:
tests/integration/test_router_processes.py)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from router.config import RouterSettings
from router.processes import check_free, sibling_settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"address": "127.0.0.1:0"}, "address needs a fixed port"),
        (
            {"address": "127.0.0.1:7000", "http_address": "127.0.0.1:0"},
            "http_address needs a fixed port",
        ),
        ({"address": "127.0.0.1:7000", "ticket_key": "k:/keys/k.pem"}, "ticket_key"),
    ],
)
def test_shared_ports_are_fixed_and_direct_streams_refused(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RouterSettings(processes=2, **fields)  # type: ignore[arg-type]


def test_one_process_takes_any_port() -> None:
    assert RouterSettings(address="127.0.0.1:0", ticket_key="k:/keys/k.pem").processes == 1


def test_each_sibling_has_its_own_router_id_and_metrics_port() -> None:
    settings = RouterSettings(
        processes=3, address="127.0.0.1:7000", router_id="edge", metrics_port=9100
    )
    assert [
        (s.router_id, s.metrics_port) for s in (sibling_settings(settings, i) for i in range(3))
    ] == [("edge-0", 9100), ("edge-1", 9101), ("edge-2", 9102)]
    off = sibling_settings(settings.model_copy(update={"metrics_port": 0}), 2)
    assert off.metrics_port == 0
    assert off.address == settings.address and off.processes == 3


def test_a_port_someone_listens_on_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(SystemExit, match=f"cannot bind {address}"):
            check_free(address)
    check_free(address)  # free again once closed
