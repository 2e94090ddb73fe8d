"""Options for every channel one modelyard service opens to another."""

from __future__ import annotations

# gRPC's default reconnect backoff grows to 120 s; a restarted worker (or registry)
# should be reachable again within a couple of seconds.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # HTTP/2 pings find a stopped peer process (SIGSTOP, a hung host) whose TCP peer
    # still answers: no ping ack within 10 + 5 s fails its calls UNAVAILABLE. Servers
    # accept pings this often (modelyard/server.py).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
