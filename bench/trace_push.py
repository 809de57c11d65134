"""Where a manifest PUT by tag (or a small image's push) spends its time, round trip by trip.

`python -m bench.trace_push [--nodes 3] [--count 200] [--images]` starts a LocalCluster
(3 nodes R=3 W=2 like the bench's cargohold-r3, or 1 node), stops its gateway and serves
the same gateway in this process instead, with the cluster client's round trips wrapped:
every metadata command and query (op, and whether it is linearizable: a Raft barrier on
the node), every chunk write and every chunk read is timed and tagged with the HTTP request
it belongs to. Then it pushes one small image and PUTs its manifest under `count` fresh
tags, one at a time (the bench's `tag_puts`), or with `--images` pushes `count` small
images one at a time (the push storm's: a config and two 16 KiB layers each), or with
`--blob-kib N` pushes `count` blobs of N KiB docker-style (POST, one streamed PATCH, PUT:
the bench's blob push), and prints,
per kind of request (POST/PATCH/PUT of an upload, PUT of a manifest), the median request's
round trips in order with their own times, and how often each kind of round trip occurred
per request. The nodes' own view (how long a Raft command took in the gRPC handler) comes
from their `/metrics` (`cargohold_node_raft_command_seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.blobdata import BlobSpec, digest_of
from bench.images import Image, push_image
from bench.oci import OciClient
from bench.procstats import CpuMeter
from cargohold.config import load_config
from cargohold_cli.devcluster import LocalCluster

# The spans of the request being served: (kind, start, seconds), in order of start.
_SPANS: contextvars.ContextVar[list[tuple[str, float, float]] | None] = contextvars.ContextVar(
    "trace_spans", default=None
)
_REQUESTS: dict[str, list[tuple[float, list[tuple[str, float, float]]]]] = {}


def _wrap(cls: Any, name: str, label: Callable[..., str]) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        spans = _SPANS.get()
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            if spans is not None:
                spans.append((label(*args, **kwargs), start, time.perf_counter() - start))

    setattr(cls, name, traced)


def _instrument() -> None:
    from gateway.cluster.metadata import MetadataClient
    from gateway.cluster.reads import ChunkReader
    from gateway.cluster.writes import ChunkWriter

    def meta_label(_self: Any, is_command: bool, op: str, _args: Any, linearizable: bool) -> str:
        if is_command:
            return f"command {op}"
        return f"query {op}" + (" (barrier)" if linearizable else "")

    _wrap(MetadataClient, "_call", meta_label)
    _wrap(ChunkWriter, "store_bytes", lambda *_a, **_k: "store_bytes (chunk puts to R, W acks)")
    _wrap(ChunkWriter, "_put_one", lambda _s, m, *_a, **_k: f"  chunk put {m.id}")
    _wrap(ChunkReader, "read_all", lambda *_a, **_k: "read_all (chunk read)")


def _middleware() -> Any:
    from aiohttp import web

    @web.middleware
    async def trace(request: web.Request, handler: Any) -> web.StreamResponse:
        if "/manifests/" in request.path:
            kind = f"{request.method} manifest"
        elif "/blobs/uploads/" in request.path:
            kind = f"{request.method} upload"
        else:
            return await handler(request)
        spans: list[tuple[str, float, float]] = []
        token = _SPANS.set(spans)
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            _SPANS.reset(token)
            _REQUESTS.setdefault(kind, []).append((time.perf_counter() - start, spans))

    return trace


async def _serve_gateway(config: Path, stop: asyncio.Event) -> None:
    from gateway import app as app_module
    from gateway import server

    build = app_module.build_app

    def build_traced(*args: Any, **kwargs: Any) -> Any:
        app = build(*args, **kwargs)
        app.middlewares.insert(0, _middleware())
        return app

    server.build_app = build_traced
    cfg = load_config(config)
    cfg.role = "gateway"
    await server.serve(cfg, stop)


async def _client(
    url: str, count: int, images: bool, conns: int = 1, blob_kib: int = 0
) -> list[float]:
    """`count` sequential tag PUTs of one manifest, or (`images`) pushes of small images
    like the push storm's (a config and two 16 KiB layers each), or (`blob_kib`) blob
    pushes of that size, docker-style like the bench's; the client's seconds each."""
    base = await asyncio.to_thread(Image.build, "trace", [BlobSpec.unique(0x7A6, 64 * 1024)])
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        oci = OciClient(url, session, None)
        await push_image(oci, "trace/tags", "v0", base)
        built = []
        if images:
            built = [
                await asyncio.to_thread(
                    Image.build,
                    f"trace-{i}",
                    [BlobSpec.unique(0x7A7 + 2 * i + j, 16 * 1024) for j in range(2)],
                )
                for i in range(count)
            ]
        blobs = [
            BlobSpec.unique(0x7B0 + i, blob_kib * 1024) for i in range(count if blob_kib else 0)
        ]
        digests = [await asyncio.to_thread(digest_of, spec) for spec in blobs]
        _REQUESTS.clear()
        left = iter(range(count))

        async def worker() -> None:
            for i in left:
                t0 = time.perf_counter()
                if blob_kib:
                    await oci.push_blob("trace/blobs", blobs[i], digests[i])
                elif images:
                    await push_image(oci, f"trace/images-{i % 10}", f"t{i}", built[i])
                else:
                    await oci.put_manifest("trace/tags", f"t{i}", base.manifest)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(conns)))
    return latencies


def _raft_metrics(address: str) -> dict[str, tuple[float, float]]:
    """op -> (count, sum seconds) of `cargohold_raft_command_seconds` on one node."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith("cargohold_node_raft_command_seconds_"):
            continue
        name, _, value = line.rpartition(" ")
        if "_count{" in name or "_sum{" in name:
            op = name.split('op="', 1)[1].split('"', 1)[0]
            entry = out.setdefault(op, [0.0, 0.0])
            entry[0 if "_count{" in name else 1] += float(value)
    return {op: (c, s) for op, (c, s) in out.items()}


def _report(latencies: list[float], before: dict[str, Any], after: dict[str, Any]) -> str:
    p50, mean = statistics.median(latencies) * 1e3, statistics.fmean(latencies) * 1e3
    lines = [f"{len(latencies)} sequential operations: client p50 {p50:.2f} ms, mean {mean:.2f} ms"]
    for request_kind, requests in sorted(_REQUESTS.items()):
        handled = sorted(requests, key=lambda r: r[0])
        total, spans = handled[len(handled) // 2]
        base = min((s[1] for s in spans), default=0.0)
        lines.append(
            f"{request_kind}: {len(handled)} requests; the median one took {total * 1e3:.2f} ms"
            " in the gateway handler:"
        )
        for kind, start, seconds in sorted(spans, key=lambda s: s[1]):
            lines.append(f"  +{(start - base) * 1e3:6.2f} ms  {seconds * 1e3:6.2f} ms  {kind}")
        kinds: Counter[str] = Counter()
        own: dict[str, list[float]] = {}
        for _, req_spans in handled:
            for kind, _, seconds in req_spans:
                kinds[kind.strip()] += 1
                own.setdefault(kind.strip(), []).append(seconds)
        lines.append("  per request (count, p50 ms):")
        for kind, n in kinds.most_common():
            median = statistics.median(own[kind]) * 1e3
            lines.append(f"    {n / len(handled):5.2f} x  {median:6.2f} ms  {kind}")
    lines.append("Raft commands seen by the nodes meanwhile (count, mean ms in the gRPC handler):")
    for node, stats in after.items():
        for op, (count, total_s) in sorted(stats.items()):
            c0, s0 = before[node].get(op, (0.0, 0.0))
            if count > c0:
                mean = (total_s - s0) / (count - c0) * 1e3
                lines.append(f"  {node} {op}: {count - c0:.0f}, {mean:.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument(
        "--images", action="store_true", help="push small images (the push storm's) instead"
    )
    parser.add_argument("--conns", type=int, default=1, help="operations in flight")
    parser.add_argument(
        "--blob-kib", type=int, default=0, help="push blobs of this size instead (bench-style)"
    )
    args = parser.parse_args(argv)
    _instrument()
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        cluster = LocalCluster(
            Path(tmp) / "cluster",
            nodes=args.nodes,
            gateways=1,
            replicas=args.nodes,
            write_quorum=min(2, args.nodes),
        )
        try:
            cluster.start(timeout=90)
            cluster.kill_gateway(0, 15)
            metrics = cluster.metrics_addresses
            nodes = {k: v for k, v in metrics.items() if not k.startswith("gateway")}

            async def run() -> str:
                stop = asyncio.Event()
                server = asyncio.create_task(_serve_gateway(cluster.gateway_config_path(0), stop))
                await _wait(cluster.gateway_url)
                before = {n: await asyncio.to_thread(_raft_metrics, a) for n, a in nodes.items()}
                pids = {"gateway+client": os.getpid()}
                pids |= {cluster.node_id(i): p.pid for i, p in enumerate(cluster.node_procs) if p}
                meter = CpuMeter(pids)
                t0 = time.perf_counter()
                latencies = await _client(
                    cluster.gateway_url, args.count, args.images, args.conns, args.blob_kib
                )
                elapsed = time.perf_counter() - t0
                cpu = meter.used()
                after = {n: await asyncio.to_thread(_raft_metrics, a) for n, a in nodes.items()}
                stop.set()
                await server
                per_op = ", ".join(f"{k} {v / args.count * 1e3:.2f}" for k, v in cpu.items())
                return (
                    f"{args.count / elapsed:.1f} operations/s at {args.conns} in flight; CPU ms"
                    f" per operation: {per_op}\n" + _report(latencies, before, after)
                )

            import uvloop

            print(uvloop.run(run()))
        finally:
            cluster.stop()
    return 0


async def _wait(url: str) -> None:
    deadline = time.monotonic() + 30.0
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/v2/") as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
