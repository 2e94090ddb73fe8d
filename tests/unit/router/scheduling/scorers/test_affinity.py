from router.scheduling.scorers.affinity import AffinityScorer, rendezvous_ranked
from tests.unit.router.scheduling.plugin_kit import cand, cycle, req


def test_no_session_key_gives_no_preference() -> None:
    a, b = cand("a"), cand("b")
    assert set(AffinityScorer().score(req(), [a, b], cycle()).values()) == {0.0}


def test_a_session_sticks_to_one_worker() -> None:
    workers = [cand(f"w{i}") for i in range(4)]
    chosen = set()
    for _ in range(3):
        scores = AffinityScorer().score(req(session_key="user-7"), workers, cycle())
        assert sorted(scores.values()) == [0.0, 0.0, 0.0, 1.0]
        chosen.add(max(scores, key=lambda c: scores[c]).worker)
    assert len(chosen) == 1


def test_a_much_busier_preferred_worker_loses_the_bonus() -> None:
    r = req(session_key="user-7")
    a, b = cand("a"), cand("b")
    scores = AffinityScorer().score(r, [a, b], cycle())
    preferred = max(scores, key=lambda c: scores[c]).worker
    busy = [cand(w, queued_tokens=10_000 if w == preferred else 0) for w in ("a", "b")]
    assert set(AffinityScorer().score(r, busy, cycle()).values()) == {0.0}


def test_the_pool_ranking_agrees_with_the_scorer() -> None:
    workers = [cand(f"w{i}") for i in range(50)]
    for session in ("a", "user-7", "s-123"):
        scores = AffinityScorer().score(req(session_key=session), workers, cycle())
        preferred = max(scores, key=lambda c: scores[c]).worker
        assert rendezvous_ranked(session, (c.worker for c in workers), 3)[0] == preferred
