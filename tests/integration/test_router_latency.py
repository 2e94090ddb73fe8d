"""LATENCY vs round-robin on a heterogeneous pool: one worker made slower than the other.

Real processes on loopback with the real SmolLM2 (bench.latency_bench's pool): a
registry, a fast worker, a slow one, and two routers over the same workers, one
scheduling for LATENCY, one with the round-robin picker. The test asserts what the
routers decide, the share of requests each sends to the fast worker, which holds on a
loaded machine too; the TTFT comparison itself is measured by `python -m
bench.latency_bench` (a p95 over a few dozen samples would be a coin flip here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.latency_bench import heterogeneous_pool, load, share_to

pytestmark = pytest.mark.integration

CLIENTS = 4
REQUESTS = 24


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with heterogeneous_pool(tmp_path_factory.mktemp("latency")) as routers:
        yield routers


# 60 real SmolLM2 generations: minutes on a quiet 2-core machine, more than the default
# 300 s when the machine is shared (a repeat run under 4x load timed out here).
@pytest.mark.timeout(900)
def test_latency_objective_sends_most_requests_to_the_fast_worker(
    pool: dict[str, str],
) -> None:
    # Warm up both routers so the LATENCY profile has TTFT and token-gap estimates.
    load(pool["latency"], 8, CLIENTS)
    load(pool["round_robin"], 4, CLIENTS)

    # One client at a time for LATENCY: with several in flight its queue scorer rightly
    # spreads load onto the slow worker too, by an amount that depends on how loaded the
    # machine is; alone, only the latency estimates decide. (A router that ignored them
    # would send about half: 18 of 24 or more happens by chance about 1% of the time.)
    results = {
        "latency": load(pool["latency"], REQUESTS, 1),
        "round_robin": load(pool["round_robin"], REQUESTS, CLIENTS),
    }

    to_fast = {name: share_to(r, "fast") for name, r in results.items()}
    assert 0.3 <= to_fast["round_robin"] <= 0.7, to_fast  # the baseline really alternates
    assert to_fast["latency"] >= 0.75, to_fast
