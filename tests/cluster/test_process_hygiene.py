"""Process hygiene with real processes: one owner per data directory, no orphans, and one
clear line with a distinct exit status when a directory or a port is taken.

The launcher test runs one `cargohold dev` and checks, in order: a second one on the same
data is refused naming the first; a node that keeps failing at startup is given up on;
after SIGKILL of the launcher no child is left. The node test freezes a node (SIGSTOP, so
nothing it owns can change) and starts an intruder on its data directory: refused, and
every file byte for byte the same. Exit statuses: cargohold_cli/exits.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from cargohold import datadir_lock
from cargohold.errors import AddressInUse, DataDirInUse
from cargohold.ports import listener_pid
from cargohold_cli.devcluster import LocalCluster, free_port, to_toml
from cluster.devprocess import DevProcess, bindable, free_node_base

pytestmark = [pytest.mark.cluster]


# Bounds for things that happen by themselves: each wait ends as soon as its condition
# holds, the bound only says when to give up. Generous because CI runs this on 2 loaded
# cores where a Python process takes seconds just to import (a 10 s bound failed at load
# 20+); none of these is a claim about speed.
_EXIT_WITHIN = 120.0  # a CLI that refuses to start prints its line and exits
_STOP_WITHIN = 60.0  # a process told to stop (signal, lost lifeline) is gone


def _cli(*args: str, timeout: float = _EXIT_WITHIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: list[int], within: float) -> list[int]:
    """The pids still alive after `within` seconds (polling; empty as soon as all are gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _listen(port: int, within: float = 0.0) -> socket.socket:
    """A listener on `port`, retrying for `within` s (a killed owner's sockets linger)."""
    deadline = time.monotonic() + within
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _lock_pid(directory: Path) -> int:
    held = datadir_lock.holder(directory)
    assert held is not None and held.pid is not None, f"{directory} not locked"
    return held.pid


def test_dev_launcher_owns_its_data_and_children(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, node_base = free_port(), free_node_base()
    first = DevProcess(data, port, node_base, "--max-start-failures", "2")
    try:
        first.wait_for("registry ready")

        # A second launcher on the same data: refused at once, naming the first.
        second = DevProcess(data, port, node_base)
        try:
            out = second.output_until_exit(timeout=_EXIT_WITHIN)
        finally:
            second.kill()
        assert second.proc.returncode == DataDirInUse.exit_code, out
        assert f"pid {first.proc.pid}" in out and "cargohold dev" in out, out
        assert "registry ready" not in out and "Traceback" not in out, out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=30) as resp:
            assert resp.status == 200  # the first one still serves

        # n1 dies and its port is taken meanwhile: restarts fail the same way; given up.
        nodes = [_lock_pid(data / "nodes" / f"n{i}") for i in (1, 2, 3)]
        first.proc.send_signal(signal.SIGSTOP)
        try:
            os.kill(nodes[0], signal.SIGKILL)
            assert not _wait_gone([nodes[0]], within=_STOP_WITHIN)
            squatter = _listen(node_base, within=30)
        finally:
            first.proc.send_signal(signal.SIGCONT)
        with squatter:
            first.wait_for("n1 failed at startup 2 times in a row", timeout=180)
        given_up = first.seen[-1]
        assert "exit 4: address in use" in given_up and f"pid {os.getpid()}" in given_up

        # SIGKILL of the launcher: every child it still had stops by itself.
        gateway = listener_pid(port)
        assert gateway is not None
        children = [gateway, *nodes[1:]]
        assert all(_alive(p) for p in children)
        first.proc.kill()
        first.proc.wait()
        assert _wait_gone(children, within=_STOP_WITHIN) == []
        assert bindable(port) and bindable(node_base + 1)
    finally:
        first.kill()
        for pid in [p for p in (listener_pid(port),) if p]:
            os.kill(pid, signal.SIGKILL)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """relative path -> (size, mtime_ns, sha256) of every file under `directory`."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_a_node_on_a_held_data_dir_is_refused_before_opening_anything(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", nodes=1, gateways=0).start(timeout=90)
    try:
        owner = cluster.node_procs[0]
        assert owner is not None
        config = tomllib.loads(cluster.node_config_path(0).read_text())
        config["node"]["id"] = "intruder"
        config["node"]["grpc_listen"] = f"127.0.0.1:{free_port()}"
        config["node"]["raft_listen"] = f"127.0.0.1:{free_port()}"
        intruder = tmp_path / "intruder.toml"
        intruder.write_text(to_toml(config))
        data_dir = cluster.node_data_dir(0)

        # Frozen, the owner cannot change a byte: whatever changes is the intruder's doing.
        owner.send_signal(signal.SIGSTOP)
        try:
            before = _snapshot(data_dir)
            assert any(name.endswith("data.mdb") for name in before)
            result = _cli("node", "--config", str(intruder))
            after = _snapshot(data_dir)
        finally:
            owner.send_signal(signal.SIGCONT)
        assert result.returncode == DataDirInUse.exit_code, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"pid {owner.pid}" in lines[0] and "node n1" in lines[0], lines[0]
        assert after == before
        assert cluster.node_status(0).node_id == "n1"  # the owner serves on

        # Its launcher is out of reach: `admin stop` finds the node by its lock.
        stopped = _cli(
            "admin", "stop", "--data", str(cluster.base_dir), "--timeout", str(_STOP_WITHIN)
        )
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped node n1 (pid {owner.pid})" in stopped.stdout, stopped.stdout
        assert owner.wait(timeout=_STOP_WITHIN) == 0
        assert datadir_lock.holder(data_dir) is None
    finally:
        cluster.kill_all()


def test_taken_ports_are_one_line_and_a_distinct_status(tmp_path: Path) -> None:
    port = free_port()
    with _listen(port):
        gateway = tmp_path / "gateway.toml"
        gateway.write_text(
            to_toml(
                {
                    "cluster": {"secret": "hygiene-test-secret"},
                    "gateway": {"listen": f"127.0.0.1:{port}", "nodes": ["127.0.0.1:9"]},
                }
            )
        )
        result = _cli("gateway", "--config", str(gateway))
        assert result.returncode == AddressInUse.exit_code, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"127.0.0.1:{port}" in lines[0] and f"pid {os.getpid()}" in lines[0], lines[0]

        # `cargohold dev` checks before it starts anything, and says what holds the port.
        dev = _cli(
            "dev",
            *("--data", str(tmp_path / "dev"), "--port", str(port)),
            *("--node-base-port", str(free_node_base())),
        )
        assert dev.returncode == AddressInUse.exit_code, dev.stdout + dev.stderr
        assert f"pid {os.getpid()}" in dev.stderr and "gateway-1" in dev.stderr, dev.stderr
        assert "ready" not in dev.stdout
        assert not list((tmp_path / "dev").glob("nodes/*/LOCK"))  # no node was started
