"""Blob push and pull throughput (MB/s) per (size, concurrency) cell.

Push: `count` unique blobs of `size`, `concurrency` at a time, each docker-style
(POST, one streamed PATCH, PUT ?digest=). Then one blob of the cell is pulled back and
hashed (untimed) to check the system returns the right bytes. Pull: the cell's blobs,
`pull_rounds` times each and on in turn until the cell has lasted `pull_min_seconds`, on
`concurrency` persistent connections, bodies read into one
reused buffer and counted, not hashed (`bench.rawhttp.RawBlobReader`: the client costs only
the kernel's copy, so it does not cap a fast registry).
Digests are computed before the clock starts.

Between the push and the pull the harness waits, untimed, until the system writes no
replica copies any more (`settle_writes`: Cargohold at R=3 W=2 acknowledges a chunk at two
copies and writes the third in the background; Distribution has nothing left to wait
for), then flushes dirty pages. The push records how long that took (`settle_s`).

Each cell also records the server's cost (bench/procstats.py): CPU-seconds of all of the
system's processes during the push (up to the end of that wait, so copies written after
the acknowledgement count against the push, not the pull) and during the pull, per
process and per GB moved; and, for Cargohold, how the pull read its chunks
(`chunk_reads`: local LMDB hits and misses, gRPC `Chunks/Get` and `Metadata/Query` calls;
bench/cluster_counters.py).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from bench.blobdata import BlobSpec, digest_of
from bench.cluster_counters import difference
from bench.driver import drive
from bench.procstats import CpuMeter, cpu_s_per_gb
from bench.profiles import BlobCell
from bench.rawhttp import RawReaderPool
from bench.workloads.common import (
    NS_BLOBS,
    Context,
    nonce,
    pick,
    sessions,
    settle,
    settle_writes,
    size_label,
)

REPO = "bench/blobs"


def cell_key(cell: BlobCell) -> str:
    return f"{size_label(cell.size)}_c{cell.concurrency}"


def cell_specs(cell: BlobCell) -> list[BlobSpec]:
    return [
        BlobSpec.unique(nonce(NS_BLOBS, cell.size, cell.concurrency, i), cell.size)
        for i in range(cell.count)
    ]


async def prepare(cells: tuple[BlobCell, ...]) -> None:
    """Hash every blob of every cell once (cached for every system), two threads at a time."""
    specs = [spec for cell in cells for spec in cell_specs(cell)]
    gate = asyncio.Semaphore(2)

    async def one(spec: BlobSpec) -> None:
        async with gate:
            await asyncio.to_thread(digest_of, spec)

    await asyncio.gather(*(one(s) for s in specs))


async def run(
    ctx: Context,
    cells: tuple[BlobCell, ...] | None = None,
    pull_rounds: int | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    cells = cells if cells is not None else ctx.profile.blob_cells
    rounds = pull_rounds if pull_rounds is not None else ctx.profile.pull_rounds
    push: dict[str, Any] = {}
    pull: dict[str, Any] = {}
    for cell in cells:
        push[cell_key(cell)], pull[cell_key(cell)] = await _run_cell(ctx, cell, rounds, verify)
    return {"blob_push": push, "blob_pull": pull}


def _disk_short(ctx: Context, cell: BlobCell) -> str | None:
    """Why the cell would not fit on this (shared) disk, if it would not: every replica of
    every blob plus a margin must fit beside what other users of the machine need."""
    workdir = getattr(ctx.system, "workdir", None)
    if workdir is None:
        return None
    need = cell.size * cell.count * ctx.system.replicas * 1.1 + ctx.profile.disk_margin
    free = shutil.disk_usage(workdir).free
    if free < need:
        return f"needs {need / 2**30:.1f} GiB of disk, {free / 2**30:.1f} GiB free"
    return None


async def _run_cell(
    ctx: Context, cell: BlobCell, rounds: int, verify: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    key = cell_key(cell)
    short = await asyncio.to_thread(_disk_short, ctx, cell)
    if short is not None:
        ctx.advance(f"push {key}")
        ctx.advance(f"pull {key}")
        return {"skipped": short}, {"skipped": short}
    seconds = ctx.profile.blob_cell_seconds
    specs = cell_specs(cell)
    digests = [digest_of(s) for s in specs]
    sent = [0]

    def count(n: int) -> None:
        sent[0] += n

    meter = CpuMeter(ctx.system.processes())
    async with sessions(ctx, cell.concurrency) as clients:

        async def push_one(i: int) -> int:
            return await pick(clients, i).push_blob(REPO, specs[i], digests[i], count)

        pushed = await drive(cell.concurrency, push_one, len(specs), seconds)
        pushed.moved = sent[0]
        push = pushed.to_json("bytes") | {"size": cell.size}
        ctx.advance(f"push {key}")
        push["settle_s"] = round(await settle_writes(ctx), 3)
        # After the settle: copies written after the acknowledgement count too.
        push |= _efficiency(meter, pushed.moved)
        if pushed.ops == 0:
            ctx.advance(f"pull {key}")
            return push, {"skipped": "nothing was pushed"}
        if verify:
            try:
                await pick(clients, 0).pull_blob(REPO, digests[0], verify=True)
                push["verified_pull"] = True
            except Exception as exc:
                push["verified_pull"] = False
                push["verify_error"] = f"{type(exc).__name__}: {exc}"[:300]
        available = pushed.ops
    pool = RawReaderPool(ctx.urls, cell.concurrency)

    async def pull_one(i: int) -> int:
        return await pool.get(f"/v2/{REPO}/blobs/{digests[i % available]}")

    reads_before = await ctx.system.read_counts()
    meter.reset()
    try:
        pulled = await drive(
            cell.concurrency,
            pull_one,
            available * rounds,
            seconds,
            min_seconds=ctx.profile.pull_min_seconds,
        )
    finally:
        pool.close()
    pulled.moved = pool.received
    pull = pulled.to_json("bytes") | {"size": cell.size} | _efficiency(meter, pulled.moved)
    reads = difference(reads_before, await ctx.system.read_counts())
    if reads:
        pull["chunk_reads"] = reads
    await settle()
    ctx.advance(f"pull {key}")
    return push, pull


def _efficiency(meter: CpuMeter, moved: int) -> dict[str, Any]:
    """The server's CPU for a phase: total, per process, per GB moved."""
    used = meter.used()
    if not used:
        return {}
    total = sum(used.values())
    per_gb = cpu_s_per_gb(total, moved)
    return {
        "server_cpu_s": round(total, 3),
        "server_bytes_moved": moved,
        "server_cpu_s_by_process": {name: round(v, 3) for name, v in used.items()},
        "server_cpu_s_per_GB": round(per_gb, 3) if per_gb is not None else None,
    }
