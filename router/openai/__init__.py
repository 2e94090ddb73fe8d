"""The OpenAI-compatible HTTP front of the router (/v1/chat/completions, /v1/completions,
/v1/models). It speaks to the router's own gRPC API over loopback, so every request
takes the same path as a gRPC client's: validation, resolution, scheduling, retries,
stats, deadlines and cancellation."""

from router.openai.app import build_app
from router.openai.server import HttpFront, start_http_front

__all__ = ["HttpFront", "build_app", "start_http_front"]
