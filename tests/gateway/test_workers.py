"""gateway/workers.py and `gateway.workers`: the setting's validation, each worker's metrics
address, the payload a worker reads, and the supervisor's decisions (over fake processes:
which exits stop the gateway, which are restarted and when, how a stop ends them)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

import pytest

from cargohold.config import Config, validate
from cargohold.errors import ConfigError
from gateway import workers
from gateway.workers import Supervisor, WorkerPayload


def _cfg(n: int = 2, metrics: str = "127.0.0.1:9300", delay: float = 1.0) -> Config:
    cfg = Config()
    cfg.gateway.workers = n
    cfg.gateway.metrics_address = metrics
    cfg.gateway.worker_restart_delay_seconds = delay
    cfg.gateway.shutdown_grace_seconds = 2.0
    return cfg


# -- the setting ---------------------------------------------------------------------------
def test_one_worker_is_the_default_and_needs_nothing() -> None:
    cfg = Config()
    assert cfg.gateway.workers == 1
    validate(cfg)


@pytest.mark.parametrize(
    ("n", "metrics", "delay", "error"),
    [
        (0, "", 1.0, "gateway.workers must be >= 1"),
        (-3, "127.0.0.1:9300", 1.0, "gateway.workers must be >= 1"),
        (2, "", 1.0, "needs gateway.metrics_address"),
        (2, "127.0.0.1:65535", 1.0, "must be a port"),
        (2, "127.0.0.1:0", 1.0, "must be a port"),
        (2, "127.0.0.1:9300", -1.0, "worker_restart_delay_seconds must be >= 0"),
        (2, "127.0.0.1:9300", 90.0, "worker_restart_max_delay_seconds must be >="),
    ],
)
def test_bad_worker_settings_are_refused(n: int, metrics: str, delay: float, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        validate(_cfg(n, metrics, delay))


def test_several_workers_with_a_metrics_address_are_valid() -> None:
    validate(_cfg(4, "127.0.0.1:65532"))


def test_each_worker_has_its_own_metrics_port() -> None:
    assert workers.worker_metrics_address("10.0.0.1:9300", 1) == "10.0.0.1:9300"
    assert workers.worker_metrics_address("10.0.0.1:9300", 3) == "10.0.0.1:9302"
    assert workers.worker_metrics_address("[::1]:9300", 2) == "[::1]:9301"
    cfg = _cfg(2)
    second = workers.worker_config(cfg, 2)
    assert second.gateway.metrics_address == "127.0.0.1:9301"
    assert cfg.gateway.metrics_address == "127.0.0.1:9300"  # the original is untouched


def test_the_payload_survives_a_pipe() -> None:
    r, w = os.pipe()
    try:
        sent = WorkerPayload(_cfg(2), 2, 7, "info")
        os.write(w, workers.encode_payload(sent))
        got = workers.read_payload(r)
    finally:
        os.close(r)
        os.close(w)
    assert (got.index, got.ready_fd, got.log_level) == (2, 7, "info")
    assert got.cfg.gateway.workers == 2


def test_a_short_payload_is_an_error() -> None:
    r, w = os.pipe()
    os.write(w, workers.encode_payload(WorkerPayload(_cfg(2), 1, 7, "info"))[:20])
    os.close(w)
    try:
        with pytest.raises(EOFError):
            workers.read_payload(r)
    finally:
        os.close(r)


# -- the supervisor, over fake processes ---------------------------------------------------
class FakeProc:
    """What the supervisor uses of a Popen."""

    def __init__(self, pid: int, ready_fd: int) -> None:
        self.pid = pid
        self.ready_fd = os.dup(ready_fd)  # the supervisor closes its copy after spawning
        self.status: int | None = None
        self.signals: list[int] = []
        self.stubborn = False  # ignores SIGTERM
        self.killed = False
        self.stdin = None

    def listen(self) -> None:
        os.write(self.ready_fd, b"L")

    def exit(self, status: int) -> None:
        self.status = status
        os.close(self.ready_fd)

    def poll(self) -> int | None:
        return self.status

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.stubborn and self.status is None:
            self.exit(-sig)

    def wait(self, timeout: float | None = None) -> int:
        if self.status is None:
            if not self.killed:
                raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.status if self.status is not None else -signal.SIGKILL

    def kill(self) -> None:
        self.killed = True
        self.exit(-signal.SIGKILL)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, cfg: Config) -> None:
        self.clock = Clock()
        self.spawned: list[tuple[WorkerPayload, FakeProc]] = []
        self.sup = Supervisor(cfg, "warning", spawn=self.spawn, clock=self.clock)

    def spawn(self, payload: WorkerPayload) -> Any:
        proc = FakeProc(1000 + len(self.spawned), payload.ready_fd)
        self.spawned.append((payload, proc))
        return proc

    def live(self) -> list[FakeProc]:
        return [w.proc for w in self.sup.workers if w.proc is not None]  # type: ignore[misc]

    def close(self) -> None:
        for _, proc in self.spawned:
            if proc.status is None:
                os.close(proc.ready_fd)
        for worker in self.sup.workers:
            if worker.ready_r is not None:
                os.close(worker.ready_r)


@pytest.fixture
def harness() -> Any:
    h = Harness(_cfg(2, delay=1.5))
    yield h
    h.close()


def test_workers_start_with_their_own_metrics_port_and_report_listening(
    harness: Harness,
) -> None:
    harness.sup.start_all()
    assert [p.index for p, _ in harness.spawned] == [1, 2]
    assert [p.cfg.gateway.metrics_address for p, _ in harness.spawned] == [
        "127.0.0.1:9300",
        "127.0.0.1:9301",
    ]
    harness.spawned[0][1].listen()
    assert harness.sup.poll() is None
    assert not harness.sup.started  # the second has not reported yet
    harness.spawned[1][1].listen()
    assert harness.sup.poll() is None
    assert harness.sup.started


@pytest.mark.parametrize(("status", "expected"), [(4, 4), (5, 5), (-signal.SIGKILL, 1)])
def test_a_worker_failing_at_the_first_start_stops_the_gateway(
    harness: Harness, status: int, expected: int
) -> None:
    harness.sup.start_all()
    harness.spawned[0][1].listen()
    harness.spawned[1][1].exit(status)  # e.g. 4: its metrics port was taken
    assert harness.sup.poll() == expected
    harness.sup.stop()
    assert harness.spawned[0][1].signals == [signal.SIGTERM]


def test_a_worker_that_dies_later_is_restarted_after_the_delay(harness: Harness) -> None:
    harness.sup.start_all()
    for _, proc in harness.spawned:
        proc.listen()
    assert harness.sup.poll() is None and harness.sup.started
    harness.spawned[1][1].exit(-signal.SIGKILL)
    assert harness.sup.poll() is None  # the gateway goes on with the other worker
    assert harness.sup.workers[1].proc is None
    harness.clock.now += 1.0
    assert harness.sup.poll() is None
    assert len(harness.spawned) == 2  # not yet: the delay is 1.5 s
    harness.clock.now += 0.6
    assert harness.sup.poll() is None
    assert len(harness.spawned) == 3
    payload, proc = harness.spawned[2]
    assert payload.index == 2 and payload.cfg.gateway.metrics_address == "127.0.0.1:9301"
    assert harness.sup.workers[1].restarts == 1
    # A restarted worker that fails is restarted again: the gateway already serves. It
    # ran 0 s (< the 60 s maximum), so its delay doubles: 3 s, not 1.5.
    proc.exit(5)
    assert harness.sup.poll() is None
    harness.clock.now += 2.0
    assert harness.sup.poll() is None
    assert len(harness.spawned) == 3
    harness.clock.now += 1.0
    assert harness.sup.poll() is None
    assert len(harness.spawned) == 4 and harness.sup.workers[1].restarts == 2


def _crash_after(harness: Harness, ran: float) -> float:
    """Worker 2 exits `ran` seconds after its (re)start; the delay before its next start."""
    harness.clock.now += ran
    harness.sup.workers[1].proc.exit(1)  # type: ignore[union-attr]
    assert harness.sup.poll() is None
    restart_at = harness.sup.workers[1].restart_at
    assert restart_at is not None
    delay = restart_at - harness.clock.now
    harness.clock.now = restart_at
    assert harness.sup.poll() is None and harness.sup.workers[1].proc is not None
    return delay


def test_a_worker_in_a_crash_loop_backs_off_up_to_the_maximum() -> None:
    cfg = _cfg(2, delay=1.0)
    cfg.gateway.worker_restart_max_delay_seconds = 10.0
    harness = Harness(cfg)
    try:
        harness.sup.start_all()
        for _, proc in harness.spawned:
            proc.listen()
        assert harness.sup.poll() is None and harness.sup.started
        delays = [_crash_after(harness, 0.5) for _ in range(6)]
        assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        # A worker that ran at least the maximum before exiting starts the count over.
        assert _crash_after(harness, 10.0) == 1.0
        assert _crash_after(harness, 0.1) == 2.0
        assert harness.sup.workers[1].restarts == 8
    finally:
        harness.close()


def test_stop_terms_every_worker_and_kills_one_that_stays(harness: Harness) -> None:
    harness.sup.start_all()
    stubborn = harness.spawned[1][1]
    stubborn.stubborn = True
    harness.sup.stop()
    assert [p.signals for _, p in harness.spawned] == [[signal.SIGTERM], [signal.SIGTERM]]
    assert stubborn.killed and not harness.spawned[0][1].killed
    assert harness.live() == []


def test_run_returns_0_when_stopped() -> None:
    h = Harness(_cfg(3))
    stop = threading.Event()
    stop.set()
    try:
        assert h.sup.run(stop) == 0
    finally:
        h.close()
    assert len(h.spawned) == 3
    assert all(p.signals == [signal.SIGTERM] for _, p in h.spawned)


def test_a_taken_worker_metrics_port_is_refused_before_any_worker_starts() -> None:
    import socket

    from cargohold.errors import AddressInUse
    from cargohold_cli.devcluster import free_port, free_port_run

    base = free_port_run("127.0.0.1", 2)
    cfg = _cfg(2, f"127.0.0.1:{base}")
    cfg.gateway.listen = f"127.0.0.1:{free_port()}"
    workers.check_addresses(cfg)  # all free
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        with pytest.raises(AddressInUse, match="worker 2 metrics"):
            workers.check_addresses(cfg)


def test_a_worker_failing_at_start_is_the_gateways_exit_status(tmp_path: Any) -> None:
    """The real command: both workers fail on an unreadable TLS certificate (status 5,
    StartupError); the supervisor stops and exits 5, and no process stays behind."""
    import sys

    from cargohold_cli.devcluster import free_port, free_port_run

    config = tmp_path / "gateway.toml"
    config.write_text(
        "[cluster]\n"
        'secret = "0123456789abcdef0123456789abcdef"\n'
        "[gateway]\n"
        f'listen = "127.0.0.1:{free_port()}"\n'
        f'metrics_address = "127.0.0.1:{free_port_run("127.0.0.1", 2)}"\n'
        "workers = 2\n"
        f'tls_cert = "{tmp_path}/missing.pem"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "cargohold_cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5, done.stderr
    assert "cannot read the TLS files" in done.stderr
