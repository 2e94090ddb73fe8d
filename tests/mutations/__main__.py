"""Run the mutation check: `python -m tests.mutations [NAME ...]`.

First the catching tests run unbroken (they must pass, or every breaker would look
caught); then, for each breaker, they run with it applied and must fail. Exit status 1
if a breaker survives (its tests pass) or cannot be applied.
"""

from __future__ import annotations

import subprocess
import sys

from tests.mutations.breakers import BREAKERS, Breaker, by_name

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", "-rN"]


def _pytest(tests: list[str], *extra: str) -> int:
    return subprocess.run([*PYTEST, *extra, *tests], check=False).returncode


def main(argv: list[str]) -> int:
    breakers: list[Breaker] = [by_name(n) for n in argv] if argv else list(BREAKERS)
    catchers = sorted({t for b in breakers for t in b.catchers})
    print(f"==> mutation check: the catching tests pass unbroken ({len(catchers)} tests)")
    if (code := _pytest(catchers)) != 0:
        print(f"mutation check: the catching tests fail without a breaker (exit {code})")
        return 1
    verdicts: dict[str, str] = {}
    for breaker in breakers:
        print(f"==> breaker {breaker.name}: {breaker.breaks}")
        code = _pytest(
            list(breaker.catchers), "-p", "tests.mutations.plugin", "--mutation", breaker.name
        )
        if code == 1:
            verdicts[breaker.name] = "caught"
        elif code == 0:
            verdicts[breaker.name] = "SURVIVED: no test failed"
        else:
            verdicts[breaker.name] = f"ERROR: pytest exited {code} (breaker not applicable?)"
    print("==> mutation check results")
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    bad = [n for n, v in verdicts.items() if v != "caught"]
    if bad:
        print(f"mutation check FAILED: {', '.join(bad)}")
        return 1
    print(f"mutation check passed: all {len(verdicts)} breakers caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
