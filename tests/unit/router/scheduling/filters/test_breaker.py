from router.scheduling.filters.breaker import BreakerFilter
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_drops_workers_whose_breaker_refuses() -> None:
    ok, tripped = cand("ok"), cand("tripped", breaker_allows=False)
    state = cycle()
    assert list(BreakerFilter().filter(req(), [ok, tripped], state)) == [ok]
    assert "breaker open" in state.describe_rejections()
