"""scripts/test.sh is CI wherever it runs: no hidden failures, no skips, PostgreSQL required."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import postgres

ROOT = Path(__file__).resolve().parents[3]

INI = """[pytest]
markers =
    gpu: needs a CUDA GPU
"""


def _run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_sample.py").write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.ci_gate",
            "-p",
            "no:cacheprovider",
            "--strict-markers",
            "-m",
            "not gpu",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_sample.py"),
            *args,
        ],
        cwd=ROOT,
        # No third-party plugins: only the gate is under test, and startup stays short.
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_green_run_passes_and_prints_the_skip_count(tmp_path: Path) -> None:
    source = "import pytest\n\ndef test_ok():\n    pass\n\n"
    source += "@pytest.mark.gpu\ndef test_cuda():\n    raise AssertionError('never run')\n"
    done = _run_pytest(tmp_path, source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skip count: skipped: 0, xfailed: 0, xpassed: 0, deselected: 1" in done.stdout


# The expected-failure child is a data file, not test code here: this suite itself never
# marks anything as expected to fail; it checks that the gate fails a run that does.
CHILDREN = ROOT / "tests" / "fixtures" / "ci_gate"


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("    pytest.skip('no server')\n", "skipped: 1"),
        ("    pytest.importorskip('no_such_module_here')\n", "skipped: 1"),
        (None, "xfailed: 1"),
    ],
)
def test_a_skip_or_xfail_fails_the_run(tmp_path: Path, body: str | None, outcome: str) -> None:
    if body is None:
        source = (CHILDREN / "expected_failure_child.txt").read_text()
    else:
        source = f"import pytest\n\ndef test_ok():\n    pass\n\ndef test_other():\n{body}"
    done = _run_pytest(tmp_path, source)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert outcome in done.stdout


def test_postgres_missing_in_ci_fails_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(postgres.ENV_VAR, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=postgres.ENV_VAR):
        postgres.server_url()


def test_test_sh_runs_as_ci_and_hides_no_failure_in_an_export() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r"^export CI=true$", script, re.MULTILINE)
    for path in (ROOT / "scripts").glob("*.sh"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.lstrip().startswith("#"):
                continue
            # `export X="$(cmd)"` returns export's status: set -e never sees cmd fail.
            assert not re.search(r"^\s*(export|local|readonly|declare)\s+\w+=\"?\$\(", line), (
                f"{path.name}:{number}: assign first, then export: {line.strip()}"
            )
    flags = (ROOT / "scripts" / "pytest_ci.sh").read_text()
    assert "-p tests.ci_gate" in flags and "--strict-markers" in flags
    assert '-m "not gpu"' in flags
    # The repeat runs exercise the stage CI runs: the same flags, the same files left out.
    for runner in ("test.sh", "repeat.sh"):
        runs = (ROOT / "scripts" / runner).read_text()
        assert "source scripts/pytest_ci.sh" in runs
        assert '"${PYTEST_CI[@]}" "${VLLM_TESTS[@]/#/--ignore=}"' in runs
