"""What machine a result came from: cores, memory, CPU model, kernel, load."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any


def _meminfo_mib(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def info() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_MiB": _meminfo_mib("MemTotal"),
        "memory_available_MiB": _meminfo_mib("MemAvailable"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average_at_start": load_average(),
    }
