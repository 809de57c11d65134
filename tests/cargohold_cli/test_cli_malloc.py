"""cargohold_cli: a node or gateway tunes malloc before the CLI starts any thread.

A thread that allocates before M_ARENA_MAX is set gets an arena of its own, which later
threads then share (cargohold/memtune.py): the lifeline watcher must start after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import gateway.server
import node.server
from cargohold_cli import cli, lifeline


@pytest.mark.parametrize("verb", ["node", "gateway"])
def test_malloc_is_tuned_before_the_lifeline_thread(
    verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "tune_malloc", lambda *a: calls.append("tune") or True)
    monkeypatch.setattr(lifeline, "watch", lambda *a: calls.append("watch"))
    monkeypatch.setattr(node.server, "main", lambda cfg: calls.append("main"))
    monkeypatch.setattr(gateway.server, "main", lambda cfg: calls.append("main") or 0)
    argv = [verb, "--lifeline-fd", "99"]
    if verb == "node":
        argv += ["--data-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert calls == ["tune", "watch", "main"]
