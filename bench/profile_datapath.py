"""Where a pushed and a pulled byte spend their CPU, across every process of a cluster.

`python -m bench.profile_datapath [--nodes 1|3] [--grpc-reads] [--perf]` starts a
LocalCluster (a gateway reading its node's LMDB directly unless `--grpc-reads`), pushes
`--count` blobs of `--size-mib` (`--concurrency` at a time, docker-style), then pulls each
twice, and reports for each phase:

- the CPU-seconds per GB of each process (gateway, nodes) from /proc
  (bench/procstats.py): which process pays;
- with `--threads`, the busiest threads of each process (share of the phase's wall time
  each was on a CPU; "main" is the process's event loop): a thread near 100 % is the
  phase's serial bound, whatever the other core does;
- with `--perf` (root, `perf` installed), a system-wide `perf record` (no call graphs,
  499 Hz) filtered to the cluster's processes, its samples grouped by what the CPU was
  doing (percent of those processes' samples): sha256, xxh3, user-space memcpy, kernel
  copies, kernel networking, kernel filesystem/fsync, gRPC's C core, LMDB, the Python
  interpreter (Python code and object work, including aiohttp's), and the rest.

Warm-up: one push and pull before the measured phases, so thread pools and channels
exist. The Markdown goes to `bench/results/profile-datapath-<nodes>n-<local|grpc>.md`.
On a shared machine the per-GB figures are what to compare (time rates are not).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.blobdata import BlobSpec, digest_of
from bench.procstats import CpuMeter, busy_threads, thread_cpu_seconds
from bench.profiles import QUICK
from bench.rawhttp import RawReaderPool
from bench.systems import Cargohold
from bench.workloads.common import Context, pick, sessions

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024

# (category, pattern on "dso symbol"), first match wins; order matters.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    # hashlib's sha256 runs in OpenSSL's libcrypto (often without symbols); nothing else
    # here uses it (no TLS in this profile).
    ("sha256 (libcrypto)", re.compile(r"sha256|libcrypto", re.I)),
    ("xxh3", re.compile(r"xxh|XXH", re.I)),
    ("LMDB", re.compile(r"\bmdb_|lmdb|cpython-311-x86_64-linux-gnu.so mdb", re.I)),
    ("gRPC C core", re.compile(r"cygrpc|grpc", re.I)),
    ("memcpy (user)", re.compile(r"^(?!\[kernel).*\b(__)?mem(cpy|move)", re.I)),
    # write() into the page cache (LMDB's pwrite of a chunk's pages; writemap is off).
    ("kernel copy into page cache", re.compile(r"^\[kernel.*copy_folio_from_iter")),
    # socket send/receive copies (loopback: one on each side) and other user copies.
    (
        "kernel copy (sockets, reads)",
        re.compile(r"^\[kernel.*(copy_user|copy_page|_copy_(to|from)_iter|rep_mov)"),
    ),
    (
        "kernel network",
        re.compile(r"^\[kernel.*\b(tcp|ip_|skb|sock|__dev|loopback|net_|__netif|inet)"),
    ),
    (
        "kernel fs / fsync / page cache",
        re.compile(
            r"^\[kernel.*\b(ext4|jbd2|filemap|page_cache|iomap|blk|fsync|writeback|folio|"
            r"mpage|bio_|submit_bio|__block|nvme|virtio_blk|find_get)"
        ),
    ),
    (
        "kernel memory / faults",
        re.compile(
            r"^\[kernel.*\b(page_fault|clear_page|mm_|alloc_pages|"
            r"__alloc|free_page|do_anonymous|handle_mm|lru)"
        ),
    ),
    ("kernel other", re.compile(r"^\[kernel")),
    ("Python interpreter", re.compile(r"python3|libpython|\.cpython-|_PyEval|Py", re.I)),
    ("libc other", re.compile(r"libc\.so|libc-")),
]


def categorise(rows: list[tuple[float, str, str]]) -> dict[str, float]:
    """Percent of samples per category from (percent, dso, symbol) rows."""
    out: dict[str, float] = collections.defaultdict(float)
    for pct, dso, sym in rows:
        key = f"{dso} {sym}"
        for name, pattern in CATEGORIES:
            if pattern.search(key):
                out[name] += pct
                break
        else:
            out["other"] += pct
    return dict(out)


def perf_rows(data: Path, pids: list[int]) -> list[tuple[float, str, str]]:
    """(percent, dso, symbol) of `perf report` restricted to `pids`."""
    text = subprocess.run(
        [
            "perf", "report", "-i", str(data), "--stdio", "--no-children",
            "--sort", "dso,sym", "--pid", ",".join(str(p) for p in pids),
            "--percentage", "relative", "--percent-limit", "0.01",
        ],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[[.kgu]\]\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    return rows


class PerfRecorder:
    """`perf record -a` for one phase (filtered to the cluster's processes afterwards)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["perf", "record", "-a", "-F", "499", "-o", str(out), "--", "sleep", "3600"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    system = Cargohold(
        workdir,
        nodes=args.nodes,
        replicas_=args.nodes,
        write_quorum=min(2, args.nodes),
        local_reads=not args.grpc_reads,
    )
    await system.start()
    try:
        return await _measure(system, args, workdir)
    finally:
        await system.stop()


async def _measure(system: Cargohold, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ctx = Context(system, QUICK)
    size = args.size_mib * MiB
    specs = [BlobSpec.unique(0xDA7A + i, size) for i in range(args.count + 1)]
    digests = await asyncio.gather(*(asyncio.to_thread(digest_of, s) for s in specs))
    url = system.urls[0]
    repo = "profile/datapath"
    out: dict[str, Any] = {"load_before": machine.load_average()}
    async with sessions(ctx, args.concurrency) as clients:
        await pick(clients, 0).push_blob(repo, specs[-1], digests[-1])  # warm-up
        await pick(clients, 0).pull_blob(repo, digests[-1])
        sem = asyncio.Semaphore(args.concurrency)

        async def push(i: int) -> None:
            async with sem:
                await pick(clients, i).push_blob(repo, specs[i], digests[i])

        out["push"] = await _phase(
            system, args, workdir, "push", size * args.count,
            lambda: asyncio.gather(*(push(i) for i in range(args.count))),
        )  # fmt: skip
    pool = RawReaderPool([url], args.concurrency)

    async def pull(i: int) -> None:
        await pool.get(f"/v2/{repo}/blobs/{digests[i % args.count]}")

    try:
        out["pull"] = await _phase(
            system, args, workdir, "pull", 2 * size * args.count,
            lambda: asyncio.gather(*(pull(i) for i in range(2 * args.count))),
        )  # fmt: skip
    finally:
        pool.close()
    out["load_after"] = machine.load_average()
    return out


async def _phase(
    system: Cargohold, args: argparse.Namespace, workdir: Path, name: str, moved: int, work: Any
) -> dict[str, Any]:
    processes = system.processes()
    # With --threads, every thread of the cluster's processes and of this client.
    threads_of = {**processes, "client": os.getpid()} if args.threads else {}
    recorder = PerfRecorder(workdir / f"{name}.perf") if args.perf else None
    meter = CpuMeter(processes)
    threads_before = {p: thread_cpu_seconds(pid) for p, pid in threads_of.items()}
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    threads = busy_threads(threads_of, threads_before, elapsed)
    if name == "push":
        await asyncio.to_thread(os.sync)  # copies after the acknowledgement count too
    used = meter.used()
    if recorder is not None:
        recorder.stop()
    gb = moved / 1e9
    result: dict[str, Any] = {
        "MB_per_s": round(moved / elapsed / 1e6, 1),
        "cpu_s_per_GB": {p: round(v / gb, 3) for p, v in used.items()},
        "cpu_s_per_GB_total": round(sum(used.values()) / gb, 3),
    }
    if args.threads:
        result["threads"] = threads
    if recorder is not None:
        rows = await asyncio.to_thread(perf_rows, recorder.out, list(processes.values()))
        result["perf_percent"] = {
            k: round(v, 1) for k, v in sorted(categorise(rows).items(), key=lambda kv: -kv[1])
        }
        result["perf_top"] = [f"{p:.1f}% {d} {s}" for p, d, s in rows[:15]]
    return result


def markdown(args: argparse.Namespace, res: dict[str, Any]) -> str:
    path = "gRPC only" if args.grpc_reads else "local LMDB reads"
    lines = [
        f"# Data path profile: {args.nodes} node(s), {path}",
        "",
        f"{args.count} x {args.size_mib} MiB blobs, {args.concurrency} at a time; pulled "
        f"twice. Load average {res['load_before']} → {res['load_after']} "
        f"({os.cpu_count()} cores, shared: rates indicative, per-GB figures comparable).",
        "",
    ]
    for phase in ("push", "pull"):
        r = res[phase]
        lines += [
            f"## {phase}: {r['MB_per_s']} MB/s, {r['cpu_s_per_GB_total']} CPU-s per GB",
            "",
            "| process | CPU-s per GB |",
            "|---|---|",
            *(f"| {p} | {v} |" for p, v in r["cpu_s_per_GB"].items()),
            "",
        ]
        if "threads" in r:
            lines += [
                "| process | thread | on a CPU, % of the phase |",
                "|---|---|---|",
                *(f"| {p} | {t} | {v} |" for p, t, v in r["threads"]),
                "",
            ]
        if "perf_percent" in r:
            lines += [
                "| what the CPU did (perf samples of these processes) | % |",
                "|---|---|",
                *(f"| {k} | {v} |" for k, v in r["perf_percent"].items()),
                "",
                "Top symbols:",
                "",
                "```",
                *r["perf_top"],
                "```",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--grpc-reads", action="store_true", help="no short-circuit reads")
    parser.add_argument("--perf", action="store_true", help="perf record each phase (root)")
    parser.add_argument("--threads", action="store_true", help="report the busiest threads")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        res = uvloop.run(run(args, Path(tmp)))
    text = markdown(args, res)
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "grpc" if args.grpc_reads else "local"
    path = args.out / f"profile-datapath-{args.nodes}n-{mode}.md"
    path.write_text(text)
    print(text)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
