"""The relay's candidate pool: indexes kept as statuses arrive answer the sample's
questions, and a removed worker leaves them."""

from __future__ import annotations

import random
from typing import Any, cast

from modelyard.prefix import SCHEME, chain_of_prompt
from modelyard.v1 import model_pb2, worker_pb2
from router.accounting import Accounting
from router.breaker import BreakerBoard
from router.relay.candidate_pool import IndexedPool
from router.scheduling.types import Request
from router.state.latency import LatencyEstimates
from router.state.local_load import LocalLoad
from router.stats import RoutingStats
from router.workers import WorkerPool

MODEL = model_pb2.Model(name="m", version="1")
WARM = worker_pb2.RESIDENCY_STATE_WARM


class _Channel:
    """Enough of a channel for a stub to be made; no call is ever sent."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _pool(n: int) -> WorkerPool:
    return WorkerPool(
        [f"10.0.0.{i}:7000" for i in range(n)], connect=lambda a: cast(Any, _Channel())
    )


def _status(
    sequence: int, state: worker_pb2.ResidencyState.ValueType, links: tuple[int, ...] = ()
) -> worker_pb2.WorkerStatus:
    summary = worker_pb2.PrefixCacheSummary(scheme=SCHEME, link_hashes=list(links))
    return worker_pb2.WorkerStatus(
        sequence=sequence,
        models=[worker_pb2.ModelStatus(name="m", version="1", state=state, prefix_cache=summary)],
    )


def _candidates(workers: WorkerPool, models: list[model_pb2.Model] | None = None) -> IndexedPool:
    acct = Accounting(BreakerBoard(), LatencyEstimates(), RoutingStats())
    return IndexedPool(
        models or [MODEL],
        workers,
        acct,
        LocalLoad(),
        random.Random(1),
    )


def test_published_holders_and_warm_workers_come_from_the_index() -> None:
    workers = _pool(300)
    chain = chain_of_prompt("y" * 1000)
    holder, warm = workers.workers[123], workers.workers[200]
    holder.set_status(_status(1, worker_pb2.RESIDENCY_STATE_COLD, chain.hashes[:2]))
    warm.set_status(_status(1, WARM))
    view = _candidates(workers)
    r = Request("r", chat=False, prompt_tokens=100, max_tokens=1, prefix=chain)
    assert [c.worker for c in view.prefix_holders(r, 4)] == [holder.address]
    assert [c.worker for c in view.resident(random.Random(2))] == [warm.address]
    assert len(view) == 300
    assert len({id(c) for c in view.shuffled(random.Random(3))}) == 300

    # A new status drops what the old one said; a forgotten worker leaves every index
    # (WorkerPool.remove forgets it).
    holder.set_status(_status(2, worker_pb2.RESIDENCY_STATE_COLD))
    workers.index.forget(warm.address)
    view = _candidates(workers)
    assert view.prefix_holders(r, 4) == []
    assert list(view.resident(random.Random(2))) == []


def test_the_random_draw_takes_models_in_turn() -> None:
    models = [model_pb2.Model(name=f"m{i}", version="1") for i in range(20)]
    view = _candidates(_pool(100), models)
    assert view.model_count == 20
    drawn = list(view.shuffled(random.Random(4)))
    assert len({id(c) for c in drawn}) == 2000
    for turn in range(3):
        assert len({c.model_key for c in drawn[turn * 20 : (turn + 1) * 20]}) == 20
