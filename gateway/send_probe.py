"""Whether sendfile(2) pays for clients on this host's loopback: measured once at start.

A local chunk leaves by sendfile (gateway/local_send.py) to save the copy into the socket.
To a client on another host that saves work. To a client on this host's loopback
(127.0.0.0/8, ::1: a containerd or a CI job pulling through the gateway beside it) the
receiving side is this host's work too (the kernel even runs part of it in the sender's
context), and sendfile moves work to the receiver, whose copy then reads page-cache pages
instead of freshly written ones. The other way is a write(2) straight from the LMDB map
(one kernel copy into the socket, on the same send threads). Which costs this host less
depends on the kernel and the CPU: on a 2-core Intel Xeon VM one connection's 64 MiB
pulls ran at 1.3 GB/s by sendfile and 2.3 by writes (8 connections: 2.3 and 2.8), while on
a 2-core AMD EPYC VM with the same kernel sendfile beat the old copy path by 20-80 %
(bench/README.md, "Link checks under a lease, loopback pulls written from the map").

`gateway.local_sendfile_loopback` says what loopback clients get: `on` (sendfile), `off`
(writes from the map), or `auto` (the default): `LoopbackSends.start` sends 8 rounds of
32 MiB each way over a loopback connection in a worker thread (the gateway's own
`send_file` and `send_buffer` on a non-blocking socket), counts the CPU of the sending
and the receiving thread (on loopback both are this host's), and keeps sendfile unless
the writes' median round costs less than `WRITE_MUST_SAVE` of sendfile's
(`gateway.loopback_send_probe` in the log, with both figures). Until the probe has
answered, loopback clients get sendfile; a probe that fails leaves it so. Clients on other
addresses always get sendfile (with `local_sendfile`).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass

from cargohold.log import log_event
from gateway.client_address import parse_address
from gateway.cluster.local_reads import send_buffer, send_file

logger = logging.getLogger("cargohold.gateway")

MiB = 1024 * 1024
# The probe's file, what each method sends per round, and the rounds (alternated).
PROBE_FILE_BYTES = 16 * MiB
PROBE_ROUND_BYTES = 32 * MiB
PROBE_ROUNDS = 8
# The send size of one call (a chunk's, by default).
PROBE_CALL_BYTES = 4 * MiB
# sendfile keeps its place unless writing costs less than this share of it: a near tie is
# not worth leaving the zero-copy path for.
WRITE_MUST_SAVE = 0.95


@dataclass(frozen=True)
class SendCosts:
    """CPU-seconds per GB (sending and receiving thread), each way."""

    sendfile: float
    write: float

    def sendfile_pays(self) -> bool:
        return not self.write < WRITE_MUST_SAVE * self.sendfile


def is_loopback(peer: object) -> bool:
    """Whether a transport's `peername` is a loopback address (None/unix: False). An
    IPv4-mapped peer (a dual-stack listener) is its IPv4 address: the same loopback path."""
    if not isinstance(peer, tuple) or not peer:
        return False
    address = parse_address(str(peer[0]))
    return address is not None and address.is_loopback


def measure_loopback_sends(
    round_bytes: int = PROBE_ROUND_BYTES, rounds: int = PROBE_ROUNDS
) -> SendCosts:
    """Send `round_bytes` over a loopback TCP connection by sendfile and by writes from a
    map of the file, `rounds` times each (alternated, in turns), from a file in the temp
    directory; the median round's CPU per GB (sending and receiving thread) each way: one
    round disturbed by other work does not decide. Blocking: run it in a worker thread."""
    rounds_cpu: dict[str, list[float]] = {"sendfile": [], "write": []}
    with tempfile.TemporaryFile(prefix="cargohold-send-probe-") as file:
        file.write(os.urandom(PROBE_FILE_BYTES))
        file.flush()
        fd = file.fileno()
        with mmap.mmap(fd, PROBE_FILE_BYTES, prot=mmap.PROT_READ) as region:
            mapped = memoryview(region)
            try:
                with socket.create_server(("127.0.0.1", 0)) as server:
                    with socket.create_connection(server.getsockname()[:2]) as receiver:
                        sender, _ = server.accept()
                        sender.setblocking(False)  # as the event loop's sockets
                        with sender:
                            for turn in range(rounds):
                                order = ("sendfile", "write")[:: 1 if turn % 2 == 0 else -1]
                                for method in order:
                                    cpu = _send_round(
                                        sender, receiver, fd, mapped, method, round_bytes
                                    )
                                    rounds_cpu[method].append(cpu)
            finally:
                mapped.release()
    gb = round_bytes / 1e9
    return SendCosts(
        statistics.median(rounds_cpu["sendfile"]) / gb, statistics.median(rounds_cpu["write"]) / gb
    )


def _send_round(
    sender: socket.socket,
    receiver: socket.socket,
    fd: int,
    mapped: memoryview,
    method: str,
    total: int,
) -> float:
    """One round: `total` bytes out of `sender`, drained by a thread; the CPU of both (on
    loopback the receiver's copy is this host's work too, and its cost differs by path:
    sendfile leaves the receiver reading page-cache pages, a write hands it fresh ones)."""
    receiver_cpu: list[float] = []
    drained = threading.Thread(target=_drain, args=(receiver, total, receiver_cpu), daemon=True)
    drained.start()
    started = time.thread_time()
    sent = offset = 0
    while sent < total:
        count = min(PROBE_CALL_BYTES, total - sent, PROBE_FILE_BYTES - offset)
        deadline = time.monotonic() + 60
        if method == "sendfile":  # the gateway's own two sends, on a non-blocking socket
            send_file(sender.fileno(), fd, offset, count, deadline, _never)
        else:
            send_buffer(sender.fileno(), mapped[offset : offset + count], deadline, _never)
        sent += count
        offset = (offset + count) % PROBE_FILE_BYTES
    used = time.thread_time() - started
    drained.join()
    return used + sum(receiver_cpu)


def _never() -> bool:
    return False


def _drain(receiver: socket.socket, total: int, cpu: list[float]) -> None:
    started = time.thread_time()
    buffer = memoryview(bytearray(MiB))
    left = total
    while left > 0:
        got = receiver.recv_into(buffer, min(len(buffer), left))
        if not got:
            break
        left -= got
    cpu.append(time.thread_time() - started)


class LoopbackSends:
    """What loopback clients of this gateway get (see the module docstring)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sendfile = mode != "off"
        self.costs: SendCosts | None = None
        self._task: asyncio.Task[None] | None = None

    def use_sendfile(self, peer: object) -> bool:
        """Whether a local chunk for this peer goes out by sendfile."""
        return self.sendfile or not is_loopback(peer)

    def start(self) -> None:
        """Start the probe (`auto`), from the running event loop."""
        if self.mode == "auto" and self._task is None:
            self._task = asyncio.ensure_future(self._probe())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()  # the worker thread ends with its round; nothing waits for it

    async def _probe(self) -> None:
        try:
            costs = await asyncio.to_thread(measure_loopback_sends)
        except OSError as exc:
            log_event(logger, "gateway.loopback_send_probe_failed", logging.WARNING, error=exc)
            return
        self.costs, self.sendfile = costs, costs.sendfile_pays()
        log_event(
            logger,
            "gateway.loopback_send_probe",
            sendfile_cpu_s_per_gb=round(costs.sendfile, 3),
            write_cpu_s_per_gb=round(costs.write, 3),
            loopback_clients="sendfile" if self.sendfile else "write",
        )
