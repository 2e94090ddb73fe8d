from router.scheduling.filters.healthy import HealthyFilter
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_drops_workers_not_reporting_status_and_says_why() -> None:
    up, down = cand("up"), cand("down", healthy=False)
    state = cycle()
    assert list(HealthyFilter().filter(req(), [up, down], state)) == [up]
    assert "down" in state.describe_rejections()


def test_fails_open_when_no_worker_reports_status() -> None:
    a, b = cand("a", healthy=False), cand("b", healthy=False)
    assert list(HealthyFilter().filter(req(), [a, b], cycle())) == [a, b]
