"""Metadata at scale (issue 20): a corpus of tiny distinct manifests pushed through the HTTP
API into a 3-node R=3 dev cluster and into CNCF Distribution, side by side.

    .venv/bin/python -m bench.metadata_scale              # quick: 1k,10k images
    .venv/bin/python -m bench.metadata_scale 10k,100k --concurrency 32
    .venv/bin/python -m bench.metadata_scale 1m --full    # 1,000 repositories, as issue 20
    .venv/bin/python -m bench.metadata_scale 10k,1m --full --offline    # no cluster
    .venv/bin/python -m bench.metadata_scale 10k,1m --full --preloaded  # push rate at 1 M

`--offline` builds the state in this process and measures snapshots, restarts and
catch-up; `--preloaded` starts a real cluster from such a state per size and measures the
push rate on it (bench/metadata_preloaded.py).

The corpus: images spread over repositories in groups of ten (a group lives in one
repository); each image is a distinct config blob (~150 B) and one layer shared by its
repository, and its manifest is tagged `v<i>`; each group also gets an OCI index of its ten
manifests, tagged `g<group>`. Full mode spreads over 1,000 repositories, quick mode over
`images / 100` (at least 10). Pushes use monolithic blob uploads (`POST ?digest=`) and
manifest PUTs by tag over `--concurrency` keep-alive connections (a small raw HTTP client,
so the client is not what limits the rate).

The sizes are checkpoints of one growing corpus: each system receives the images up to the
next size, then is measured:
- push rate (images/s over the step; manifests count the indexes too);
- anonymous memory (RssAnon, /proc) per node and per manifest above the empty baseline;
- Cargohold only: a snapshot forced on every node at once (`snapshot` admin role): its
  size, seconds and the Raft thread's pause, and the p99 of tag PUTs whose span overlaps a
  snapshot against the p99 of those that do not (same run, same load);
- restart to serving: a node (the leader, SIGKILL, start, until a linearizable read of the
  newest tag succeeds on it; the snapshot load seconds it reports) and the whole cluster
  (every node SIGKILLed and started, until the gateway serves the newest tag); Distribution
  restarted the same way;
- catch-up: a follower stopped, one more group pushed, a snapshot forced (the leader's log
  no longer reaches back to the follower), the follower started: seconds until it serves
  the newest tag, with manifest GETs through the gateway meanwhile (errors counted);
- reads: `tags/list?n=1000`, `_catalog?n=1000` and manifest GET by tag, p50/p99, one
  connection, sequential.

Results: bench/results/<date>-metadata-scale[-quick].{json,md}. The machine may be shared:
the report records the load average before each step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from bench.systems import Cargohold, Distribution
from protos import registry_pb2, registry_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = f"{MANIFEST_TYPE}, {INDEX_TYPE}"
GROUP = 10


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1000, "m": 1000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * mult)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def rss_anon(pid: int) -> int:
    """RssAnon of a process in bytes (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the corpus ------------------------------------------------------------------------------
@dataclass
class Corpus:
    repos: int

    def repo(self, group: int) -> str:
        return f"scale/r{group % self.repos:04d}"

    @staticmethod
    def layer(repo: str) -> bytes:
        return f"layer of {repo}\n".encode()

    def image(self, i: int) -> tuple[str, bytes, bytes]:
        """(repo, config bytes, manifest bytes) of image i."""
        repo = self.repo(i // GROUP)
        layer = self.layer(repo)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"image": str(i)}},
                "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
            },
            separators=(",", ":"),
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": sha(config), "size": len(config)},
                "layers": [{"mediaType": LAYER_TYPE, "digest": sha(layer), "size": len(layer)}],
            },
            separators=(",", ":"),
        ).encode()
        return repo, config, manifest

    def index(self, group: int, manifests: list[bytes]) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": INDEX_TYPE,
                "manifests": [
                    {
                        "mediaType": MANIFEST_TYPE,
                        "digest": sha(m),
                        "size": len(m),
                        "platform": {"architecture": f"arch{k}", "os": "linux"},
                    }
                    for k, m in enumerate(manifests)
                ],
            },
            separators=(",", ":"),
        ).encode()


# -- a small keep-alive HTTP/1.1 client ----------------------------------------------------
class HttpError(RuntimeError):
    pass


class Http:
    """One persistent connection; `request` returns (status, body)."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.location = ""  # the last response's Location header

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        try:
            return await self._exchange(method, path, body, headers or {})
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError):
            self.close()
            raise

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        for key, value in headers.items():
            head += f"{key}: {value}\r\n"
        if body or method in ("PUT", "POST"):
            head += f"Content-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        chunked = False
        self.location = ""
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"location":
                self.location = value.strip().decode()
            elif name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if method == "HEAD":
            return status, b""
        if chunked:
            data = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    return status, bytes(data)
        return status, await self.reader.readexactly(length)


# -- pushing ----------------------------------------------------------------------------------
@dataclass
class PushStats:
    images: int = 0
    manifests: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    # (start, end) monotonic of each manifest PUT
    puts: list[tuple[float, float]] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(text[:300])

    def summary(self, elapsed: float) -> dict[str, Any]:
        """What a push of `elapsed` seconds did: counts, rate, PUT p50/p99, errors."""
        durations = [e - s for s, e in self.puts]
        return {
            "images": self.images,
            "manifests": self.manifests,
            "seconds": round(elapsed, 2),
            "images_per_s": round(self.images / elapsed, 1) if elapsed else None,
            "put_p50_ms": ms(pct(durations, 0.5)),
            "put_p99_ms": ms(pct(durations, 0.99)),
            "errors": self.errors,
            "first_errors": self.first_errors,
        }


async def push_blob(client: Http, repo: str, data: bytes) -> tuple[int, bytes]:
    """POST an upload session, then PUT the whole blob with its digest (docker's
    monolithic form; Distribution 2.x ignores `POST ?digest=`)."""
    status, reply = await client.request("POST", f"/v2/{repo}/blobs/uploads/")
    if status != 202:
        return status, reply
    location = urlsplit(client.location)
    path = location.path + ("?" + location.query if location.query else "")
    sep = "&" if location.query else "?"
    return await client.request(
        "PUT",
        f"{path}{sep}digest={sha(data)}",
        data,
        {"Content-Type": "application/octet-stream"},
    )


async def push_layers(urls: list[str], corpus: Corpus, repos: int) -> None:
    client = Http(urls[0])
    try:
        for k in range(repos):
            repo = corpus.repo(k)
            layer = corpus.layer(repo)
            status, body = await push_blob(client, repo, layer)
            if status != 201:
                raise HttpError(f"layer push {repo}: {status} {body[:200]!r}")
    finally:
        client.close()


async def push_groups(
    urls: list[str], corpus: Corpus, first: int, last: int, concurrency: int, stats: PushStats
) -> None:
    """Push groups [first, last): 10 images and their index each."""
    next_group = first

    async def worker(url: str) -> None:
        nonlocal next_group
        client = Http(url)
        try:
            while next_group < last and stats.errors < 50:
                group = next_group
                next_group += 1
                await push_group(client, corpus, group, stats)
        finally:
            client.close()

    await asyncio.gather(*(worker(urls[n % len(urls)]) for n in range(concurrency)))


async def _put(
    client: Http, path: str, body: bytes, headers: dict[str, str], stats: PushStats, what: str
) -> bool:
    for attempt in range(3):
        start = time.monotonic()
        try:
            status, reply = await client.request("PUT", path, body, headers)
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
            status, reply = 0, repr(exc).encode()
        end = time.monotonic()
        if status == 201:
            stats.puts.append((start, end))
            return True
        if attempt == 2:
            stats.error(f"{what}: {status} {reply[:200]!r}")
        await asyncio.sleep(0.2)
    return False


async def push_group(client: Http, corpus: Corpus, group: int, stats: PushStats) -> None:
    manifests = []
    for i in range(group * GROUP, (group + 1) * GROUP):
        repo, config, manifest = corpus.image(i)
        for attempt in range(3):
            try:
                status, reply = await push_blob(client, repo, config)
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                status, reply = 0, repr(exc).encode()
            if status == 201:
                break
            if attempt == 2:
                stats.error(f"config {i}: {status} {reply[:200]!r}")
                return
            await asyncio.sleep(0.2)
        ok = await _put(
            client,
            f"/v2/{repo}/manifests/v{i}",
            manifest,
            {"Content-Type": MANIFEST_TYPE},
            stats,
            f"manifest {i}",
        )
        if not ok:
            return
        stats.images += 1
        stats.manifests += 1
        manifests.append(manifest)
    index = corpus.index(group, manifests)
    if await _put(
        client,
        f"/v2/{corpus.repo(group)}/manifests/g{group}",
        index,
        {"Content-Type": INDEX_TYPE},
        stats,
        f"index {group}",
    ):
        stats.manifests += 1


# -- reads ------------------------------------------------------------------------------------
async def read_latencies(
    url: str, corpus: Corpus, images: int, samples: int, first: int = 0
) -> dict[str, Any]:
    """p50/p99 of a `tags/list` page, a `_catalog` page and a manifest GET by tag (of an
    image in [first, images)), one connection, sequential."""
    client = Http(url)
    rng = random.Random(7)
    out: dict[str, Any] = {}

    async def timed(path: str, headers: dict[str, str] | None = None) -> float | None:
        start = time.perf_counter()
        try:
            status, _ = await client.request("GET", path, headers=headers)
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError):
            return None
        return time.perf_counter() - start if status == 200 else None

    try:
        used = min(corpus.repos, max(1, images // GROUP))

        def manifest() -> tuple[str, dict[str, str] | None]:
            i = rng.randrange(first, images)
            return f"/v2/{corpus.image(i)[0]}/manifests/v{i}", {"Accept": ACCEPT}

        cases: dict[str, Any] = {
            "tags_list_page": lambda: (
                f"/v2/{corpus.repo(rng.randrange(used))}/tags/list?n=1000",
                None,
            ),
            "catalog_page": lambda: ("/v2/_catalog?n=1000", None),
            "manifest_get": manifest,
        }
        for name, make in cases.items():
            times: list[float] = []
            errors = 0
            for _ in range(samples if name != "catalog_page" else max(10, samples // 4)):
                path, headers = make()
                got = await timed(path, headers)
                if got is None:
                    errors += 1
                else:
                    times.append(got)
            out[name] = {
                "p50_ms": ms(pct(times, 0.5)),
                "p99_ms": ms(pct(times, 0.99)),
                "n": len(times),
                "errors": errors,
            }
    finally:
        client.close()
    return out


async def serves(url: str, repo: str, tag: str) -> bool:
    client = Http(url)
    try:
        status, _ = await client.request(
            "GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}
        )
        return status == 200
    except (OSError, asyncio.IncompleteReadError, HttpError, ValueError):
        return False
    finally:
        client.close()


def wait_serving_http(url: str, repo: str, tag: str, limit: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if asyncio.run(serves(url, repo, tag)):
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not serve {repo}:{tag} within {limit}s")


# -- Cargohold specifics ----------------------------------------------------------------------
def node_serves(cluster: Any, i: int, repo: str, tag: str) -> bool:
    """A linearizable read of `tag` answered by node i (loaded, caught up, in the quorum)."""
    try:
        with cluster.channel(i, "gateway") as channel:
            reply = registry_pb2_grpc.MetadataStub(channel).Query(
                registry_pb2.MetadataRequest(
                    op="tag_get",
                    args=json.dumps({"repo": repo, "tag": tag}).encode(),
                    linearizable=True,
                ),
                timeout=2.0,
            )
        return bool(json.loads(reply.result).get("digest"))
    except (grpc.RpcError, ValueError):
        return False


def wait_node_serving(cluster: Any, i: int, repo: str, tag: str, limit: float = 300.0) -> float:
    start = cluster.spawned_at[cluster.node_id(i)]
    while time.monotonic() - start < limit:
        if node_serves(cluster, i, repo, tag):
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(f"node {i} did not serve {repo}:{tag} within {limit}s")


def snapshot_role(cluster: Any, i: int, trigger: bool, wait: bool = False) -> dict[str, Any]:
    with cluster.channel(i) as channel:
        stub = registry_pb2_grpc.AdminStub(channel)
        if trigger:
            reply = stub.Trigger(
                registry_pb2.TriggerRequest(role="snapshot", wait=wait), timeout=3600
            )
            return dict(json.loads(reply.progress))
        status = stub.Status(registry_pb2.StatusRequest(), timeout=10)
        return dict(json.loads(status.extra).get("snapshot", {}))


def leader(cluster: Any, limit: float = 60.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = cluster.leader_index()
        if found is not None:
            return int(found)
        time.sleep(0.1)
    raise TimeoutError("no leader")


async def put_load(
    urls: list[str],
    corpus: Corpus,
    images: int,
    seconds: float,
    concurrency: int,
    first: int = 0,
) -> list[tuple[float, float]]:
    """Tag PUTs (an existing manifest, image `first` + k of `images`, under a new tag) for
    `seconds`: (start, end) each."""
    spans: list[tuple[float, float]] = []
    stop = time.monotonic() + seconds
    counter = 0

    async def worker(url: str) -> None:
        nonlocal counter
        client = Http(url)
        try:
            while time.monotonic() < stop:
                i = first + counter % images
                counter += 1
                repo, _, manifest = corpus.image(i)
                start = time.monotonic()
                try:
                    status, _ = await client.request(
                        "PUT",
                        f"/v2/{repo}/manifests/s{counter}",
                        manifest,
                        {"Content-Type": MANIFEST_TYPE},
                    )
                except (OSError, asyncio.IncompleteReadError, HttpError, ValueError):
                    continue
                if status == 201:
                    spans.append((start, time.monotonic()))
        finally:
            client.close()

    await asyncio.gather(*(worker(urls[n % len(urls)]) for n in range(concurrency)))
    return spans


def snapshot_under_load(
    cluster: Any, urls: list[str], corpus: Corpus, images: int, concurrency: int, first: int = 0
) -> dict[str, Any]:
    """Force a snapshot on every node at once while tag PUTs (of images `first` + k of
    `images`) run; compare the p99 of PUTs overlapping a snapshot with the p99 of the
    others."""
    wall0, mono0 = time.time(), time.monotonic()
    before = [snapshot_role(cluster, i, trigger=False).get("taken", 0) for i in range(3)]

    async def run() -> list[tuple[float, float]]:
        load = asyncio.create_task(put_load(urls, corpus, images, 2.0, concurrency, first))
        await asyncio.sleep(0.7)
        load2 = asyncio.create_task(
            asyncio.to_thread(lambda: [snapshot_role(cluster, i, trigger=True) for i in range(3)])
        )
        spans = await load
        await load2
        # Keep the load on until every node's snapshot is written.
        while True:
            states = await asyncio.to_thread(
                lambda: [snapshot_role(cluster, i, trigger=False) for i in range(3)]
            )
            if all(s.get("taken", 0) > before[i] for i, s in enumerate(states)):
                break
            spans += await put_load(urls, corpus, images, 0.5, concurrency, first)
        spans += await put_load(urls, corpus, images, 1.0, concurrency, first)
        return spans

    spans = asyncio.run(run())
    windows = []
    per_node = []
    for i in range(3):
        recent = snapshot_role(cluster, i, trigger=False).get("recent", [])
        last = recent[-1] if recent else {}
        per_node.append(last)
        if last:
            start = mono0 + (last["started_at"] - wall0)
            windows.append((start, start + last.get("seconds", 0.0)))
    inside = [e - s for s, e in spans if any(s < we and e > ws for ws, we in windows)]
    outside = [e - s for s, e in spans if not any(s < we and e > ws for ws, we in windows)]
    p_in, p_out = pct(inside, 0.99), pct(outside, 0.99)
    return {
        "nodes": per_node,
        "bytes": max((n.get("bytes", 0) for n in per_node), default=0),
        "seconds": max((n.get("seconds", 0.0) for n in per_node), default=0.0),
        "pause_ms": ms(max((n.get("pause_seconds", 0.0) for n in per_node), default=0.0)),
        "put_p99_during_ms": ms(p_in),
        "put_p99_outside_ms": ms(p_out),
        "puts_during": len(inside),
        "puts_outside": len(outside),
        "ratio": round(p_in / p_out, 2) if p_in and p_out else None,
    }


def restart_node(cluster: Any, repo: str, tag: str) -> dict[str, Any]:
    victim = leader(cluster)
    cluster.kill_node(victim, signal.SIGKILL)
    cluster.start_node(victim)
    seconds = wait_node_serving(cluster, victim, repo, tag)
    stats = snapshot_role(cluster, victim, trigger=False)
    return {"node": victim, "seconds": round(seconds, 2), "load_seconds": stats.get("load_seconds")}


def restart_cluster(cluster: Any, url: str, repo: str, tag: str) -> dict[str, Any]:
    for i in range(3):
        cluster.kill_node(i, signal.SIGKILL)
    for i in range(3):
        cluster.start_node(i)
    start = min(cluster.spawned_at[cluster.node_id(i)] for i in range(3))
    wait_serving_http(url, repo, tag)
    seconds = time.monotonic() - start
    loads = [snapshot_role(cluster, i, trigger=False).get("load_seconds") for i in range(3)]
    return {"seconds": round(seconds, 2), "load_seconds": loads}


def catch_up(
    cluster: Any, urls: list[str], corpus: Corpus, group: int, stats: PushStats, first: int = 0
) -> dict[str, Any]:
    """A follower behind by more than a snapshot: stopped, one group pushed, a snapshot
    forced on the others (their logs then start after the follower's last entry), started:
    seconds until it serves the newest tag; manifest GETs (of images from `first` on)
    through the gateway meanwhile."""
    lead = leader(cluster)
    follower = (lead + 1) % 3
    cluster.kill_node(follower, signal.SIGKILL)
    asyncio.run(push_groups(urls, corpus, group, group + 1, 1, stats))
    for i in range(3):
        if i != follower:
            snapshot_role(cluster, i, trigger=True, wait=True)
    newest = (group + 1) * GROUP - 1
    repo = corpus.image(newest)[0]
    errors = served = 0

    async def reads(stop: asyncio.Event) -> None:
        nonlocal errors, served
        while not stop.is_set():
            i = random.randrange(first, newest + 1)
            if await serves(urls[0], corpus.image(i)[0], f"v{i}"):
                served += 1
            else:
                errors += 1
            await asyncio.sleep(0.02)

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(reads(stop))
        cluster.start_node(follower)
        seconds = await asyncio.to_thread(wait_node_serving, cluster, follower, repo, f"v{newest}")
        stop.set()
        await task
        return seconds

    seconds = asyncio.run(run())
    received = cluster.node_data_dir(follower) / "raft" / "state.dump"
    return {
        "follower": cluster.node_id(follower),
        "leader": cluster.node_id(lead),
        "seconds": round(seconds, 2),
        "by_snapshot": received.exists(),
        "snapshot_bytes": received.stat().st_size if received.exists() else 0,
        "load_seconds": snapshot_role(cluster, follower, trigger=False).get("load_seconds"),
        "reads_served_meanwhile": served,
        "read_errors_meanwhile": errors,
    }


def restart_distribution(sut: Distribution, repo: str, tag: str) -> dict[str, Any]:
    assert sut.proc is not None
    sut.proc.send_signal(signal.SIGKILL)
    sut.proc.wait()
    start = time.monotonic()
    asyncio.run(sut.start())
    wait_serving_http(sut.urls[0], repo, tag)
    return {"seconds": round(time.monotonic() - start, 2)}


# -- offline: the same corpus in one process, through the real snapshot code -----------------
def _recipe(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "chunks": [[hashlib.sha256(data).hexdigest(), len(data)]]}


def apply_group(state: Any, corpus: Corpus, group: int) -> None:
    """The commands a push of one group commits, applied directly to a MetadataState."""
    repo = corpus.repo(group)
    layer = sha(corpus.layer(repo))
    manifests = []
    for i in range(group * GROUP, (group + 1) * GROUP):
        _, config, manifest = corpus.image(i)
        state.apply(
            "blob_commit",
            {"repo": repo, "digest": sha(config), "recipe": _recipe(config), "now": 1.0},
        )
        state.apply(
            "manifest_put",
            {
                "repo": repo,
                "digest": sha(manifest),
                "media_type": MANIFEST_TYPE,
                "recipe": _recipe(manifest),
                "blobs": [sha(config), layer],
                "tag": f"v{i}",
                "now": 1.0,
            },
        )
        manifests.append(manifest)
    index = corpus.index(group, manifests)
    state.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": sha(index),
            "media_type": INDEX_TYPE,
            "recipe": _recipe(index),
            "manifests": [sha(m) for m in manifests],
            "tag": f"g{group}",
            "now": 1.0,
        },
    )


def _member_config(data_dir: Path, raft: str = "", peers: list[str] | None = None) -> Any:
    """A one-member group's config (or one joining `peers`); `raft` is its address (a
    restart keeps it: the snapshot's member set names it)."""
    from cargohold.config import Config
    from cargohold_cli.devcluster import free_port

    cfg = Config()
    cfg.node.data_dir = str(data_dir)
    cfg.node.raft_listen = cfg.node.raft_advertise = raft or f"127.0.0.1:{free_port()}"
    cfg.node.peers = peers or []
    cfg.cluster.secret = "bench"
    return cfg


async def _snapshot_once(member: Any) -> dict[str, Any]:
    await member.wait_bound()
    for _ in range(3):
        await member.barrier()
    taken = member.snapshots_taken
    member.forceLogCompaction()
    while member.snapshots_taken == taken:  # noqa: ASYNC110 - the Raft thread's counter
        await asyncio.sleep(0.02)
    stats = dict(member.snapshot_stats()["recent"][-1])
    await member.close()
    return stats


def load_main(data_dir: str, raft: str, peers: str = "", add: str = "") -> None:
    """Child process: a node over `data_dir` (a one-member group, or one joining `peers`):
    seconds until it serves a linearizable read (snapshot load or install, tail replay,
    election), and the load alone. With `add`, once serving it adds that Raft member,
    prints its figures and serves until its stdin closes (the leader of a catch-up)."""
    start = time.monotonic()
    cpu = time.process_time()
    from cargohold.memtune import release_memory
    from node.metadata.raft import RaftMember

    async def serve() -> dict[str, Any]:
        from cargohold.errors import Unavailable

        cfg = _member_config(Path(data_dir), raft, peers.split(",") if peers else None)
        member = RaftMember(cfg)
        try:
            await member.wait_bound()
            while True:  # a large load outlasts raft_command_timeout: retry, as clients do
                try:
                    await member.barrier()
                    break
                except Unavailable:
                    await asyncio.sleep(0.05)
            result = {
                "serving_seconds": time.monotonic() - start,
                "load_seconds": member.snapshot_stats()["load_seconds"],
                # CPU of this process: what the load costs apart from the machine's other work
                "cpu_seconds": time.process_time() - cpu,
                "rss_anon": rss_anon(os.getpid()),
                "loadavg": os.getloadavg(),
            }
            if not add:
                # All included: the search index every node builds from its state once it
                # serves (a bare member builds it whole at its first search).
                await asyncio.to_thread(member.local_query, "search", {"spec": {"n": 1}})
                # A node's builder thread gives the build's free heap back to the kernel
                # when it is done (node/metadata/search_build.py); this bare member built
                # inline, so do what the builder does before reading RssAnon.
                release_memory()
                result["rss_anon_with_search"] = rss_anon(os.getpid())
            if add:
                member.addNodeToCluster(add)
                await asyncio.sleep(0.5)
                print(json.dumps(result), flush=True)
                await asyncio.to_thread(sys.stdin.read)
            return result
        finally:
            await member.close()

    print(json.dumps(asyncio.run(serve())), flush=True)


def _child(args: list[str], **kw: Any) -> Any:
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "bench.metadata_scale", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        **kw,
    )


def _last_json(proc: Any, what: str) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def catch_up_offline(data_dir: Path, raft: str, work: Path) -> dict[str, Any]:
    """A snapshot's worth behind at any size: the node over `data_dir` serves as leader,
    adds an empty member, which must install the whole snapshot from it (pysyncobj's
    transfer, then the load); seconds from that member's start until a linearizable read
    succeeds on it. Two members only: the leader cannot commit meanwhile (a 3-node
    cluster's other follower keeps the majority: the cluster runs measure that)."""
    import subprocess

    from cargohold_cli.devcluster import free_port

    joiner = f"127.0.0.1:{free_port()}"
    lead = _child(
        ["--load-child", str(data_dir), "--load-raft", raft, "--load-add", joiner],
        stdin=subprocess.PIPE,
    )
    assert lead.stdout is not None and lead.stdin is not None
    line = lead.stdout.readline()
    if not line:
        lead.kill()
        raise RuntimeError(f"the leader failed:\n{lead.communicate()[1][-3000:]}")
    try:
        follower_dir = work / "catch-up-follower"
        joined = _last_json(
            _child(
                ["--load-child", str(follower_dir), "--load-raft", joiner, "--load-peers", raft]
            ),
            "the joining member",
        )
    finally:
        lead.stdin.close()
        lead.wait(timeout=120)
    import shutil

    shutil.rmtree(follower_dir, ignore_errors=True)
    return {
        "catch_up_seconds": round(joined["serving_seconds"], 2),
        "catch_up_load_seconds": joined["load_seconds"],
        "catch_up_cpu_seconds": round(joined["cpu_seconds"], 2),
        "catch_up_loadavg": joined["loadavg"],
    }


def offline(
    sizes: list[int], repos: int, work: Path, catch_up: bool = True
) -> list[dict[str, Any]]:
    """Per size: build the state in this process, snapshot it through RaftMember (forked
    child), then time a fresh process loading it until it serves."""

    from node.metadata.raft import RaftMember
    from node.metadata.state import MetadataState

    corpus = Corpus(repos)
    state = MetadataState()
    for k in range(min(repos, max(1, sizes[-1] // GROUP))):
        layer = corpus.layer(corpus.repo(k))
        state.apply(
            "blob_commit",
            {"repo": corpus.repo(k), "digest": sha(layer), "recipe": _recipe(layer), "now": 1.0},
        )
    base = rss_anon(os.getpid())
    done = 0
    out = []
    for size in sizes:
        groups = max(1, size // GROUP)
        t0 = time.monotonic()
        for group in range(done, groups):
            apply_group(state, corpus, group)
        done = groups
        build = time.monotonic() - t0
        data_dir = work / f"offline-{size}"
        cfg = _member_config(data_dir)
        member = RaftMember(cfg, state=state)
        snap = asyncio.run(_snapshot_once(member))
        del member
        loaded = _last_json(
            _child(["--load-child", str(data_dir), "--load-raft", cfg.node.raft_listen]),
            "the reloading process",
        )
        manifests = groups * (GROUP + 1)
        row = {
            "images": groups * GROUP,
            "manifests": manifests,
            "build_seconds": round(build, 1),
            "rss_anon_per_manifest": round((rss_anon(os.getpid()) - base) / manifests, 1),
            "snapshot_bytes": snap["bytes"],
            "snapshot_seconds": round(snap["seconds"], 2),
            "pause_ms": ms(snap.get("pause_seconds")),
            "load_seconds": loaded["load_seconds"],  # None: no snapshot was loaded
            "load_mb_per_s": round(snap["bytes"] / 1e6 / loaded["load_seconds"], 1)
            if loaded["load_seconds"]
            else None,
            "serving_seconds": round(loaded["serving_seconds"], 2),
            "serving_cpu_seconds": round(loaded["cpu_seconds"], 2),
            "load_loadavg": loaded["loadavg"],
            "loaded_rss_anon_per_manifest": round(loaded["rss_anon"] / manifests, 1),
            "loaded_with_search_rss_anon_per_manifest": round(
                loaded["rss_anon_with_search"] / manifests, 1
            ),
            "loadavg": os.getloadavg(),
        }
        if catch_up:
            row.update(catch_up_offline(data_dir, cfg.node.raft_listen, work))
        print(json.dumps({"offline": row}), flush=True)
        out.append(row)
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    return out


# -- driver -----------------------------------------------------------------------------------
def memory(sut: Any) -> dict[str, int]:
    if isinstance(sut, Cargohold):
        assert sut.cluster is not None
        return {
            f"node{i}": rss_anon(p.pid) if p is not None else 0
            for i, p in enumerate(sut.cluster.node_procs)
        }
    assert sut.proc is not None
    return {"distribution": rss_anon(sut.proc.pid)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    top = sizes[-1]
    repos = args.repos or (1000 if args.full else max(10, min(1000, top // 100)))
    corpus = Corpus(repos)
    work = Path(tempfile.mkdtemp(prefix="metadata-scale-", dir=args.workdir))
    systems: list[Any] = []
    if "distribution" in args.systems:
        systems.append(Distribution(work / "distribution"))
    if "cargohold" in args.systems:
        systems.append(Cargohold(work / "cargohold", nodes=3, replicas_=3, write_quorum=2))
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mode": "full" if args.full else "quick",
        "repos": repos,
        "concurrency": args.concurrency,
        "sizes": sizes,
        "steps": {s.name: [] for s in systems},
    }
    if args.preloaded:
        from bench.metadata_preloaded import preloaded

        try:
            report["preloaded"] = preloaded(
                sizes,
                repos,
                work,
                args.push,
                args.concurrency,
                args.rounds,
                args.settle,
                args.preloaded_nodes,
                args.quiet_limit,
                args.scale_steps,
            )
        finally:
            if not args.keep:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
        report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return report
    if args.offline:
        try:
            report["offline"] = offline(sizes, repos, work, not args.no_catch_up)
        finally:
            if not args.keep:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
        report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return report
    try:
        for sut in systems:
            (work / sut.name).mkdir(parents=True, exist_ok=True)
            asyncio.run(sut.start())
        for sut in systems:
            asyncio.run(push_layers(sut.urls, corpus, min(repos, max(1, top // GROUP))))
        baseline = {s.name: memory(s) for s in systems}
        report["baseline_rss_anon"] = baseline
        done_groups = 0
        for size in sizes:
            groups = max(1, size // GROUP)
            for sut in systems:
                step: dict[str, Any] = {"images": groups * GROUP, "loadavg": os.getloadavg()}
                stats = PushStats()
                start = time.monotonic()
                asyncio.run(
                    push_groups(sut.urls, corpus, done_groups, groups, args.concurrency, stats)
                )
                step["push"] = stats.summary(time.monotonic() - start)
                mem = memory(sut)
                total_manifests = groups * (GROUP + 1)
                step["rss_anon"] = mem
                step["rss_anon_per_manifest"] = {
                    k: round((v - baseline[sut.name].get(k, 0)) / total_manifests, 1)
                    for k, v in mem.items()
                }
                step["reads"] = asyncio.run(
                    read_latencies(sut.urls[0], corpus, groups * GROUP, args.samples)
                )
                newest = groups * GROUP - 1
                repo = corpus.image(newest)[0]
                if isinstance(sut, Cargohold):
                    assert sut.cluster is not None
                    step["snapshot"] = snapshot_under_load(
                        sut.cluster, sut.urls, corpus, groups * GROUP, args.concurrency
                    )
                    step["restart_node"] = restart_node(sut.cluster, repo, f"v{newest}")
                    step["restart_cluster"] = restart_cluster(
                        sut.cluster, sut.urls[0], repo, f"v{newest}"
                    )
                    if not args.no_catch_up:
                        catch = PushStats()
                        step["catch_up"] = catch_up(sut.cluster, sut.urls, corpus, groups, catch)
                        # that extra group is part of the corpus from now on
                        groups_pushed = groups + 1
                    else:
                        groups_pushed = groups
                else:
                    step["restart"] = restart_distribution(sut, repo, f"v{newest}")
                    if not args.no_catch_up:
                        # keep the corpora equal: Distribution gets the extra group too
                        asyncio.run(push_groups(sut.urls, corpus, groups, groups + 1, 1, stats))
                    groups_pushed = groups + (0 if args.no_catch_up else 1)
                report["steps"][sut.name].append(step)
                print(json.dumps({sut.name: step}, default=str), flush=True)
            done_groups = groups_pushed
    finally:
        for sut in systems:
            with contextlib.suppress(Exception):
                asyncio.run(sut.stop())
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return report


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_offline(report: dict[str, Any]) -> str:
    lines = [
        f"# Metadata snapshots at scale, offline ({report['mode']}), {report['started']}",
        "",
        f"Host `{report['host']}`, {report['cpus']} CPUs (shared: load average per row). "
        f"The push corpus ({report['repos']} repositories, an index per {GROUP} images) "
        "applied straight to a MetadataState in one process; a snapshot taken through "
        "RaftMember (forked child, as a node does); then a fresh process loads it as a "
        "one-member node until a linearizable read succeeds (restart); then that node "
        "serves as leader and adds an empty member, which installs the whole snapshot "
        "from it (pysyncobj's transfer) until a linearizable read succeeds on it "
        "(catch-up). CPU s: the process's own CPU (what the machine's other load does "
        "not inflate).",
        "",
        "| images | manifests | load avg | state B/manifest | snapshot MiB | snapshot s "
        "| Raft pause ms | load s | load MB/s | restart to serving s | its CPU s "
        "| loaded B/manifest | + search index | catch-up s | its CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["offline"]:
        lines.append(
            f"| {fmt(row['images'])} | {fmt(row['manifests'])} | {row['loadavg'][0]:.1f} "
            f"| {fmt(row['rss_anon_per_manifest'])} | {row['snapshot_bytes'] / 2**20:.1f} "
            f"| {fmt(row['snapshot_seconds'])} | {fmt(row['pause_ms'])} "
            f"| {fmt(row['load_seconds'])} | {fmt(row['load_mb_per_s'])} "
            f"| {fmt(row['serving_seconds'])} | {fmt(row.get('serving_cpu_seconds'))} "
            f"| {fmt(row.get('loaded_rss_anon_per_manifest'))} "
            f"| {fmt(row.get('loaded_with_search_rss_anon_per_manifest'))} "
            f"| {fmt(row.get('catch_up_seconds'))} | {fmt(row.get('catch_up_cpu_seconds'))} |"
        )
    return "\n".join(lines) + "\n"


def markdown(report: dict[str, Any]) -> str:
    if "preloaded" in report:
        from bench.metadata_preloaded import markdown_preloaded

        return markdown_preloaded(report)
    if "offline" in report:
        return markdown_offline(report)
    lines = [
        f"# Metadata at scale ({report['mode']}), {report['started']}",
        "",
        f"Host `{report['host']}`, {report['cpus']} CPUs (shared with other work: the load "
        f"average before each step is in the table). Corpus: images in groups of {GROUP} "
        f"over {report['repos']} repositories, a config blob each, one layer per repository, "
        f"an index per group; {report['concurrency']} connections pushing. Cargohold: 3 "
        "nodes, R=3, default node settings. Distribution: `docker-registry`, filesystem.",
        "",
        "| system | images | load avg | push images/s | PUT p99 ms | RssAnon per node MiB "
        "| B per manifest | tags/list p50/p99 ms | catalog p50/p99 ms | GET p50/p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, steps in report["steps"].items():
        for step in steps:
            mem = step["rss_anon"]
            per = step["rss_anon_per_manifest"]
            reads = step["reads"]

            def pp(key: str, reads: dict[str, Any] = reads) -> str:
                r = reads.get(key, {})
                return f"{fmt(r.get('p50_ms'))} / {fmt(r.get('p99_ms'))}"

            lines.append(
                f"| {name} | {fmt(step['images'])} | {step['loadavg'][0]:.1f} "
                f"| {fmt(step['push']['images_per_s'])} | {fmt(step['push']['put_p99_ms'])} "
                f"| {' / '.join(f'{v / 2**20:.0f}' for v in mem.values())} "
                f"| {' / '.join(f'{v:.0f}' for v in per.values())} "
                f"| {pp('tags_list_page')} | {pp('catalog_page')} | {pp('manifest_get')} |"
            )
    lines += [
        "",
        "| system | images | snapshot MiB | snapshot s | Raft pause ms | PUT p99 during / "
        "outside ms (ratio) | restart node s (load s) | restart cluster s | catch-up s "
        "(by snapshot, read errors) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, steps in report["steps"].items():
        for step in steps:
            snap = step.get("snapshot")
            if snap is None:
                lines.append(
                    f"| {name} | {fmt(step['images'])} | - | - | - | - "
                    f"| {fmt(step['restart']['seconds'])} (process) | - | - |"
                )
                continue
            node, whole, catch = step["restart_node"], step["restart_cluster"], step.get("catch_up")
            catch_text = (
                f"{fmt(catch['seconds'])} ({'yes' if catch['by_snapshot'] else 'no'}, "
                f"{catch['read_errors_meanwhile']} of "
                f"{catch['read_errors_meanwhile'] + catch['reads_served_meanwhile']})"
                if catch
                else "-"
            )
            lines.append(
                f"| {name} | {fmt(step['images'])} | {snap['bytes'] / 2**20:.1f} "
                f"| {fmt(snap['seconds'])} | {fmt(snap['pause_ms'])} "
                f"| {fmt(snap['put_p99_during_ms'])} / {fmt(snap['put_p99_outside_ms'])} "
                f"({fmt(snap['ratio'])}) | {fmt(node['seconds'])} ({fmt(node['load_seconds'])}) "
                f"| {fmt(whole['seconds'])} | {catch_text} |"
            )
    errors = [
        (name, step["images"], step["push"]["first_errors"])
        for name, steps in report["steps"].items()
        for step in steps
        if step["push"]["errors"]
    ]
    if errors:
        lines += ["", "Push errors:"]
        lines += [f"- {name} at {n}: {errs}" for name, n, errs in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs="?", default="1k,10k", help="image counts: 1k,10k,...")
    parser.add_argument("--full", action="store_true", help="1,000 repositories (issue 20)")
    parser.add_argument("--repos", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=200, help="reads per latency figure")
    parser.add_argument("--systems", default="distribution,cargohold")
    parser.add_argument("--no-catch-up", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="no cluster: build the state in this process, snapshot and reload it",
    )
    parser.add_argument(
        "--preloaded",
        action="store_true",
        help="per size: a 3-node cluster preloaded offline with that many images, then "
        "--push more pushed through HTTP (bench/metadata_preloaded.py)",
    )
    parser.add_argument("--push", type=int, default=5000, help="images pushed (--preloaded)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per size (--preloaded)")
    parser.add_argument(
        "--preloaded-nodes", type=int, choices=(1, 3), default=3, help="1: R=1; 3: R=3 W=2"
    )
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.0,
        help="after --settle, wait up to this many s until every node is idle (--preloaded)",
    )
    parser.add_argument(
        "--scale-steps",
        action="store_true",
        help="after the push (3 nodes): memory, reads, snapshot under load, restarts, "
        "catch-up on the preloaded cluster (--preloaded)",
    )
    parser.add_argument("--settle", type=float, default=10.0, help="s before the push")
    parser.add_argument("--load-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--load-raft", default="", help=argparse.SUPPRESS)
    parser.add_argument("--load-peers", default="", help=argparse.SUPPRESS)
    parser.add_argument("--load-add", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        load_main(args.load_child, args.load_raft, args.load_peers, args.load_add)
        return 0
    report = run(args)
    day = dt.date.today().isoformat()
    kind = "-preloaded" if args.preloaded else "-offline" if args.offline else ""
    stem = f"{day}-metadata-scale{kind}{'' if args.full else '-quick'}{args.tag}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"results: {out / stem}.{{json,md}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    raise SystemExit(main())
