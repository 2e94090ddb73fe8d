from router.scheduling.filters.cost_ceiling import CostCeilingFilter
from tests.unit.router.scheduling.plugin_kit import cand, cycle, model, req


def test_drops_models_priced_over_the_ceiling() -> None:
    cheap, dear = cand(m=model(price=0.001)), cand(m=model(price=0.01))
    kept = CostCeilingFilter().filter(req(max_cost_per_1k=0.001), [cheap, dear], cycle())
    assert list(kept) == [cheap]


def test_no_ceiling_keeps_all() -> None:
    dear = cand(m=model(price=1.0))
    assert list(CostCeilingFilter().filter(req(), [dear], cycle())) == [dear]
