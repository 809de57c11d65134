"""A system's server cost from /proc: CPU-seconds and peak RSS of each of its processes.

CPU is `utime + stime + cutime + cstime` of /proc/PID/stat (user and kernel time of every
thread, plus that of children the process has waited for), in seconds. Peak RSS is
`VmHWM` of /proc/PID/status, the high-water mark of the resident set over the process's
life. A process that has exited reads as absent (its last figures are lost), never as an
error: a measurement around a kill test is still taken.

`CpuMeter` snapshots every process of a system before a measured phase and gives the
CPU-seconds all of them used during it; `cpu_s_per_gb` turns that into the efficiency
figure the report shows (server CPU-seconds per GB moved, lower is better).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
GB = 1e9


def cpu_seconds(pid: int) -> float | None:
    """utime+stime+cutime+cstime of `pid` in seconds; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17.
    return sum(int(v) for v in fields[11:15]) / _TICKS


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of `pid`: tid -> (its name, utime+stime in seconds); {} when gone. The
    thread whose tid is `pid` is the main thread (a node's or gateway's event loop)."""
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                text = (task / "stat").read_text()
                head, tail = text.rsplit(")", 1)
                fields = tail.split()
                out[int(task.name)] = (
                    head.split("(", 1)[1],
                    sum(int(v) for v in fields[11:13]) / _TICKS,
                )
    return out


def busy_threads(
    processes: Mapping[str, int], before: Mapping[str, dict[int, tuple[str, float]]], elapsed: float
) -> list[tuple[str, str, float]]:
    """(process, thread, percent of `elapsed` on a CPU) of each thread busy at least 2 %
    since `before` (`thread_cpu_seconds` of each process), busiest first; a thread started
    since counts from zero. The main thread is labelled "main", others "name tid"."""
    rows: list[tuple[str, str, float]] = []
    for process, pid in processes.items():
        for tid, (comm, now) in thread_cpu_seconds(pid).items():
            start = before.get(process, {}).get(tid, (comm, 0.0))[1]
            percent = 100 * (now - start) / elapsed
            if percent >= 2:
                label = "main" if tid == pid else f"{comm} {tid}"
                rows.append((process, label, round(percent, 1)))
    return sorted(rows, key=lambda row: -row[2])


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM of `pid` in bytes; None when it is gone (or a kernel thread)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_mib(processes: Mapping[str, int]) -> dict[str, float]:
    """Peak RSS in MiB per named process still running."""
    out: dict[str, float] = {}
    for name, pid in processes.items():
        peak = peak_rss_bytes(pid)
        if peak is not None:
            out[name] = round(peak / 2**20, 1)
    return out


class CpuMeter:
    """CPU-seconds used by a set of processes since the meter was made (or `reset`)."""

    def __init__(self, processes: Mapping[str, int]) -> None:
        self._pids = dict(processes)
        self._start: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self._start = {}
        for name, pid in self._pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                self._start[name] = value

    def used(self) -> dict[str, float]:
        """CPU-seconds per process since the start; a process gone since counts 0."""
        out: dict[str, float] = {}
        for name, start in self._start.items():
            now = cpu_seconds(self._pids[name])
            out[name] = max(0.0, (now - start) if now is not None else 0.0)
        return out

    def total(self) -> float:
        return sum(self.used().values())


def cpu_s_per_gb(cpu_s: float, moved_bytes: int) -> float | None:
    """Server CPU-seconds per GB (10^9 bytes) moved; None when nothing moved."""
    if moved_bytes <= 0:
        return None
    return cpu_s / (moved_bytes / GB)
