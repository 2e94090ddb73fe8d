from modelyard.v1 import router_pb2
from router.breaker import BreakerBoard, BreakerPolicy

CLOSED, OPEN, HALF = (
    router_pb2.BREAKER_STATE_CLOSED,
    router_pb2.BREAKER_STATE_OPEN,
    router_pb2.BREAKER_STATE_HALF_OPEN,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def board(clock: Clock, **policy: float) -> tuple[BreakerBoard, list[tuple[str, int]]]:
    changes: list[tuple[str, int]] = []
    b = BreakerBoard(
        BreakerPolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda w, s: changes.append((w, s)),
    )
    return b, changes


def test_opens_after_consecutive_failures_and_refuses() -> None:
    b, changes = board(Clock(), consecutive_failures=3)
    for _ in range(2):
        b.on_failure("w")
    assert b.state("w") == CLOSED and b.allows("w")
    b.on_failure("w")
    assert b.state("w") == OPEN and not b.allows("w")
    assert ("w", OPEN) in changes


def test_opens_on_error_rate_without_a_long_streak() -> None:
    b, _ = board(Clock(), consecutive_failures=100, error_rate=0.5, window=10, min_calls=10)
    for i in range(10):
        (b.on_failure if i % 2 else b.on_success)("w")
    assert b.state("w") == OPEN


def test_half_open_after_cool_down_lets_one_probe_decide() -> None:
    clock = Clock()
    b, _ = board(clock, consecutive_failures=1, open_s=5.0)
    b.on_failure("w")
    clock.now = 5.0
    assert b.state("w") == HALF and b.allows("w")
    b.on_attempt("w")
    assert not b.allows("w")  # the probe is out
    b.on_success("w")
    assert b.state("w") == CLOSED and b.allows("w")


def test_a_failed_probe_opens_again() -> None:
    clock = Clock()
    b, _ = board(clock, consecutive_failures=1, open_s=5.0)
    b.on_failure("w")
    clock.now = 6.0
    b.on_attempt("w")
    b.on_failure("w")
    assert b.state("w") == OPEN
    clock.now = 10.0
    assert b.state("w") == OPEN
    clock.now = 11.0
    assert b.state("w") == HALF


def test_unknown_worker_is_closed_and_forget_drops_state() -> None:
    b, _ = board(Clock(), consecutive_failures=1)
    assert b.state("new") == CLOSED
    b.on_failure("w")
    b.forget("w")
    assert b.state("w") == CLOSED


def test_forgetting_a_worker_drops_its_breaker_and_series() -> None:
    from router.accounting import Accounting
    from router.metrics import RouterMetrics
    from router.state.latency import LatencyEstimates
    from router.stats import RoutingStats

    metrics = RouterMetrics()
    board = BreakerBoard(BreakerPolicy(consecutive_failures=1))
    pool = {"w:1", "w:2"}
    metrics.watch_breakers(lambda: {w: board.state(w) for w in pool})
    acct = Accounting(board, LatencyEstimates(), RoutingStats(), metrics)
    acct.attempt_failed("w:1")

    def state(worker: str, name: str) -> float | None:
        labels = {"worker": worker, "state": name}
        return metrics.registry.get_sample_value("modelyard_router_breaker_state", labels)

    # One series per state, 1 on the current one: alerts select state="open".
    assert (state("w:1", "open"), state("w:1", "closed"), state("w:1", "half_open")) == (1, 0, 0)
    assert (state("w:2", "open"), state("w:2", "closed")) == (0, 1)

    pool.discard("w:1")
    acct.forget_worker("w:1")

    assert state("w:1", "open") is None
    assert state("w:1", "closed") is None
    assert board.state("w:1") == router_pb2.BREAKER_STATE_CLOSED
