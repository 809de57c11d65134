"""A chaos workload: concurrent registry clients pushing and pulling through gateways.

`Workload` runs several clients in a background thread (its own event loop). Each client
pushes small multi-blob images (`cluster.images`) through one gateway, switching to
another whenever a request fails, and pulls acknowledged images back through a random
gateway. It records:

- every ACKNOWLEDGED image: its manifest `PUT` answered 201 (the blobs it names were
  answered 201 before). Their bytes are regenerated from a seed, never kept in memory;
- every client-visible failure (a 5xx, a refused connection, a timeout), with the request,
  the gateway and when it happened; clients retry these, since they are what a registry
  client sees while a cluster recovers;
- every VIOLATION: something a correct registry must never answer whatever fails, such as a
  404 or wrong bytes for an acknowledged image, or `MANIFEST_BLOB_UNKNOWN` for a blob whose
  upload was acknowledged. Tests assert there are none.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from cluster.images import ImageSpec, random_image
from cluster.registry_client import RegistryClient, Retryable, Violation, check_image


@dataclass
class Acked:
    spec: ImageSpec
    gateway: str
    sent_at: float  # monotonic time the manifest PUT was sent
    acked_at: float  # monotonic time its 201 arrived


@dataclass
class Failure:
    at: float
    gateway: str
    op: str
    status: int  # 0 when there was no HTTP answer
    detail: str


@dataclass
class WorkloadStats:
    pushes_started: int = 0
    pushes_acked: int = 0
    pushes_abandoned: int = 0
    pulls_ok: int = 0
    requests_failed: int = 0


class Workload:
    """Concurrent pushers/pullers against a set of gateways; see the module docstring."""

    def __init__(
        self,
        gateway_urls: list[str],
        chunk_size: int,
        clients: int = 4,
        repos: int = 3,
        seed: int = 1,
        push_deadline: float = 120.0,
        pause: float = 0.0,
    ) -> None:
        self.gateway_urls = list(gateway_urls)
        self.chunk_size = chunk_size
        self.clients = clients
        self.repos = [f"chaos/r{seed}-{i}" for i in range(repos)]
        self.seed = seed
        self.push_deadline = push_deadline
        self.think_time = pause
        self.acked: list[Acked] = []
        self.failures: list[Failure] = []
        self.violations: list[str] = []
        self.stats = WorkloadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._thread: threading.Thread | None = None
        self._loop_error: BaseException | None = None

    # -- control (test thread) --
    def pause(self) -> None:
        """Start no new image (pushes in flight finish); e.g. while verifying."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def start(self) -> Workload:
        self._thread = threading.Thread(target=self._main, name="chaos-workload", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 180.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError("workload clients did not stop")
        if self._loop_error is not None:
            raise self._loop_error

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def snapshot(self) -> list[Acked]:
        with self._lock:
            return list(self.acked)

    def wait_acked(self, n: int, timeout: float = 120.0) -> None:
        """Until at least `n` images are acknowledged in total (the workload makes progress)."""
        self.resume()
        deadline = time.monotonic() + timeout
        while self.acked_count() < n:
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"workload died: {self._loop_error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.acked_count()} of {n} images acknowledged in {timeout}s; "
                    f"last failures: {[asdict(f) for f in self.failures[-5:]]}"
                )
            time.sleep(0.05)

    def first_ack_sent_after(self, t: float) -> float | None:
        """Monotonic time of the first 201 for a manifest PUT sent at or after `t`."""
        with self._lock:
            times = [a.acked_at for a in self.acked if a.sent_at >= t]
        return min(times) if times else None

    def failures_between(self, start: float, end: float) -> list[Failure]:
        with self._lock:
            return [f for f in self.failures if start <= f.at < end]

    # -- the clients (workload thread) --
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by stop()
            self._loop_error = exc

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            client = RegistryClient(s)
            await asyncio.gather(*(self._client(client, k) for k in range(self.clients)))

    def _record_failure(self, exc: Retryable, base: str) -> None:
        with self._lock:
            self.failures.append(
                Failure(time.monotonic(), base, exc.op, exc.status, exc.detail[:200])
            )
            self.stats.requests_failed += 1

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    async def _client(self, client: RegistryClient, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        gateway = k % len(self.gateway_urls)
        while not self._stop.is_set():
            if not self._go.is_set():
                await asyncio.sleep(0.05)
                continue
            spec = random_image(rng, rng.choice(self.repos), self.chunk_size)
            gateway = await self._push(client, spec, gateway, rng)
            with self._lock:
                previous = self.acked[rng.randrange(len(self.acked))] if self.acked else None
            if previous is not None:
                gateway = await self._pull(client, previous.spec, gateway, rng)
            if self.think_time:
                await asyncio.sleep(self.think_time)

    async def _retrying(self, gateway: int, op: Any) -> tuple[int, Any]:
        """Run `op(base)` until it succeeds, switching gateways after each failure."""
        deadline = time.monotonic() + self.push_deadline
        backoff = 0.05
        while True:
            base = self.gateway_urls[gateway]
            try:
                return gateway, await op(base)
            except Retryable as exc:
                self._record_failure(exc, base)
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                gateway = (gateway + 1) % len(self.gateway_urls)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _push(
        self, client: RegistryClient, spec: ImageSpec, gateway: int, rng: random.Random
    ) -> int:
        with self._lock:
            self.stats.pushes_started += 1
        try:
            for _, digest, data in spec.blobs():
                monolithic = rng.random() < 0.5

                async def blob(
                    base: str, d: str = digest, b: bytes = data, m: bool = monolithic
                ) -> None:
                    await client.push_blob(base, spec.repo, d, b, m)

                gateway, _ = await self._retrying(gateway, blob)
            manifest = spec.manifest()
            sent_at = 0.0

            async def put(base: str) -> str:
                nonlocal sent_at
                sent_at = time.monotonic()
                return await client.put_manifest(base, spec.repo, spec.tag, manifest)

            gateway, dcd = await self._retrying(gateway, put)
            acked_at = time.monotonic()
            if dcd != spec.digest:
                raise Violation(f"manifest PUT 201 with digest {dcd}, want {spec.digest}")
        except Retryable:
            with self._lock:
                self.stats.pushes_abandoned += 1
            return gateway
        except Violation as exc:
            self._violation(str(exc))
            return gateway
        with self._lock:
            self.acked.append(Acked(spec, self.gateway_urls[gateway], sent_at, acked_at))
            self.stats.pushes_acked += 1
        return gateway

    async def _pull(
        self, client: RegistryClient, spec: ImageSpec, gateway: int, rng: random.Random
    ) -> int:
        gateway = rng.randrange(len(self.gateway_urls))

        async def pull(base: str) -> int:
            return await check_image(client, base, spec, by_tag=True)

        try:
            gateway, _ = await self._retrying(gateway, pull)
        except Retryable:
            return gateway
        except Violation as exc:
            self._violation(str(exc))
            return gateway
        with self._lock:
            self.stats.pulls_ok += 1
        return gateway
