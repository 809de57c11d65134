"""deploy/'s monitoring files: the Prometheus config and alert rules pass `promtool check`
(Debian package `prometheus`, installed by scripts/system-deps.sh), and the Grafana
dashboard is well-formed. tests/cluster/test_prometheus.py runs them against a cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("no promtool (scripts/system-deps.sh installs the prometheus package)")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_alert_rules_pass_promtool() -> None:
    out = _promtool(
        "check",
        "rules",
        str(DEPLOY / "prometheus-rules.yml"),
        str(DEPLOY / "prometheus-alerts.yml"),
    )
    assert out.count("SUCCESS") == 2


def test_scrape_config_passes_promtool_with_its_rule_files() -> None:
    out = _promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert "2 rule files found" in out


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    queries = [p for p in panels if p["type"] != "row"]
    assert len(queries) > 20
    for panel in queries:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in names
