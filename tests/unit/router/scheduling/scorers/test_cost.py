from router.scheduling.scorers.cost import CostScorer
from tests.unit.router.scheduling.plugin_kit import cand, cycle, model, req


def test_cheapest_scores_one_and_twice_the_price_half() -> None:
    cheap, dear = cand(m=model(price=0.001)), cand(m=model(price=0.002))
    scores = CostScorer().score(req(), [cheap, dear], cycle())
    assert scores[cheap] == 1.0 and scores[dear] == 0.5


def test_a_free_model_scores_one_and_the_dearest_zero() -> None:
    free, mid, dear = cand(m=model()), cand(m=model(price=0.5)), cand(m=model(price=1.0))
    scores = CostScorer().score(req(), [free, mid, dear], cycle())
    assert (scores[free], scores[mid], scores[dear]) == (1.0, 0.5, 0.0)
