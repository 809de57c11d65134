"""Is a listen address free, and which process listens on it (Linux /proc, best effort).

`ensure_bindable(address, what)` binds and closes a probe socket (SO_REUSEADDR, so
connections in TIME_WAIT do not count; a listener does, even one with SO_REUSEPORT) and
raises `AddressInUse` naming the listening process when it can be found. `listener_pid`
and `listens` read `/proc/<pid>/net/tcp{,6}` and `/proc/<pid>/fd`: they see processes of
the same user (all of them as root) and answer None/False where /proc is not there.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from cargohold.config import split_hostport
from cargohold.errors import AddressInUse, StartupError

_LISTEN = "0A"


def _listening_inodes(port: int, proc: Path = Path("/proc/self")) -> set[str]:
    """Socket inodes in LISTEN state on `port` in the network namespace of `proc`."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN:
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on `port` (in its namespace)."""
    wanted = _listening_inodes(port, Path(f"/proc/{pid}"))
    return bool(wanted & _socket_inodes(pid))


def listener_pid(port: int) -> int | None:
    """The pid of a process listening on `port` in this network namespace, if findable."""
    wanted = _listening_inodes(port)
    if not wanted:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and wanted & _socket_inodes(int(entry)):
            return int(entry)
    return None


def describe_pid(pid: int | None) -> str:
    """'pid 123 (python3 -m cargohold_cli gateway ...)' or 'another process'."""
    if pid is None:
        return "another process"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    if len(cmdline) > 100:
        cmdline = cmdline[:97] + "..."
    return f"pid {pid} ({cmdline})" if cmdline else f"pid {pid}"


def ensure_bindable(address: str, what: str, linger: float = 2.0) -> None:
    """Raise AddressInUse (naming the listener) unless `address` (host:port) can be bound.

    A listener on the port fails at once. Without one, the port may be held for a moment
    by the connections of a process that just died (closing, not yet TIME_WAIT): that is
    retried for up to `linger` seconds.
    """
    host, port = split_hostport(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address} ({what}): {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    deadline = time.monotonic() + linger
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise StartupError(
                        f"cannot listen on {address} ({what}): {exc.strerror}"
                    ) from None
        listening = bool(_listening_inodes(port))
        if listening or time.monotonic() >= deadline:
            holder = describe_pid(listener_pid(port)) if listening else "closing connections"
            raise AddressInUse(f"cannot listen on {address} ({what}): in use by {holder}")
        time.sleep(0.1)
