"""Drop models that cannot take the request: chat vs plain completion vs embedding (an
embedding-only model has neither chat nor completion, so no generation reaches it), tools,
required tags, and a context window that holds the prompt plus max_tokens (plus one token
when max_tokens is unset: the output then runs to the end of the context)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.v1 import model_pb2
from router.scheduling.types import Candidate, CycleState, Request

TOOLS_UNFIT = "cannot call tools (capabilities.tools is off)"


def unfit_reason(req: Request, cand: Candidate) -> str | None:
    return _unfit(req, cand.model)


def _unfit(req: Request, model: model_pb2.Model) -> str | None:
    caps = model.capabilities
    if req.embedding:
        if not caps.embedding:
            return "not an embedding model"
    elif req.chat and not caps.chat:
        return "no chat template"
    elif not req.chat and not caps.completion:
        return "no plain completion"
    if req.tools and not caps.tools:
        return TOOLS_UNFIT
    if req.required_tags:
        missing = set(req.required_tags) - set(caps.tags)
        if missing:
            return "missing tags " + ",".join(sorted(missing))
    # context_length 0: unknown, let the worker decide.
    if caps.context_length and caps.context_length < req.context_needed:
        return f"context {caps.context_length} < {req.context_needed} tokens needed"
    return None


@dataclass(frozen=True)
class CapabilityFilter:
    name: str = "capability"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        kept: list[Candidate] = []
        # The answer depends on the model alone, and a pool's candidates of one model
        # share its message: judged once per model, not once per worker.
        verdicts: dict[int, str | None] = {}
        for c in cands:
            model = c.model
            key = id(model)
            if key in verdicts:
                why = verdicts[key]
            else:
                why = verdicts[key] = _unfit(req, model)
            if why is None:
                kept.append(c)
            else:
                cycle.reject(self.name, c, why, blame="tools" if why == TOOLS_UNFIT else "")
        return kept
