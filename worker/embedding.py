"""WorkerService.Embed's work: admit a batch like a generation, run the engine, shape vectors.

Admission is the model manager's (`acquire`): the same priority queue, reference
count (a model with an embedding in flight is never evicted), load_if_cold and
deadline as a generation. The batch's estimated tokens count against the queue's
token bound. Normalizing and cutting to `dimensions` happen here, once for every
engine; the engine pools per the request (its model's own pooling by default).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence

from opentelemetry import trace

from modelyard.errors import InvalidArgument
from modelyard.genai import request_attributes, response_attributes, span_name, usage_attributes
from modelyard.refs import ModelKey
from modelyard.tokens import estimate_tokens
from modelyard.v1 import common_pb2, worker_pb2
from modelyard.validation import check_embed
from worker.admission import within
from worker.catalogue import Catalogue
from worker.engines.base import EmbedRequest, Pooling
from worker.engines.embed_common import not_embedding_model
from worker.milestones import Clock
from worker.residency import ModelManager

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.worker")

EMBEDDINGS = "embeddings"  # gen_ai.operation.name of an embedding request
POOLINGS = {
    common_pb2.POOLING_UNSPECIFIED: Pooling.MODEL,
    common_pb2.POOLING_MEAN: Pooling.MEAN,
    common_pb2.POOLING_CLS: Pooling.CLS,
    common_pb2.POOLING_LAST: Pooling.LAST,
}


def shaped(vector: Sequence[float], params: common_pb2.EmbeddingParams) -> list[float]:
    """The vector cut to `dimensions` (when set) and scaled to unit length (unless not)."""
    if params.dimensions > len(vector):
        raise InvalidArgument.for_field(
            "params.dimensions",
            f"the model's vectors have {len(vector)} dimensions; asked for {params.dimensions}",
        )
    values = list(vector[: params.dimensions or len(vector)])
    normalize = params.normalize if params.HasField("normalize") else True
    if normalize:
        norm = math.sqrt(sum(x * x for x in values))
        if norm > 0:
            values = [x / norm for x in values]
    return values


class EmbedHandler:
    def __init__(self, manager: ModelManager, catalogue: Catalogue, worker_id: str) -> None:
        self._manager = manager
        self._catalogue = catalogue
        self._worker_id = worker_id

    async def embed(
        self,
        key: ModelKey,
        request: worker_pb2.WorkerServiceEmbedRequest,
        deadline: float | None,
    ) -> worker_pb2.WorkerServiceEmbedResponse:
        clock = Clock()
        check_embed(request.inputs, request.params)
        request_id = request.request_id or uuid.uuid4().hex
        attributes = {
            **request_attributes(EMBEDDINGS, key),
            **response_attributes(key, request_id),
            "modelyard.request_id": request_id,
        }
        with tracer.start_as_current_span(
            span_name(EMBEDDINGS, key), attributes=attributes
        ) as span:
            model = await within(deadline, self._catalogue.resolve(key), f"resolving {key}")
            if not model.capabilities.embedding:
                raise not_embedding_model(key)  # before a load: a chat model is no answer
            tokens = sum(estimate_tokens(len(text)) for text in request.inputs)
            async with self._manager.acquire(
                model,
                load_if_cold=request.load_if_cold,
                priority=request.priority,
                tokens=tokens,
                deadline=deadline,
            ) as lease:
                clock.scheduled = time.monotonic()
                span.set_attribute("modelyard.engine", lease.engine.name)
                job = EmbedRequest(
                    tuple(request.inputs), POOLINGS[request.params.pooling], request.params.truncate
                )
                result = await within(deadline, lease.engine.embed(job), "embedding")
                clock.tokens_arrived()
            usage = common_pb2.Usage(input_tokens=result.input_tokens)
            span.set_attributes(usage_attributes(usage))
            response = worker_pb2.WorkerServiceEmbedResponse(
                started=common_pb2.GenerationStarted(
                    request_id=request_id,
                    model=model.name,
                    version=model.version,
                    worker_id=self._worker_id,
                    engine=lease.resident.engine_kind,
                    cold_start=lease.cold_start,
                ),
                usage=usage,
                timings=clock.timings(lease.load_ms, 0),
            )
            for i, vector in enumerate(result.vectors):
                response.embeddings.add(index=i, values=shaped(vector, request.params))
        log.debug(
            "%s on %s: %d inputs, %d tokens",
            request_id,
            key,
            len(request.inputs),
            usage.input_tokens,
        )
        return response
