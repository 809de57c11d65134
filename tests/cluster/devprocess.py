"""`cargohold dev` as a user runs it, for the tests: a child process with its output
collected line by line, and the free ports it needs."""

from __future__ import annotations

import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cargohold_cli.devcluster import claim_ports, ephemeral_low


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_node_base() -> int:
    """A `--node-base-port` whose gRPC (+0), Raft (+100) and metrics (+200) ports of three
    nodes are free, all below the kernel's ephemeral range: a port in it may be taken at
    any moment as the local port of some outgoing connection (a CI run failed so, on a
    metrics port at 35178). None of them is a port `free_port` handed out in this process
    (a test's gateway port once fell among them), nor handed out by it later."""
    rng = random.Random()
    low = ephemeral_low()
    top = min(40000, low - 203) if low > 20300 else 40000
    for _ in range(200):
        base = rng.randrange(20000, top)
        ports = [base + offset + i for offset in (0, 100, 200) for i in range(3)]
        if all(bindable(p) for p in ports) and claim_ports(ports):
            return base
    raise RuntimeError("no free port range")


class DevProcess:
    """`python -m cargohold_cli dev` with its output collected line by line."""

    def __init__(self, data: Path, port: int, node_base: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cargohold_cli",
                "dev",
                "--data",
                str(data),
                "--port",
                str(port),
                "--node-base-port",
                str(node_base),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not printed; output:\n{''.join(self.seen)}")

    def output_until_exit(self, timeout: float) -> str:
        """Wait for the exit (TimeoutExpired after `timeout` s); everything it printed."""
        self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 5
        while self.proc.stdout is not None and time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                break
        return "".join(self.seen)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
