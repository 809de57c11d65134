"""A real Prometheus server (Debian package `prometheus`) for tests: its own config, data
directory and free port under the test's tmp dir, scraping the given targets every
second, loading the project's alert rules; the HTTP API (/api/v1/targets, /api/v1/query,
/api/v1/rules) read with urllib. Stopped (SIGTERM, then SIGKILL) by `close()`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cargohold_cli.devcluster import free_port, signal_process

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = [REPO / "deploy" / "prometheus-rules.yml", REPO / "deploy" / "prometheus-alerts.yml"]
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
_NAME = re.compile(r"\bcargohold_[a-z0-9_]*[a-z0-9]\b")


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, Grafana's `$__rate_interval`
    replaced by a fixed range so Prometheus itself can evaluate it."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        target["expr"].replace("$__rate_interval", "1m")
        for panel in panels
        for target in panel.get("targets", [])
    ]


def deploy_metric_names() -> set[str]:
    """The cargohold_* series the dashboard and the alert rules use (comments left out)."""
    texts = [*dashboard_exprs()]
    for path in RULE_FILES:
        texts += [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return {name for text in texts for name in _NAME.findall(text)}


def binary() -> str | None:
    return shutil.which("prometheus")


def scrape_config(jobs: dict[str, list[str]], rule_files: list[Path], interval: str) -> str:
    """prometheus.yml as JSON (YAML is a superset): one static job per name."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    return json.dumps(config, indent=2)


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        jobs: dict[str, list[str]],
        rule_files: list[Path] | None = None,
        interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            scrape_config(jobs, RULE_FILES if rule_files is None else rule_files, interval)
        )
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Prometheus:
        exe = binary()
        assert exe is not None, "prometheus is not installed (scripts/system-deps.sh)"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout}s: {self.tail()}")
            time.sleep(0.2)

    def close(self) -> None:
        signal_process(self.proc)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        return list(self._api("targets")["activeTargets"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector query: [{metric: {...}, value: [ts, "v"]}, ...]."""
        return list(self._api("query", query=expr)["result"])

    def scalar(self, expr: str) -> float | None:
        """The single value of a one-sample query, None when it has no sample."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def rule_names(self) -> set[str]:
        groups = self._api("rules")["groups"]
        return {rule["name"] for group in groups for rule in group["rules"]}


def wait_for(predicate: Any, what: str, timeout: float = 90.0, interval: float = 0.5) -> Any:
    """Poll `predicate()` until it returns something truthy; bounded (a hang guard)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
