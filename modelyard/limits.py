"""Bounds every service puts on what it accepts, in one place (issue #11).

`ServerLimits` is nested in each service's settings as `limits`
(MODELYARD_<SERVICE>_LIMITS_*): they apply at the transport, before a message is parsed.
The bounds on generation input (prompt bytes, messages, stop sequences) are checked by
`modelyard.validation` before any routing or decoding work.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MiB = 1024 * 1024


class ServerLimits(BaseModel):
    """Transport bounds of one gRPC server (environment: MODELYARD_<SERVICE>_LIMITS_*)."""

    max_message_bytes: int = Field(
        default=4 * MiB,
        ge=64 * 1024,
        le=256 * MiB,
        description=(
            "Largest request message the port accepts, in bytes; larger is refused by gRPC "
            "(RESOURCE_EXHAUSTED) before it is parsed."
        ),
    )
    max_concurrent_rpcs: int = Field(
        default=2048,
        ge=1,
        description=(
            "Calls in progress on the server at once (streams included); beyond it new calls "
            "are refused at once with RESOURCE_EXHAUSTED instead of queueing."
        ),
    )
    max_streams_per_connection: int = Field(
        default=512,
        ge=1,
        description="Concurrent HTTP/2 streams one client connection may open.",
    )

    stream_idle_write_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Generate streams: longest wait for a client to take the next event (its "
            "flow-control window full: it stopped reading); then the stream ends "
            "DEADLINE_EXCEEDED and its decode slot is freed."
        ),
    )
    max_stream_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "Generate streams: longest a stream may last, whatever the client's deadline; "
            "then it ends DEADLINE_EXCEEDED and its decode slot is freed."
        ),
    )

    def grpc_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
        ]
