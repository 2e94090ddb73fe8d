"""A real Prometheus server for a test: its own config, TSDB and port on loopback, queried
through the HTTP API (/api/v1/query)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard.local_mesh import free_port
from tests.ops.prom import binary

Sample = dict[str, Any]  # {"metric": {label: value}, "value": [time, "text"]}


@dataclass(frozen=True)
class Target:
    """One scrape target and the labels the chart's ServiceMonitor would give it."""

    job: str
    address: str
    labels: Mapping[str, str]


def scrape_config(targets: Sequence[Target], interval_s: int = 1) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "scrape_configs": [
            {
                "job_name": t.job,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
            }
            for t in targets
        ],
    }


class PrometheusServer:
    def __init__(self, directory: Path, targets: Sequence[Target]) -> None:
        self._dir = directory
        self._targets = targets
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        config = self._dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self._targets)))
        log = (self._dir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._until(self._ready, "Prometheus ready", timeout_s)
        self._until(self._targets_up, "every scrape target up", timeout_s)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log_tail(self) -> str:
        path = self._dir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """The instant vector `expr` evaluates to now (a scalar comes back as one sample)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as err:  # 400: the expression does not parse
            raise AssertionError(f"Prometheus refused {expr!r}: {err.read().decode()}") from err
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[Sample] = data["result"]
        return result

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def _targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return len(active) == len(self._targets) and all(t["health"] == "up" for t in active)

    def _until(self, predicate: Any, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in {timeout_s:.0f} s: {what}\n{self.log_tail()}")
            time.sleep(0.2)
