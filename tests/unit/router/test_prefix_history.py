"""The router's routing history of prefixes: what it guesses each worker holds."""

from __future__ import annotations

from modelyard.prefix import chain_of_prompt
from modelyard.refs import model_key
from router.state.prefix_history import MAX_WORKERS_PER_LINK, PrefixHistory

M = model_key("m", "1")
OTHER = model_key("m", "2")
FIRST = chain_of_prompt("a" * 600)  # three 256-byte blocks, the last short
LONGER = chain_of_prompt("a" * 600 + "b" * 300)


def test_a_recorded_chain_is_held_by_its_worker_for_its_model_only() -> None:
    history = PrefixHistory()
    history.record(M, "w1", FIRST)
    assert LONGER.held(history.held_by(M, "w1")) == (2, 512)  # the full blocks they share
    assert FIRST.held(history.held_by(M, "w1")) == (3, 600)
    assert FIRST.held(history.held_by(M, "w2")) == (0, 0)
    assert FIRST.held(history.held_by(OTHER, "w1")) == (0, 0)
    assert sorted(history.held_by(M, "w1")) == sorted(FIRST.hashes)
    assert len(history.held_by(M, "w1")) == 3


def test_a_shared_prefix_is_remembered_on_the_last_few_workers() -> None:
    history = PrefixHistory()
    workers = [f"w{i}" for i in range(MAX_WORKERS_PER_LINK + 1)]
    for w in workers:
        history.record(M, w, FIRST)
    held = [w for w in workers if FIRST.held(history.held_by(M, w))[0]]
    assert held == workers[1:]


def test_the_table_is_bounded_in_entries_oldest_first() -> None:
    history = PrefixHistory(max_entries=4)
    history.record(M, "w1", FIRST)  # 3 entries
    history.record(M, "w2", chain_of_prompt("z" * 512))  # 2 more: the oldest goes
    assert len(history) == 4
    # The longest prefix went first; the shorter ones it covers are still held.
    assert FIRST.held(history.held_by(M, "w1")) == (2, 512)
    assert chain_of_prompt("z" * 512).held(history.held_by(M, "w2")) == (2, 512)
