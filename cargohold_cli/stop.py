"""`cargohold admin stop --data DIR`: stop the processes that own a data directory.

For a cluster whose launcher is gone or out of reach (another terminal, another user's
session). It asks the kernel who holds the locks under DIR (`DIR/LOCK` of `cargohold dev`,
`DIR/nodes/*/LOCK` or `DIR/LOCK` of nodes; cargohold/datadir_lock.py), so it never
signals a process that merely reused a pid from a stale file. Order: the launcher first
(it stops its own children in order), then gateways started from `DIR/config/`
(found by their command line), then nodes. Each gets SIGTERM, and SIGKILL if it is still
there after `timeout` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from cargohold import datadir_lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _gone(pid: int) -> bool:
    return not _alive(pid)


def _lock_dirs(data: Path) -> list[Path]:
    """Directories under `data` (itself and two levels down) that have a LOCK file."""
    found = [data] if (data / datadir_lock.LOCK_NAME).exists() else []
    for pattern in ("*/" + datadir_lock.LOCK_NAME, "*/*/" + datadir_lock.LOCK_NAME):
        found += sorted(p.parent for p in data.glob(pattern))
    return found


def _gateway_pids(data: Path) -> list[int]:
    """Gateways whose `--config` lies in `data/config/` (how `cargohold dev` starts them)."""
    config_dir = str(data / "config") + os.sep
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        args = argv.split("\0")
        if "gateway" in args and "--config" in args:
            config = args[args.index("--config") + 1] if args[-1] != "--config" else ""
            if config.startswith(config_dir):
                pids.append(int(entry))
    return pids


def _terminate(pid: int, what: str, gone: Callable[[], bool], timeout: float) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return f"stopped {what} (pid {pid})"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while not gone() and time.monotonic() < deadline + 5:
        time.sleep(0.1)
    return f"killed {what} (pid {pid}): still running {timeout:g}s after SIGTERM"


def _stop_holder(directory: Path, holder: datadir_lock.LockHolder, timeout: float) -> str:
    if holder.pid is None:
        return f"{directory} is locked by a process that did not record its pid"
    return _terminate(
        holder.pid,
        holder.role or "process",
        lambda: datadir_lock.holder(directory) is None,
        timeout,
    )


def stop_data_dir(data: Path, timeout: float = 30.0) -> list[str]:
    """Stop whatever owns `data`; one line per process stopped (empty: nothing held it)."""
    data = data.resolve()
    held = [(d, h) for d in _lock_dirs(data) if (h := datadir_lock.holder(d)) is not None]
    launchers = [(d, h) for d, h in held if h.role == "cargohold dev"]
    others = [(d, h) for d, h in held if h.role != "cargohold dev"]
    # The launcher first: it stops its own children, gateways then nodes.
    report = [_stop_holder(d, h, timeout) for d, h in launchers]
    for pid in _gateway_pids(data):
        report.append(_terminate(pid, "gateway", functools.partial(_gone, pid), timeout))
    for directory, holder in others:
        if datadir_lock.holder(directory) is not None:
            report.append(_stop_holder(directory, holder, timeout))
    return report
