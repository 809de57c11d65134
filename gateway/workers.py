"""`gateway.workers` > 1: one supervisor and N gateway worker processes on one listen address.

A gateway is one Python process with one event loop; on a host with spare cores a single
gateway's loop is the limit of large pulls (bench/README.md "More gateway processes per
host"). With `gateway.workers = N` the `cargohold gateway` process becomes a supervisor that
serves nothing itself:

- Before starting anything it checks that `gateway.listen` and every worker's metrics port
  are free (`ensure_bindable`: a taken one is `AddressInUse`, exit 4, naming the holder).
- It starts N workers, `python -m gateway.workers`, each a whole gateway (`serve` of
  gateway/server.py) listening on the same address with SO_REUSEPORT: the kernel spreads
  new connections over them. Every worker is an independent gateway of the cluster, so
  what is per-gateway is per-worker (caches, memory budgets, upload entries, the mirror's
  single-flight downloads, leases of background jobs, the pull-time batches): all of it
  is already correct with several gateways behind a load balancer (docs/operations.md
  "Gateway workers").
- Metrics are per process, so each worker serves `/metrics` on a port of its own: worker
  k (1..N) on `metrics_address`'s port + k - 1 (config validation requires the address).
- A worker gets its configuration as a pickle on its stdin (the secret never appears in
  an argv or a file), then watches stdin: end-of-file means the supervisor is gone (even
  SIGKILLed), and the worker stops itself with SIGTERM. It reports "listening" by writing
  one byte to a pipe the supervisor passed it.
- Supervision: a worker that exits before every worker of the first start reported
  listening stops the gateway: the others are stopped and the supervisor exits with that
  worker's status (a config, TLS or cluster problem, the same statuses as one process:
  cargohold_cli/exits.py). Later, a worker that exits (a crash, the OOM killer, a
  SIGKILL) is logged (`gateway.worker_exited`) and started again after
  `gateway.worker_restart_delay_seconds`; its siblings keep serving meanwhile. A worker
  that keeps exiting soon after its start (a worker that ran less than
  `gateway.worker_restart_max_delay_seconds`) waits twice as long each time, up to that
  maximum, so a crash loop costs a start a minute, not ten a second; one that ran longer
  starts the count over.
- SIGTERM/SIGINT: every worker gets SIGTERM (each gives in-flight requests
  `gateway.shutdown_grace_seconds`); one still there `_STOP_MARGIN_SECONDS` after that is
  killed. The supervisor exits 0.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from cargohold.config import Config, split_hostport
from cargohold.errors import CargoholdError
from cargohold.log import log_event, setup_logging
from cargohold.ports import ensure_bindable

logger = logging.getLogger("cargohold.gateway.workers")

# How often the supervisor looks at its workers (exits, listening reports, restarts).
_POLL_SECONDS = 0.1
# Seconds past `shutdown_grace_seconds` a SIGTERM'd worker gets before it is killed.
_STOP_MARGIN_SECONDS = 5.0
# The status of a gateway whose worker died of a signal during the first start.
_FAILED = 1
_LEN = struct.Struct(">Q")


def worker_metrics_address(metrics_address: str, index: int) -> str:
    """Worker `index`'s (1..N) metrics address: `metrics_address`'s port + index - 1."""
    host, port = split_hostport(metrics_address)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index - 1}"


def worker_config(cfg: Config, index: int) -> Config:
    """The configuration worker `index` runs: its own metrics address, one process."""
    out = copy.deepcopy(cfg)
    out.gateway.metrics_address = worker_metrics_address(cfg.gateway.metrics_address, index)
    return out


@dataclass
class WorkerPayload:
    """What a worker reads from its stdin before it starts."""

    cfg: Config
    index: int
    ready_fd: int
    log_level: str


def encode_payload(payload: WorkerPayload) -> bytes:
    data = pickle.dumps(payload)
    return _LEN.pack(len(data)) + data


def _read_exact(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        part = os.read(fd, size)
        if not part:
            raise EOFError("the supervisor closed the worker's stdin early")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def read_payload(fd: int) -> WorkerPayload:
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    payload = pickle.loads(_read_exact(fd, size))
    if not isinstance(payload, WorkerPayload):
        raise TypeError("not a worker payload")
    return payload


def _default_spawn(payload: WorkerPayload) -> subprocess.Popen[bytes]:
    """`python -m gateway.workers`, the payload on its stdin (kept open: its lifeline)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.workers"],
        stdin=subprocess.PIPE,
        pass_fds=(payload.ready_fd,),
    )
    assert proc.stdin is not None
    proc.stdin.write(encode_payload(payload))
    proc.stdin.flush()
    return proc


@dataclass
class Worker:
    """One worker slot: its process (None between a exit and its restart)."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_r: int | None = None
    listening: bool = False
    restart_at: float | None = None
    restarts: int = 0
    started_at: float = 0.0
    # Exits in a row, each soon after its start (see `restart_delay`).
    quick_exits: int = 0


class Supervisor:
    """Starts, watches and restarts the workers (`poll`), stops them (`stop`).

    `spawn` starts one worker from its payload (tests pass a fake); `clock` is monotonic.
    """

    def __init__(
        self,
        cfg: Config,
        log_level: str,
        spawn: Callable[[WorkerPayload], subprocess.Popen[bytes]] = _default_spawn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.log_level = log_level
        self._spawn = spawn
        self._clock = clock
        self.workers = [Worker(k) for k in range(1, cfg.gateway.workers + 1)]
        # True once every worker of the first start reported listening.
        self.started = False

    def start_all(self) -> None:
        for worker in self.workers:
            self._start(worker)

    def _start(self, worker: Worker) -> None:
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        payload = WorkerPayload(
            worker_config(self.cfg, worker.index), worker.index, ready_w, self.log_level
        )
        try:
            worker.proc = self._spawn(payload)
        finally:
            os.close(ready_w)
        worker.ready_r = ready_r
        worker.listening = False
        worker.restart_at = None
        worker.started_at = self._clock()
        log_event(
            logger,
            "gateway.worker_started",
            worker=worker.index,
            pid=worker.proc.pid,
            restarts=worker.restarts,
        )

    def _check_listening(self, worker: Worker) -> None:
        if worker.ready_r is None:
            return
        try:
            data = os.read(worker.ready_r, 16)
        except BlockingIOError:
            return
        if data:
            worker.listening = True
        # Listening reported, or end-of-file (the worker exited first): the pipe is done.
        os.close(worker.ready_r)
        worker.ready_r = None

    def poll(self) -> int | None:
        """One look at every worker. Returns an exit status when the gateway must stop
        (a worker failed during the first start), else None."""
        now = self._clock()
        for worker in self.workers:
            if worker.proc is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restarts += 1
                    self._start(worker)
                continue
            self._check_listening(worker)
            status = worker.proc.poll()
            if status is None:
                continue
            self._check_listening(worker)
            if worker.ready_r is not None:
                os.close(worker.ready_r)
                worker.ready_r = None
            if not self.started:
                log_event(
                    logger,
                    "gateway.worker_failed_at_start",
                    logging.ERROR,
                    worker=worker.index,
                    pid=worker.proc.pid,
                    status=status,
                )
                worker.proc = None
                return status if status > 0 else _FAILED
            delay = self.restart_delay(worker, now)
            log_event(
                logger,
                "gateway.worker_exited",
                logging.WARNING,
                worker=worker.index,
                pid=worker.proc.pid,
                status=status,
                ran_seconds=round(now - worker.started_at, 3),
                restart_in_seconds=delay,
            )
            worker.proc = None
            worker.listening = False
            worker.restart_at = now + delay
        if not self.started and all(w.listening for w in self.workers):
            self.started = True
            log_event(
                logger,
                "gateway.workers_listening",
                workers=len(self.workers),
                address=self.cfg.gateway.listen,
            )
        return None

    def restart_delay(self, worker: Worker, now: float) -> float:
        """Seconds before an exited worker starts again: the base delay, doubled for each
        exit in a row of a worker that ran less than the maximum delay, up to it."""
        g = self.cfg.gateway
        if now - worker.started_at >= g.worker_restart_max_delay_seconds:
            worker.quick_exits = 0
        worker.quick_exits += 1
        doublings = min(worker.quick_exits - 1, 32)
        delay = g.worker_restart_delay_seconds * 2**doublings
        return min(g.worker_restart_max_delay_seconds, delay)

    def stop(self) -> None:
        """SIGTERM every worker; kill those still there after the grace and the margin."""
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + self.cfg.gateway.shutdown_grace_seconds + _STOP_MARGIN_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log_event(logger, "gateway.worker_killed", logging.WARNING, pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for worker in self.workers:
            if worker.ready_r is not None:
                os.close(worker.ready_r)
                worker.ready_r = None
            if worker.proc is not None and worker.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()
            worker.proc = None

    def run(self, stop: threading.Event) -> int:
        """Start the workers and supervise them until `stop` is set; the exit status."""
        status: int | None = None
        try:
            self.start_all()
            while not stop.is_set():
                status = self.poll()
                if status is not None:
                    break
                stop.wait(_POLL_SECONDS)
        finally:
            log_event(logger, "gateway.stopping", workers=len(self.workers))
            self.stop()
        return status or 0


def check_addresses(cfg: Config) -> None:
    """`AddressInUse` when the listen address or a worker's metrics port is taken."""
    ensure_bindable(cfg.gateway.listen, "HTTP")
    for k in range(1, cfg.gateway.workers + 1):
        address = worker_metrics_address(cfg.gateway.metrics_address, k)
        ensure_bindable(address, f"worker {k} metrics HTTP")


def supervise(cfg: Config, log_level: str) -> int:
    """The supervisor's life (`cargohold gateway` with `gateway.workers` > 1)."""
    check_addresses(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return Supervisor(cfg, log_level).run(stop)


def _watch_supervisor(stream: IO[bytes], grace: float) -> None:
    """Stop this worker (SIGTERM, then exit after `grace`) when its stdin ends."""
    while stream.read(65536):
        pass
    log_event(logger, "gateway.supervisor_gone", logging.WARNING)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(1)


def worker_main() -> int:
    """A worker process: read the payload, watch the supervisor, serve until SIGTERM."""
    payload = read_payload(sys.stdin.fileno())
    setup_logging(payload.log_level)
    cfg = payload.cfg
    grace = cfg.gateway.shutdown_grace_seconds + _STOP_MARGIN_SECONDS
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    threading.Thread(
        target=_watch_supervisor, args=(stdin, grace), name="supervisor-watch", daemon=True
    ).start()

    def listening() -> None:
        with contextlib.suppress(OSError):
            os.write(payload.ready_fd, b"L")
            os.close(payload.ready_fd)

    from gateway.server import run_gateway

    try:
        run_gateway(cfg, payload.index, listening)
    except CargoholdError as exc:
        print(f"cargohold gateway (worker {payload.index}): {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    # Through the module's real name: the payload's class must be gateway.workers's, not
    # a second copy under __main__.
    from gateway.workers import worker_main as _worker_main

    sys.exit(_worker_main())
