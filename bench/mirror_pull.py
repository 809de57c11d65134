"""The pull-through cache's cost: a cold pull through a proxy namespace against a direct
pull from the upstream, and a warm pull against a pull of the same image pushed to
Cargohold (its normal pull speed). With `--relay`, also a pull through bench/relay.py (a
process that only relays and verifies: the least a cold pull costs, with no cache fill).

The upstream is CNCF Distribution (bench.systems.Distribution); Cargohold is a local
3-node cluster with one gateway whose `up` proxy namespace points at it. Each round
pushes a fresh image (random, incompressible layers) to the upstream, then pulls it the
way docker does (the manifest, then the blobs, three at a time), in
alternating order: direct from the upstream, cold through the proxy, warm through the
proxy (stored by then), and from Cargohold's own repository. After a cold pull the bench
waits until the gateway has no download in flight (its blobs stored; `stored` is that
time from the pull's start), so no timed pull runs beside a cache fill. Medians over the
rounds, with the load average before and after (the machine is shared). The image is
pushed to Cargohold's own repository only after the cold pull, so that the cold pull's
cluster write stores new chunks (chunks stored already cost a fraction).

`--ab-mirror KEY=VALUE` measures a change instead: a second gateway whose `[mirror]` has
KEY=VALUE (the other arm, e.g. `memory_pool_bytes=0`, every download spooled), or with
`--ab-tree DIR` a second gateway running the code checked out in DIR (e.g. main's, from
`git archive main | tar -x -C DIR`), and each
round cold-pulls a fresh image through each gateway (and one direct), in alternating
order, recording every process's CPU-seconds (/proc, bench/procstats.py) from the pull's
start until its cluster write is over (`--settle` seconds after it): CPU per cold-pulled
GB, which the shared machine's load distorts far less than wall time. An idle window of
the same length is measured too (heartbeats, the bench's own polling), and a push of the
same image through gateway 1 (the cluster write's own cost, as a client's push).

`--link-mib-s N` puts a relay limited to N MiB/s (bench/link.py) between Distribution and
both of its clients (the bench's direct pulls and the proxy): the slow or shared link a
pull-through cache sits behind, instead of loopback, where a cold pull is bound by CPU.

    .venv/bin/python -m bench.mirror_pull [--rounds 5] [--layer-mib 16] [--layers 4]
                                          [--link-mib-s 0] [--relay]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from bench.link import Link
from bench.procstats import GB, CpuMeter
from bench.systems import Distribution
from cargohold_cli.devcluster import LocalCluster, free_port

MiB = 1024 * 1024
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _image(layers: int, layer_bytes: int) -> tuple[list[tuple[str, bytes]], bytes]:
    blobs = [os.urandom(layer_bytes) for _ in range(layers)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(8).hex()})
    entries = [(f"sha256:{hashlib.sha256(b).hexdigest()}", b) for b in [config.encode(), *blobs]]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": entries[0][0],
                "size": len(entries[0][1]),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(b)}
                for d, b in entries[1:]
            ],
        }
    ).encode()
    return entries, manifest


async def _push(
    http: aiohttp.ClientSession, base: str, repo: str, blobs: list[tuple[str, bytes]], man: bytes
) -> None:
    for digest, data in blobs:
        async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as r:
            assert r.status == 202, await r.text()
            location = yarl.URL(base).join(yarl.URL(r.headers["Location"]))
        async with http.put(location.update_query(digest=digest), data=data) as r:
            assert r.status == 201, await r.text()
    headers = {"Content-Type": MANIFEST}
    async with http.put(f"{base}/v2/{repo}/manifests/v1", data=man, headers=headers) as r:
        assert r.status == 201, await r.text()


async def _pull(
    http: aiohttp.ClientSession,
    base: str,
    repo: str,
    parallel: int = 3,
    manifest_seconds: list[float] | None = None,
) -> int:
    """Pull like docker: the manifest, then its blobs `parallel` at a time; bytes read.
    The manifest's time (request to body read) is appended to `manifest_seconds`."""
    start = time.perf_counter()
    async with http.get(f"{base}/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST}) as r:
        assert r.status == 200, await r.text()
        doc = json.loads(await r.read())
    if manifest_seconds is not None:
        manifest_seconds.append(time.perf_counter() - start)
    digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
    slots = asyncio.Semaphore(parallel)
    total = 0

    async def blob(digest: str) -> None:
        nonlocal total
        async with slots, http.get(f"{base}/v2/{repo}/blobs/{digest}") as r:
            assert r.status == 200, await r.text()
            hasher = hashlib.sha256()
            async for piece in r.content.iter_chunked(1 << 20):
                hasher.update(piece)
                total += len(piece)
            assert f"sha256:{hasher.hexdigest()}" == digest

    await asyncio.gather(*(blob(d) for d in digests))
    return total


async def _timed(
    http: aiohttp.ClientSession, base: str, repo: str, manifest: list[float] | None = None
) -> tuple[float, int]:
    start = time.perf_counter()
    size = await _pull(http, base, repo, manifest_seconds=manifest)
    return time.perf_counter() - start, size


async def _listening(url: str) -> None:
    """Until `url` answers (the relay's process is up)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(500):
            try:
                async with http.get(f"{url}/v2/"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
    raise RuntimeError(f"{url} never answered")


async def _stored(http: aiohttp.ClientSession, base: str) -> None:
    """Until the gateway has no blob download in flight: every cold-pulled blob is
    stored (or failed), so the cache fill does not run beside the next timed pull."""
    while True:
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("cargohold_mirror_fetches_in_flight "):
                if float(line.split()[1]) == 0:
                    return
        await asyncio.sleep(0.02)


async def run(
    rounds: int,
    layers: int,
    layer_mib: int,
    workdir: Path,
    link_mib_s: float = 0.0,
    relay: bool = False,
) -> dict[str, Any]:
    upstream = Distribution(workdir / "distribution")
    await upstream.start()
    link = Link("127.0.0.1", upstream.port, link_mib_s) if link_mib_s else None
    if link is not None:
        await link.start()
    pull_url = link.url if link is not None else upstream.urls[0]  # pushes go direct
    relay_proc: subprocess.Popen[bytes] | None = None
    if relay:
        relay_port = free_port()
        relay_url = f"http://127.0.0.1:{relay_port}"
        command = [sys.executable, "-m", "bench.relay", pull_url, str(relay_port)]
        relay_proc = await asyncio.to_thread(subprocess.Popen, command)
    mirror = {"proxies": [f"up={pull_url}"], "tag_ttl_seconds": 300.0}
    cluster = LocalCluster(workdir / "cluster", nodes=3, gateways=1, extra={"mirror": mirror})
    # "stored": from a cold pull's start until its blobs are stored (the cache fill).
    times: dict[str, list[float]] = {
        "direct": [],
        "cold": [],
        "stored": [],
        "warm": [],
        "cargohold": [],
        "relay": [],
    }
    # The manifest's part of each pull (cold: the tag's HEAD and the manifest's GET
    # upstream, served before it is stored).
    manifests: dict[str, list[float]] = {"direct": [], "cold": [], "relay": []}
    # CPU-seconds per process: of each direct and cold pull (client's start to end), and
    # of the cache fill after a cold pull ("store": from its end until stored).
    cpu: dict[str, list[dict[str, float]]] = {"direct": [], "cold": [], "store": [], "relay": []}
    load = {"before": os.getloadavg()}
    size = 0
    try:
        await asyncio.to_thread(cluster.start, 90)
        pids = _pids(cluster, upstream)
        if relay_proc is not None:
            pids["relay"] = relay_proc.pid
            await _listening(relay_url)
        meter = CpuMeter(pids)
        base = cluster.gateway_url
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            for i in range(rounds):
                blobs, manifest = _image(layers, layer_mib * MiB)
                repo = f"bench/img{i}"
                await _push(http, upstream.urls[0], repo, blobs, manifest)
                order = ["direct", "cold"] + (["relay"] if relay else [])
                order = order[i % len(order) :] + order[: i % len(order)]
                for kind in order:
                    url, name = {
                        "direct": (pull_url, repo),
                        "cold": (base, f"up/{repo}"),
                        "relay": (relay_url, repo) if relay else ("", ""),
                    }[kind]
                    start = time.perf_counter()
                    meter.reset()
                    seconds, size = await _timed(http, url, name, manifests[kind])
                    cpu[kind].append(_rounded(meter.used()))
                    times[kind].append(seconds)
                    if kind == "cold":
                        meter.reset()
                        await _stored(http, base)
                        times["stored"].append(time.perf_counter() - start)
                        cpu["store"].append(_rounded(meter.used()))
                await asyncio.sleep(1.0)  # the manifest is stored once its blobs are
                # Pushed only now: the cold pull's cluster write met none of its chunks
                # stored already (a write of chunks the cluster has costs far less).
                await _push(http, base, f"local/img{i}", blobs, manifest)
                order = ["warm", "cargohold"] if i % 2 == 0 else ["cargohold", "warm"]
                for kind in order:
                    name = f"up/{repo}" if kind == "warm" else f"local/img{i}"
                    seconds, size = await _timed(http, base, name)
                    times[kind].append(seconds)
    finally:
        if relay_proc is not None:
            relay_proc.terminate()
            await asyncio.to_thread(relay_proc.wait)
        await asyncio.to_thread(cluster.stop)
        await upstream.stop()
        if link is not None:
            await link.stop()
    load["after"] = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    return {
        "image_bytes": size,
        "rounds": rounds,
        "link_mib_s": link_mib_s or None,
        "seconds": times,
        "median_seconds": med,
        "median_mib_s": {k: size / MiB / v for k, v in med.items()},
        "cold_over_direct": med["cold"] / med["direct"],
        "warm_over_cargohold": med["warm"] / med["cargohold"],
        "relay_over_direct": med["relay"] / med["direct"] if relay else None,
        "manifest_seconds": manifests,
        "median_manifest_seconds": {k: statistics.median(v) for k, v in manifests.items() if v},
        "cpu_s": cpu,
        "median_cpu_s": {
            kind: {
                group: round(statistics.median(_group(c, names) for c in rows), 3)
                for group, names in _GROUPS.items()
            }
            for kind, rows in cpu.items()
            if rows
        },
        "loadavg": load,
    }


# Processes by group in the CPU figures (bench-client: the client, and the link's relay).
_GROUPS = {
    "gateway": ("gateway",),
    "relay": ("relay",),
    "nodes": ("n",),
    "upstream": ("docker-registry",),
    "client": ("bench-client",),
    "all": ("",),
}


def _group(cpu: dict[str, float], names: tuple[str, ...]) -> float:
    return sum(v for k, v in cpu.items() if k.startswith(names))


def _rounded(cpu: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in cpu.items()}


class _ABCluster(LocalCluster):
    """A LocalCluster whose second gateway's `[mirror]` has `other` applied."""

    other: dict[str, Any] = {}
    other_tree: str = ""

    def start_gateway(self, j: int) -> None:
        proc = self.gateway_procs[j]
        if j != 1 or not self.other_tree or (proc is not None and proc.poll() is None):
            super().start_gateway(j)
            return
        # `python -m` puts the working directory first on sys.path: run from the tree.
        prefix = ["sh", "-c", 'cd "$0" && exec "$@"', self.other_tree]
        self.gateway_procs[j] = self._spawn(
            "gateway", self.gateway_config_path(j), "gateway-2", prefix
        )

    def gateway_config_path(self, j: int) -> Path:
        if j != 1:
            return super().gateway_config_path(j)
        mirror = self.layout.extra["mirror"]
        self.layout.extra["mirror"] = {**mirror, **self.other}
        try:
            return super().gateway_config_path(j)
        finally:
            self.layout.extra["mirror"] = mirror


def _pids(cluster: LocalCluster, upstream: Distribution) -> dict[str, int]:
    pids = dict(upstream.processes())
    for i, proc in enumerate(cluster.node_procs):
        if proc is not None:
            pids[f"n{i + 1}"] = proc.pid
    for j, proc in enumerate(cluster.gateway_procs):
        if proc is not None:
            pids[f"gateway-{j + 1}"] = proc.pid
    pids["bench-client"] = os.getpid()
    return pids


async def run_ab(
    rounds: int,
    layers: int,
    layer_mib: int,
    workdir: Path,
    other: dict[str, Any],
    settle: float,
    other_tree: str = "",
) -> dict[str, Any]:
    """Cold pulls through gateway 1 (this branch's defaults) and gateway 2 (`other`),
    with every process's CPU-seconds per cold pull."""
    upstream = Distribution(workdir / "distribution")
    await upstream.start()
    mirror = {"proxies": [f"up={upstream.urls[0]}"], "tag_ttl_seconds": 300.0}
    cluster = _ABCluster(workdir / "cluster", nodes=3, gateways=2, extra={"mirror": mirror})
    cluster.other = other
    cluster.other_tree = other_tree
    arms = ["direct", "cold-a", "cold-b", "push", "idle"]
    times: dict[str, list[float]] = {k: [] for k in arms[:4]}
    cpu: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
    load = {"before": os.getloadavg()}
    size = 0
    try:
        await asyncio.to_thread(cluster.start, 90)
        meter = CpuMeter(_pids(cluster, upstream))
        urls = cluster.gateway_urls
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            for i in range(rounds):
                for arm in ("a", "b"):
                    blobs, manifest = _image(layers, layer_mib * MiB)
                    await _push(http, upstream.urls[0], f"bench/img{i}{arm}", blobs, manifest)
                order = arms if i % 2 == 0 else arms[::-1]
                for kind in order:
                    meter.reset()
                    if kind == "direct":
                        seconds, size = await _timed(http, upstream.urls[0], f"bench/img{i}a")
                    elif kind == "idle":
                        seconds = 0.0
                    elif kind == "push":  # the cluster write alone, as a client's push
                        # A third image: chunks already stored by a cold pull cost less.
                        image = _image(layers, layer_mib * MiB)
                        meter.reset()
                        start = time.perf_counter()
                        await _push(http, urls[0], f"local/img{i}", *image)
                        seconds = time.perf_counter() - start
                    else:
                        arm = kind[-1]
                        base = urls[0] if arm == "a" else urls[1]
                        seconds, size = await _timed(http, base, f"up/bench/img{i}{arm}")
                    if kind != "direct":
                        await asyncio.sleep(settle)  # the cluster write and the commit
                    cpu[kind].append({k: round(v, 3) for k, v in meter.used().items()})
                    if kind in times:
                        times[kind].append(seconds)
    finally:
        await asyncio.to_thread(cluster.stop)
        await upstream.stop()
    load["after"] = os.getloadavg()

    def per_gb(kind: str, names: tuple[str, ...]) -> float:
        return statistics.median(
            sum(v for k, v in c.items() if k.startswith(names)) / (size / GB) for c in cpu[kind]
        )

    groups = {
        "gateway-1": ("gateway-1",),
        "gateway-2": ("gateway-2",),
        "nodes": ("n",),
        "upstream": ("docker-registry",),
        "client": ("bench-client",),
    }
    return {
        "image_bytes": size,
        "rounds": rounds,
        "other_arm_mirror": other,
        "other_arm_tree": other_tree or None,
        "settle_seconds": settle,
        "seconds": times,
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "cpu_s": cpu,
        "median_cpu_s_per_gb": {
            kind: {g: round(per_gb(kind, names), 3) for g, names in groups.items()} for kind in arms
        },
        "loadavg": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=int, default=16)
    parser.add_argument("--link-mib-s", type=float, default=0.0)
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--ab-mirror", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ab-tree", default="", metavar="DIR")
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cargohold-mirror-bench-") as tmp:
        if args.ab_mirror or args.ab_tree:
            other = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.ab_mirror)}
            tree = str(Path(args.ab_tree).resolve()) if args.ab_tree else ""
            work = run_ab(
                args.rounds, args.layers, args.layer_mib, Path(tmp), other, args.settle, tree
            )
        else:
            work = run(
                args.rounds, args.layers, args.layer_mib, Path(tmp), args.link_mib_s, args.relay
            )
        result = asyncio.run(work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
