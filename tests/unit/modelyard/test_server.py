"""start_server: one process per port."""

from __future__ import annotations

import socket

import grpc
import pytest

from modelyard.local_mesh import port_is_free
from modelyard.server import start_server


def _nothing(server: grpc.aio.Server) -> None:
    del server


async def test_a_second_server_on_a_held_port_refuses_to_start() -> None:
    first = await start_server("127.0.0.1:0", _nothing, [])
    try:
        with pytest.raises(OSError, match="address in use"):
            await start_server(f"127.0.0.1:{first.port}", _nothing, [])
    finally:
        await first.stop(0)


async def test_the_port_is_free_again_once_the_server_stopped() -> None:
    first = await start_server("127.0.0.1:0", _nothing, [])
    port = first.port
    await first.stop(0)
    again = await start_server(f"127.0.0.1:{port}", _nothing, [])
    await again.stop(0)
    assert again.port == port


def _time_wait_port() -> int:
    """A port with no listener but a connection in TIME_WAIT on it (the server side
    closed first, as after a stopped mesh). Its listener sets SO_REUSEADDR, as gRPC's do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the active closer keeps TIME_WAIT on (127.0.0.1, port)
        client.recv(1)
        client.close()
    return port


def test_a_port_left_in_time_wait_is_free_and_a_listening_one_is_not() -> None:
    port = _time_wait_port()
    assert port_is_free(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert not port_is_free(int(holder.getsockname()[1]))
