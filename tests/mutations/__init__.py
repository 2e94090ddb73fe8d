"""The mutation check: each breaker breaks one important behaviour on purpose, and the
tests named with it must then fail. `python -m tests.mutations` (scripts/mutations.sh,
run by scripts/test.sh) runs them and fails if a breaker survives.

A breaker is a monkeypatch applied for the whole pytest run by the plugin
`tests.mutations.plugin` (`pytest -p tests.mutations.plugin --mutation NAME ...`). The
list is small and explicit (breakers.py): the behaviours the architecture promises and
that a refactor could lose without anyone noticing.
"""
