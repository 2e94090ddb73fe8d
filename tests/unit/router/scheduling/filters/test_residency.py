from modelyard.v1 import worker_pb2
from router.scheduling.filters.residency import ResidencyFilter
from tests.unit.router.scheduling.plugin_kit import COLD, WARM, cand, cycle, model, req


def test_drops_failed_models_and_keeps_draining_ones_as_cold() -> None:
    """The worker waits for a drain and loads again (load_if_cold): not a 503."""
    warm = cand("a", residency=WARM)
    draining = cand("b", residency=worker_pb2.RESIDENCY_STATE_DRAINING)
    failed = cand("c", residency=worker_pb2.RESIDENCY_STATE_FAILED)
    kept = ResidencyFilter().filter(req(), [warm, draining, failed], cycle())
    assert list(kept) == [warm, draining]
    assert draining.needs_load


def test_cold_model_must_fit_the_whole_budget_not_the_free_part() -> None:
    big = model(memory_bytes=600)
    fits = cand("a", big, residency=COLD, memory_budget_bytes=1000, memory_used_bytes=900)
    too_big = cand("b", big, residency=COLD, memory_budget_bytes=500)
    unknown = cand("c", big, residency=COLD)
    kept = ResidencyFilter().filter(req(), [fits, too_big, unknown], cycle())
    assert list(kept) == [fits, unknown]
