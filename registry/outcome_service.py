"""OutcomeService over gRPC: translates messages and calls the outcome store.

Who may call it is checked before any handler runs, by `registry.auth.registry_gate`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from modelyard.errors import grpc_errors
from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc
from registry.evaluations import EvaluationStore
from registry.outcomes import OutcomeStore

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

SERVICE_NAME = outcomes_pb2.DESCRIPTOR.services_by_name["OutcomeService"].full_name


class OutcomeServicer(outcomes_pb2_grpc.OutcomeServiceServicer):
    def __init__(self, store: OutcomeStore) -> None:
        self._store = store
        self._evaluations = EvaluationStore(store.engine)

    @grpc_errors
    async def RecordEvaluation(
        self, request: outcomes_pb2.RecordEvaluationRequest, context: Context
    ) -> outcomes_pb2.RecordEvaluationResponse:
        await self._evaluations.record(request.run)
        return outcomes_pb2.RecordEvaluationResponse()

    @grpc_errors
    async def ListEvaluations(
        self, request: outcomes_pb2.ListEvaluationsRequest, context: Context
    ) -> outcomes_pb2.ListEvaluationsResponse:
        runs = await self._evaluations.list(request.model, request.limit)
        return outcomes_pb2.ListEvaluationsResponse(runs=runs)

    @grpc_errors
    async def RecordOutcomes(
        self, request: outcomes_pb2.RecordOutcomesRequest, context: Context
    ) -> outcomes_pb2.RecordOutcomesResponse:
        return outcomes_pb2.RecordOutcomesResponse(
            stored=await self._store.record(request.outcomes)
        )

    @grpc_errors
    async def AttachFeedback(
        self, request: outcomes_pb2.AttachFeedbackRequest, context: Context
    ) -> outcomes_pb2.AttachFeedbackResponse:
        await self._store.attach_feedback(
            request.request_id, request.score, request.comment, request.client
        )
        return outcomes_pb2.AttachFeedbackResponse()

    @grpc_errors
    async def QueryOutcomeStats(
        self, request: outcomes_pb2.QueryOutcomeStatsRequest, context: Context
    ) -> outcomes_pb2.QueryOutcomeStatsResponse:
        return await self._store.query(request.model, request.route, request.window_seconds)


def add_to_server(store: OutcomeStore, server: grpc.aio.Server) -> None:
    outcomes_pb2_grpc.add_OutcomeServiceServicer_to_server(OutcomeServicer(store), server)
