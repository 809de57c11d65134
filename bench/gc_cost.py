"""What online garbage collection costs (docs/operations.md "Garbage collection", issue 12):

    .venv/bin/python -m bench.gc_cost pass [--chunks 100000] [--nodes 3] [--rate 0]
    .venv/bin/python -m bench.gc_cost ab [--rounds 2] [--chunks 100000] [--rate 0]

`pass`: a dev cluster (real node processes) is filled with `--chunks` small chunks on every
node, written through the nodes' own `Chunks.Put` as a gateway would, and blobs recorded
in the metadata through `blob_commit`: most chunks referenced by linked blobs, a share in
blobs then unlinked (the leader prunes them), a share in no recipe at all (an abandoned
upload's). Then `admin gc --wait` is timed (grace 0, `--rate` ids/s, 0 = unpaced), then
a second pass with nothing left to remove.

`ab`: the bench-quick workloads against a 1-node cluster holding `--chunks` prefilled
chunks, with GC off (A) and with GC passes back to back (B, `gc_interval_seconds` 0.2,
grace 30 s, `--rate`), interleaved A B A B ... because the machine is shared: each round
reports every cell's figure and B/A; the summary gives the median ratio per group.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.profiles import PROFILES
from bench.systems import Cargohold, make_workdir, remove_workdir
from bench.workloads import blobs
from bench.workloads.common import Context
from cargohold.grpc_channels import open_channel
from cargohold.metadata_api import BlobCommit, BlobUnlink
from cargohold_cli import admin
from cargohold_cli.devcluster import LocalCluster
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

CHUNK_BYTES = 1024
CHUNKS_PER_BLOB = 100
IN_FLIGHT = 64


def _chunk(i: int, salt: bytes) -> tuple[bytes, bytes]:
    data = salt + i.to_bytes(8, "big") + bytes(CHUNK_BYTES - 8 - len(salt))
    return hashlib.sha256(data).digest(), data


async def fill(
    cluster: LocalCluster, chunks: int, unlinked: float = 0.1, orphan: float = 0.1
) -> dict[str, Any]:
    """Write `chunks` chunks to every node and record blobs over them: a share `unlinked`
    in blobs unlinked afterwards, a share `orphan` in no recipe. Returns the plan.

    As a gateway does (and as the GC contract requires, node/gc.py), each blob is committed
    right after its chunks are written, well within the grace period; the orphans, garbage
    anyway, go first."""
    cfg = cluster.client_config("gateway")
    salt = os.urandom(8)
    channels = [open_channel(a, cfg) for a in cluster.node_grpc_addresses]
    started = time.perf_counter()
    orphans = int(chunks * orphan)
    blob_count = (chunks - orphans) // CHUNKS_PER_BLOB
    to_unlink = int(blob_count * unlinked / (1 - orphan))
    try:
        stubs = [pb_grpc.ChunksStub(c) for c in channels]
        meta = pb_grpc.MetadataStub(channels[0])
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def put(stub: pb_grpc.ChunksStub, i: int) -> None:
            chunk_id, data = _chunk(i, salt)
            async with gate:
                await stub.Put(pb.PutChunkRequest(id=chunk_id, data=data), timeout=60)

        async def put_all(indexes: range) -> None:
            await asyncio.gather(*(put(stub, i) for stub in stubs for i in indexes))

        async def command(request: Any) -> None:
            async with gate:
                await meta.Command(
                    pb.MetadataRequest(op=request.op, args=request.args_json()), timeout=60
                )

        for start in range(0, orphans, 5000):
            await put_all(range(start, min(orphans, start + 5000)))
        digests: list[tuple[str, str]] = []
        group = 50  # blobs written, then committed, together
        for first in range(0, blob_count, group):
            last = min(blob_count, first + group)
            await put_all(
                range(orphans + first * CHUNKS_PER_BLOB, orphans + last * CHUNKS_PER_BLOB)
            )
            commits = []
            for b in range(first, last):
                ids = [
                    _chunk(orphans + b * CHUNKS_PER_BLOB + k, salt)[0]
                    for k in range(CHUNKS_PER_BLOB)
                ]
                digest = "sha256:" + hashlib.sha256(b"".join(ids)).hexdigest()
                digests.append((f"gcbench/r{b % 100}", digest))
                recipe = {
                    "size": CHUNK_BYTES * CHUNKS_PER_BLOB,
                    "chunks": [[c.hex(), CHUNK_BYTES] for c in ids],
                }
                commits.append(
                    command(BlobCommit(digests[-1][0], digest, recipe, None, time.time()))
                )
            await asyncio.gather(*commits)
        await asyncio.gather(*(command(BlobUnlink(r, d)) for r, d in digests[:to_unlink]))
    finally:
        for channel in channels:
            await channel.close()
    return {
        "chunks_per_node": chunks,
        "chunk_bytes": CHUNK_BYTES,
        "blobs": blob_count,
        "blobs_unlinked": to_unlink,
        "chunks_in_unlinked_blobs": to_unlink * CHUNKS_PER_BLOB,
        "orphan_chunks": orphans,
        "fill_s": round(time.perf_counter() - started, 1),
    }


def _gc_pass(cluster: LocalCluster) -> dict[str, Any]:
    started = time.perf_counter()
    results = admin.run_gc(cluster.node_grpc_addresses, wait=True, cfg=cluster.client_config())
    wall = time.perf_counter() - started
    keys = ("scanned_chunks", "marked_chunks", "swept_chunks", "pruned_blobs", "pass_seconds")
    return {
        "wall_s": round(wall, 2),
        "nodes": {
            a: {k: r.get(k) for k in keys} if "error" not in r else r for a, r in results.items()
        },
    }


async def run_pass(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="gc-cost-"))
    cluster = LocalCluster(
        root / "cluster",
        nodes=args.nodes,
        gateways=1,
        replicas=min(3, args.nodes),
        write_quorum=min(2, args.nodes),
        extra={
            "lifecycle": {
                "gc_interval_seconds": 0,
                "gc_grace_seconds": 0,
                "gc_rate_chunks": args.rate,
            }
        },
    )
    try:
        await asyncio.to_thread(cluster.start, 90)
        plan = await fill(cluster, args.chunks)
        first = await asyncio.to_thread(_gc_pass, cluster)
        second = await asyncio.to_thread(_gc_pass, cluster)
        return {
            "mode": "pass",
            "load_average": machine.load_average(),
            "nodes": args.nodes,
            "rate": args.rate,
            "fill": plan,
            "first_pass": first,
            "second_pass": second,
        }
    finally:
        await asyncio.to_thread(cluster.stop)
        remove_workdir(root)


# -- A/B: bench-quick figures with and without GC running back to back ------------------------
def _figures(results: dict[str, Any]) -> dict[str, float]:
    """{group/cell: figure}: MB/s for blobs, ops/s elsewhere, images/s for push storms,
    clients/s (1000/p50) for pull storms: higher is better everywhere."""
    out: dict[str, float] = {}
    for group, cells in results.items():
        if not isinstance(cells, dict):
            continue
        if group == "push_storm":
            out[group] = float(cells.get("images_per_s") or 0)
        elif group == "pull_storm":
            p50 = cells.get("p50_ms")
            if p50:
                out[group + " (1000/p50)"] = round(1000 / p50, 2)
        elif group == "dedup":
            continue
        else:
            for cell, fig in cells.items():
                if isinstance(fig, dict) and not fig.get("errors"):
                    value = fig.get("MB_per_s") or fig.get("ops_per_s")
                    if value:
                        out[f"{group}/{cell}"] = float(value)
    return out


async def _bench_once(gc_on: bool, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    profile = PROFILES["quick"]
    name = "cargohold-r1-gc" if gc_on else "cargohold-r1"
    lifecycle: dict[str, object] = {"gc_grace_seconds": 30.0, "gc_rate_chunks": args.rate}
    lifecycle["gc_interval_seconds"] = 0.2 if gc_on else 0
    system = Cargohold(
        make_workdir(root, name),
        nodes=1,
        replicas_=1,
        write_quorum=1,
        gateways=profile.gateways,
        name=name,
        label=name,
        lifecycle_settings=lifecycle,
    )
    record: dict[str, Any] = {"gc": gc_on, "load_before": machine.load_average()}
    try:
        await system.start()
        assert system.cluster is not None
        record["fill"] = await fill(system.cluster, args.chunks)
        # Let a first pass delete the prefill's garbage before measuring (B only).
        await asyncio.sleep(31 if gc_on else 0)
        from bench.runner import _run_workloads

        errors: dict[str, str] = {}
        results = await _run_workloads(
            Context(system, profile), args.workloads, lambda w, e: errors.__setitem__(w, e)
        )
        record["figures"] = _figures(results)
        if errors:
            record["errors"] = errors
        status = await asyncio.to_thread(
            admin.cluster_status, system.grpc_addresses, 5.0, system.cluster.client_config()
        )
        record["gc_progress"] = [n.get("extra", {}).get("gc") for n in status["nodes"]]
        record["chunks_at_end"] = [n.get("chunks") for n in status["nodes"]]
    finally:
        record["load_after"] = machine.load_average()
        await system.stop()
        remove_workdir(system.workdir)
    return record


async def run_ab(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="gc-ab-"))
    profile = PROFILES["quick"]
    await blobs.prepare((*profile.blob_cells, profile.calibration_blob))
    rounds = []
    try:
        for i in range(args.rounds):
            pair = {}
            order = (False, True) if i % 2 == 0 else (True, False)
            for gc_on in order:
                pair["B" if gc_on else "A"] = await _bench_once(gc_on, args, root)
                print(f"round {i + 1} {'B (gc)' if gc_on else 'A'} done", file=sys.stderr)
            rounds.append(pair)
    finally:
        remove_workdir(root)
    ratios: dict[str, list[float]] = {}
    for pair in rounds:
        a, b = pair["A"]["figures"], pair["B"]["figures"]
        for key in a.keys() & b.keys():
            if a[key]:
                ratios.setdefault(key, []).append(round(b[key] / a[key], 3))
    summary = {k: {"ratios": v, "median": statistics.median(v)} for k, v in sorted(ratios.items())}
    return {
        "mode": "ab",
        "chunks": args.chunks,
        "rate": args.rate,
        "rounds": rounds,
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gc_cost", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("pass", "ab"))
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=3, help="pass: nodes in the dev cluster")
    parser.add_argument("--rate", type=float, default=0.0, help="gc_rate_chunks (0 = unpaced)")
    parser.add_argument("--rounds", type=int, default=2, help="ab: A/B pairs")
    parser.add_argument(
        "--workloads",
        type=lambda s: s.split(","),
        default=["blobs", "manifests", "pull_storm", "push_storm", "tag_puts"],
        help="ab: bench workloads",
    )
    parser.add_argument("--out", help="write the JSON result here too")
    args = parser.parse_args(argv)
    result = asyncio.run(run_pass(args) if args.mode == "pass" else run_ab(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
