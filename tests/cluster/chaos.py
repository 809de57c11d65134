"""A reusable chaos workload and verifier for real clusters (LocalCluster).

`Workload` runs several concurrent registry clients in a background thread (its own event
loop). Each client pushes small multi-blob images (random bytes: a JSON config, a layer of
at most one chunk, a layer of several chunks) through one gateway, switching to another
gateway whenever a request fails, and pulls acknowledged images back through a random
gateway. It records:

- every ACKNOWLEDGED image: its manifest `PUT` answered 201 (the blobs it names were
  answered 201 before). Their bytes are regenerated from a seed, never kept in memory;
- every client-visible failure (a 5xx, a refused connection, a timeout), with the request,
  the gateway and when it happened; clients retry these, since they are what a registry
  client sees while a cluster recovers;
- every VIOLATION: something a correct registry must never answer whatever fails, such as a
  404 or wrong bytes for an acknowledged image, or `MANIFEST_BLOB_UNKNOWN` for a blob whose
  upload was acknowledged. Tests assert there are none.

`verify_images` reads every acknowledged image back through every given gateway and
compares bytes (manifest by tag and by digest, every blob); `replica_counts` asks every
node (`Chunks.Has`) how many healthy copies each chunk of the acknowledged images has.
`FailoverProbe` (from bench/failover.py) commits a tiny manifest in a tight loop to time
how long manifest `PUT`s fail after a fault. `Summary` collects phase results and writes
them as JSON + Markdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench.failover import FailoverProbe as FailoverProbe  # re-exported for the tests
from cargohold_cli.devcluster import LocalCluster
from protos import registry_pb2, registry_pb2_grpc

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
# Everything a push or pull may be answered while a cluster recovers; clients retry these.
_RETRYABLE_STATUS = {500, 502, 503, 504}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- images --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSpec:
    """A small random image, reproducible from its seed (bytes are never kept)."""

    repo: str
    tag: str
    seed: int
    layer_sizes: tuple[int, ...]

    def blobs(self) -> list[tuple[str, str, bytes]]:
        """(media type, digest, bytes) of the config and every layer."""
        rng = random.Random(self.seed)
        layers = [rng.randbytes(size) for size in self.layer_sizes]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "seed": self.seed,
                "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in layers]},
            }
        ).encode()
        return [
            (CONFIG_TYPE, sha256(config), config),
            *[(LAYER_TYPE, sha256(b), b) for b in layers],
        ]

    def manifest(self) -> bytes:
        blobs = self.blobs()
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": blobs[0][0],
                    "digest": blobs[0][1],
                    "size": len(blobs[0][2]),
                },
                "layers": [{"mediaType": t, "digest": d, "size": len(b)} for t, d, b in blobs[1:]],
            },
            separators=(",", ":"),
        ).encode()

    @property
    def digest(self) -> str:
        return sha256(self.manifest())

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for _, _, b in self.blobs()) + len(self.manifest())


def random_image(rng: random.Random, repo: str, chunk_size: int) -> ImageSpec:
    """Config + one sub-chunk layer + one layer of 2-3 chunks (a partial last chunk)."""
    small = rng.randint(1, chunk_size // 2)
    multi = rng.randint(chunk_size + 1, 3 * chunk_size - 1)
    return ImageSpec(
        repo=repo,
        tag=f"t{uuid.uuid4().hex[:10]}",
        seed=rng.getrandbits(48),
        layer_sizes=(small, multi),
    )


# -- records -------------------------------------------------------------------------------
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


class Retryable(Exception):
    """A failure a client retries (through another gateway): a 5xx or no answer."""

    def __init__(self, op: str, status: int, detail: str) -> None:
        super().__init__(f"{op}: {status} {detail}")
        self.op, self.status, self.detail = op, status, detail


class Violation(Exception):
    """An answer a correct registry never gives, whatever failed."""


# -- HTTP client ---------------------------------------------------------------------------
class RegistryClient:
    """The few OCI requests the workload needs, raising Retryable / Violation."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _request(
        self, op: str, method: str, url: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            async with self.session.request(method, url, timeout=self.timeout, **kwargs) as resp:
                body = await resp.read()
                status, headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise Retryable(op, 0, f"{type(exc).__name__}: {exc}") from None
        if status in _RETRYABLE_STATUS:
            raise Retryable(op, status, body[:300].decode(errors="replace"))
        return status, headers, body

    async def push_blob(
        self, base: str, repo: str, digest: str, data: bytes, monolithic: bool
    ) -> None:
        if monolithic:
            status, _, body = await self._request(
                "blob_post_put",
                "POST",
                f"{base}/v2/{repo}/blobs/uploads/?digest={digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            _expect(status, 201, "blob monolithic POST", body)
            return
        status, headers, body = await self._request(
            "upload_start", "POST", f"{base}/v2/{repo}/blobs/uploads/"
        )
        _expect(status, 202, "upload POST", body)
        location = _absolute(base, headers["Location"])
        status, headers, body = await self._request(
            "upload_patch",
            "PATCH",
            location,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        _expect(status, 202, "upload PATCH", body)
        location = _absolute(base, headers["Location"])
        sep = "&" if "?" in location else "?"
        status, _, body = await self._request(
            "upload_put", "PUT", f"{location}{sep}digest={digest}"
        )
        _expect(status, 201, "upload PUT", body)

    async def put_manifest(self, base: str, repo: str, ref: str, body: bytes) -> str:
        status, headers, answer = await self._request(
            "manifest_put",
            "PUT",
            f"{base}/v2/{repo}/manifests/{ref}",
            data=body,
            headers={"Content-Type": MANIFEST_TYPE},
        )
        if status == 400 and b"MANIFEST_BLOB_UNKNOWN" in answer:
            raise Violation(f"manifest PUT: acknowledged blob unknown: {answer[:300]!r}")
        _expect(status, 201, "manifest PUT", answer)
        return headers.get("Docker-Content-Digest", "")

    async def get_manifest(self, base: str, repo: str, ref: str) -> tuple[int, str, bytes]:
        status, headers, body = await self._request(
            "manifest_get",
            "GET",
            f"{base}/v2/{repo}/manifests/{ref}",
            headers={"Accept": f"{MANIFEST_TYPE}, */*"},
        )
        return status, headers.get("Docker-Content-Digest", ""), body

    async def get_blob(self, base: str, repo: str, digest: str) -> tuple[int, bytes]:
        status, _, body = await self._request("blob_get", "GET", f"{base}/v2/{repo}/blobs/{digest}")
        return status, body


def _expect(status: int, wanted: int, what: str, body: bytes) -> None:
    if status != wanted:
        raise Violation(f"{what}: {status} (want {wanted}): {body[:300]!r}")


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


async def check_image(
    client: RegistryClient, base: str, spec: ImageSpec, by_tag: bool = True
) -> int:
    """Read one image back through `base`; Violation on any wrong answer. Returns bytes read."""
    manifest = spec.manifest()
    refs = [spec.tag, spec.digest] if by_tag else [spec.digest]
    read = 0
    for ref in refs:
        status, dcd, body = await client.get_manifest(base, spec.repo, ref)
        if status != 200 or body != manifest or dcd != spec.digest:
            raise Violation(
                f"{base} manifest {spec.repo}:{ref}: status {status}, dcd {dcd}, "
                f"{len(body)} bytes, want {spec.digest}"
            )
        read += len(body)
    for _, digest, data in spec.blobs():
        status, body = await client.get_blob(base, spec.repo, digest)
        if status != 200 or sha256(body) != digest or len(body) != len(data):
            raise Violation(
                f"{base} blob {spec.repo}@{digest}: status {status}, "
                f"{len(body)} bytes (want {len(data)})"
            )
        read += len(body)
    return read


# -- the workload --------------------------------------------------------------------------
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


# -- verification --------------------------------------------------------------------------
@dataclass
class VerifyResult:
    images: int
    reads: int
    bytes_read: int
    retried: int


async def _verify(
    gateways: list[str], specs: list[ImageSpec], settle: float, concurrency: int
) -> VerifyResult:
    retried = 0
    total = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        client = RegistryClient(session)

        async def one(base: str, spec: ImageSpec) -> None:
            nonlocal retried, total
            deadline = time.monotonic() + settle
            async with sem:
                while True:
                    try:
                        got = await check_image(client, base, spec)
                        total += got
                        return
                    except Retryable:
                        # Recovery may still be finishing; a wrong answer is never retried.
                        retried += 1
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(base, spec) for base in gateways for spec in specs))
    return VerifyResult(len(specs), len(specs) * len(gateways), total, retried)


def verify_images(
    gateways: list[str], specs: Iterable[ImageSpec], settle: float = 60.0, concurrency: int = 16
) -> VerifyResult:
    """Every image read back byte-identical through every gateway (blocking).

    Retryable answers (503, refused connections) are retried for `settle` seconds, then
    re-raised; a 404 or wrong bytes raise `Violation` at once.
    """
    return asyncio.run(_verify(list(gateways), list(specs), settle, concurrency))


def _metadata_query(address: str, op: str, args: dict[str, Any]) -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.MetadataStub(channel)
        reply = stub.Query(
            registry_pb2.MetadataRequest(op=op, args=json.dumps(args).encode(), linearizable=True),
            timeout=15,
        )
        return json.loads(reply.result)


def cluster_query(cluster: LocalCluster, op: str, args: dict[str, Any], limit: float = 30.0) -> Any:
    """A linearizable query through the running nodes in turn, retried on UNAVAILABLE
    (a node that just restarted, an election) as the gateway would."""
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        nodes = cluster.running_nodes()
        address = cluster.node_grpc(nodes[attempt % len(nodes)])
        attempt += 1
        try:
            return _metadata_query(address, op, args)
        except grpc.RpcError as exc:
            if (
                exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.2)


# Recipes are immutable: chunk lists already looked up, per image.
_CHUNKS_OF: dict[ImageSpec, dict[str, int]] = {}


def image_chunks(cluster: LocalCluster, specs: Iterable[ImageSpec]) -> dict[str, int]:
    """Chunk id (hex) -> length of every chunk the images' blobs and manifests use."""
    chunks: dict[str, int] = {}
    for spec in specs:
        mine = _CHUNKS_OF.get(spec)
        if mine is None:
            mine = {}
            for digest in [d for _, d, _ in spec.blobs()] + [spec.digest]:
                recipe = cluster_query(cluster, "blob_get", {"repo": spec.repo, "digest": digest})
                for chunk_hex, length in recipe["chunks"]:
                    mine[chunk_hex] = int(length)
            _CHUNKS_OF[spec] = mine
        chunks.update(mine)
    return chunks


def replica_counts(cluster: LocalCluster, chunk_ids: Iterable[str]) -> dict[str, int]:
    """How many running nodes hold a healthy copy of each chunk (Chunks.Has)."""
    ids = list(chunk_ids)
    counts = dict.fromkeys(ids, 0)
    for i in cluster.running_nodes():
        with grpc.insecure_channel(cluster.node_grpc(i)) as channel:
            stub = registry_pb2_grpc.ChunksStub(channel)
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                reply = stub.Has(
                    registry_pb2.HasChunksRequest(ids=[bytes.fromhex(c) for c in batch]), timeout=15
                )
                for chunk_hex, present in zip(batch, reply.present, strict=True):
                    counts[chunk_hex] += int(present)
    return counts


def node_chunk_bytes(cluster: LocalCluster) -> dict[int, int]:
    """Healthy chunk bytes held by each running node (Admin.Status)."""
    return {i: int(cluster.node_status(i, timeout=10).chunk_bytes) for i in cluster.running_nodes()}


def flip_stored_bytes(
    cluster: LocalCluster, node: int, data: bytes, offset: int | None = None
) -> int:
    """Flip one byte of `data`'s stored copy in node `node`'s LMDB file, in place on disk.

    The chunk's bytes are found in `data.mdb` by content (they are random, so unique) and
    one byte in the middle is inverted with a plain `pwrite`: the running node's read-only
    map sees it at once, like bit rot under a live process. Returns how many copies of the
    bytes were found and damaged (old freed pages may hold earlier copies).
    """
    path = cluster.node_data_dir(node) / "chunks" / "data.mdb"
    probe_at = offset if offset is not None else len(data) // 2
    probe = data[max(0, probe_at - 32) : probe_at + 32]
    raw = path.read_bytes()
    hits = 0
    start = 0
    with open(path, "r+b") as f:
        while True:
            pos = raw.find(probe, start)
            if pos < 0:
                break
            target = pos + min(32, probe_at)
            f.seek(target)
            f.write(bytes([raw[target] ^ 0xFF]))
            hits += 1
            start = pos + len(probe)
        f.flush()
    return hits


# -- summary -------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    fault: str
    acked_during: int = 0
    client_failures: int = 0
    failures_by_op: dict[str, int] = field(default_factory=dict)
    recovery_seconds: float | None = None
    verified_images: int = 0
    verified_reads: int = 0
    verified_bytes: int = 0
    bytes_repaired: int | None = None
    phase_seconds: float = 0.0
    notes: str = ""


class PhaseClock:
    """Measures one fault phase against a running workload."""

    def __init__(self, workload: Workload, name: str, fault: str) -> None:
        workload.resume()
        self.workload = workload
        self.phase = Phase(name, fault)
        self.start = time.monotonic()
        self.acked_at_start = workload.acked_count()
        self.fault_at = self.start

    def fault_now(self) -> float:
        self.fault_at = time.monotonic()
        return self.fault_at

    def finish(
        self,
        verified: VerifyResult | None = None,
        recovery: float | None = None,
    ) -> Phase:
        end = time.monotonic()
        failures = self.workload.failures_between(self.start, end)
        self.phase.acked_during = self.workload.acked_count() - self.acked_at_start
        self.phase.phase_seconds = round(end - self.start, 2)
        self.phase.client_failures = len(failures)
        self.phase.failures_by_op = dict(Counter(f"{f.op}:{f.status}" for f in failures))
        if recovery is None:
            first = self.workload.first_ack_sent_after(self.fault_at)
            recovery = None if first is None else first - self.fault_at
        self.phase.recovery_seconds = None if recovery is None else round(recovery, 3)
        if verified is not None:
            self.phase.verified_images = verified.images
            self.phase.verified_reads = verified.reads
            self.phase.verified_bytes = verified.bytes_read
        return self.phase


@dataclass
class Summary:
    """Results of one suite run, written as `<stem>.json` + `<stem>.md`."""

    title: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, section: str, data: dict[str, Any]) -> None:
        self.sections[section] = data

    def write(self, path: Path) -> Path:
        """Merge this run's sections into `path` (.json and .md beside it); other
        sections already in the file (from other tests of the same run) are kept."""
        json_path, md_path = path.with_suffix(".json"), path.with_suffix(".md")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        merged: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            merged = json.loads(json_path.read_text()).get("sections", {})
        merged.update(self.sections)
        json_path.write_text(
            json.dumps({"title": self.title, "sections": merged}, indent=2, sort_keys=True) + "\n"
        )
        md_path.write_text(render_markdown(self.title, merged))
        return md_path


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in sorted(value.items())) or "none"
    return str(value)


def render_markdown(title: str, sections: dict[str, Any]) -> str:
    lines = [
        f"# {title}",
        "",
        "Generated by the chaos suite (`tests/cluster/test_chaos*.py`, "
        "`test_raft_durability*.py`, `test_quorum*.py`); see tests/cluster/chaos.py.",
        "",
        "Columns: `acked_during` images whose manifest PUT got 201 during the phase; "
        "`client_failures` requests the clients saw fail (5xx, or `:0` = no answer: "
        "refused/reset) and retried through a gateway; `recovery_seconds` from the fault "
        "until the first 201 for a manifest PUT sent after it (for a leader kill, from "
        "the failover probe); `verified_*` acknowledged images read back byte-identical "
        "through every running gateway at the end of the phase; `bytes_repaired` what "
        "the repair roles copied until every chunk had R copies again.",
        "",
    ]
    for name in sorted(sections):
        data = sections[name]
        lines += [f"## {name}", ""]
        if data.get("setup"):
            lines += [str(data["setup"]), ""]
        phases = data.get("phases")
        if phases:
            cols = [
                "name",
                "fault",
                "acked_during",
                "client_failures",
                "failures_by_op",
                "recovery_seconds",
                "verified_images",
                "verified_reads",
                "bytes_repaired",
                "phase_seconds",
                "notes",
            ]
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            for p in phases:
                lines.append("| " + " | ".join(_cell(p.get(c)) for c in cols) + " |")
            lines.append("")
        for key in sorted(k for k in data if k not in ("phases", "setup")):
            lines.append(f"- **{key}**: {_cell(data[key])}")
        lines.append("")
    return "\n".join(lines)


# -- background roles (node/repair.py, node/scrub.py) -----------------------------------------
def trigger_role(
    cluster: LocalCluster, i: int, role: str, wait: bool = True, timeout: float = 120.0
) -> dict[str, Any] | None:
    """Run one pass of `role` on node i now (Admin.Trigger) and return its progress
    counters; None when the node does not serve that role."""
    with grpc.insecure_channel(cluster.node_grpc(i)) as channel:
        stub = registry_pb2_grpc.AdminStub(channel)
        try:
            reply = stub.Trigger(registry_pb2.TriggerRequest(role=role, wait=wait), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
                return None
            raise
    return dict(json.loads(reply.progress or b"{}"))


def wait_answering(cluster: LocalCluster, i: int, timeout: float = 30.0) -> None:
    cluster.wait_answering(i, timeout)


def repair_pass(cluster: LocalCluster) -> int | None:
    """One triggered repair pass on every running node; the bytes they copied, or None
    when repair is not served."""
    total = 0
    for i in cluster.running_nodes():
        wait_answering(cluster, i)
        progress = trigger_role(cluster, i, "repair")
        if progress is None:
            return None
        total += int(progress.get("repaired_bytes", 0))
    return total


def repaired_bytes_total(cluster: LocalCluster) -> int | None:
    """Bytes the running nodes' repair roles copied since each node started
    (`total_repaired_bytes` in Admin.Status); None when no node reports a repair role."""
    total, found = 0, False
    for i in cluster.running_nodes():
        wait_answering(cluster, i)
        extra = json.loads(cluster.node_status(i, timeout=10).extra or b"{}")
        repair = extra.get("repair")
        if isinstance(repair, dict):
            found = True
            total += int(repair.get("total_repaired_bytes", 0))
    return total if found else None


def wait_replicated(
    cluster: LocalCluster, chunks: dict[str, int], copies: int, timeout: float = 120.0
) -> tuple[int | None, dict[int, int]]:
    """Trigger repair passes until every chunk has `copies` healthy copies on running
    nodes. Returns (bytes repaired, histogram copies -> chunks); bytes is None and nothing
    is waited for when the nodes serve no repair role."""
    deadline = time.monotonic() + timeout
    repaired = 0
    while True:
        got = repair_pass(cluster)
        counts = replica_counts(cluster, chunks)
        histogram = dict(Counter(counts.values()))
        if got is None:
            return None, histogram
        repaired += got
        if all(n >= copies for n in counts.values()):
            return repaired, histogram
        if time.monotonic() > deadline:
            raise AssertionError(
                f"chunks still under-replicated after {timeout}s: copies->chunks {histogram}"
            )
        time.sleep(0.5)


# -- where the summary goes ------------------------------------------------------------------
SUMMARY_ENV = "CARGOHOLD_CHAOS_SUMMARY"
RUNS_ENV = "CARGOHOLD_CHAOS_RUNS"


def summary_path(default_dir: Path) -> Path:
    """`$CARGOHOLD_CHAOS_SUMMARY` (e.g. docs/chaos-summary.md; a .json is written beside
    it) when set, else a file in the test's own temporary directory."""
    chosen = os.environ.get(SUMMARY_ENV)
    return Path(chosen) if chosen else default_dir / "chaos-summary.md"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def node_chunk(cluster: LocalCluster, i: int, chunk_id: bytes) -> bytes | None:
    """Node i's verified copy of a chunk (Chunks.Get), or None when it serves none."""
    with grpc.insecure_channel(cluster.node_grpc(i)) as channel:
        stub = registry_pb2_grpc.ChunksStub(channel)
        try:
            return bytes(stub.Get(registry_pb2.GetChunkRequest(id=chunk_id), timeout=15).data)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS):
                return None
            raise


def quarantined(cluster: LocalCluster, i: int) -> int:
    """Chunks node i moved to quarantine (Admin.Status extra)."""
    extra = json.loads(cluster.node_status(i, timeout=10).extra or b"{}")
    return int(extra.get("chunks_quarantined", 0))
