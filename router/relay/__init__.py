"""Forward one generation to a worker and relay its stream back, event by event.

Order of candidates comes from the scheduling framework (router/scheduling): the
target's models first, then the route's fallback models, each scheduled afresh.
Rules: the caller's deadline travels to the worker, cancelling the relay cancels
the worker call, a worker that is unreachable (or fails) before the first token
is replaced by the next candidate, and a failure after it ends the stream with
UNAVAILABLE: text already sent is never sent twice. The worker's
GenerationStarted is held back until its first token (or its finish), so a
retried request still shows the client exactly one GenerationStarted.

Modules: `requests` (the client's request as the scheduler and a worker see it),
`attempts` (which candidates are tried, in order, and the log that becomes the final
error), `stream` (one committed worker stream relayed to the client, with its cost)
and `generation` (the `Relay` that ties them together).
"""

from router.relay.generation import Relay
from router.relay.requests import request_id_of
from router.relay.stream import StreamBroken

__all__ = ["Relay", "StreamBroken", "request_id_of"]
