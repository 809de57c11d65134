"""Blob push at concurrency 1 against concurrency 8 on one cluster (issue 13).

`python -m bench.push_concurrency [--nodes 1|3] [--rounds N] [--gateway-setting k=v ...]`
starts a LocalCluster (R = W = 1, or R=3 W=2 on 3 nodes), then alternates, `--rounds`
times, a phase of `--c1-count` docker-style pushes of `--size-mib` one at a time with a
phase of `--c8-count` pushes 8 at a time. Each phase records MB/s, the CPU-seconds per GB
of every process (/proc, up to the `sync` after it), and every process's peak RSS during
the phase (VmHWM, reset before the phase through /proc/PID/clear_refs). The same cluster
runs both concurrencies in alternation, so a load change on a shared machine hits both.
With `--pull`, every pushed blob is then pulled once, 8 at a time (MB/s and RSS): with
short-circuit local reads the gateway maps its node's LMDB, so its RssFile grows with
what it reads, and with `node.drop_written_pages` those reads go to the disk.

Each phase also gives every process's CPU split into user and kernel time per GB and its
minor page faults (/proc/PID/stat): memory a process touches for the first time, or
again after giving it back, is a fault and a zero-filled page each. `--gap-seconds`
waits that long before every phase (idle between bursts, as between real pushes: a
gateway gives memory back a second after a burst that filled its body budget).

The JSON goes to `--out` (default: stdout only). For an A/B of code, run it once per tree
(PYTHONPATH) in alternation; for an A/B of a setting, `--gateway-setting` /
`--node-setting`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.blobdata import BlobSpec, digest_of
from bench.procstats import CpuMeter, peak_rss_bytes
from bench.profiles import QUICK
from bench.rawhttp import RawReaderPool
from bench.systems import Cargohold
from bench.workloads.common import Context, pick, sessions

MiB = 1024 * 1024


def _reset_peaks(pids: dict[str, int]) -> None:
    """Reset each process's VmHWM to its current RSS (clear_refs 5)."""
    for pid in pids.values():
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def _rss_parts(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of `pid` in bytes (0, 0 when gone)."""
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, file


class _RssSampler:
    """The peak RssAnon and RssFile of each process, sampled every 50 ms in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self.peak = {name: [0, 0] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self._pids.items():
                for k, v in enumerate(_rss_parts(pid)):
                    self.peak[name][k] = max(self.peak[name][k], v)

    def stop(self) -> dict[str, dict[str, int]]:
        self._stop.set()
        self._thread.join()
        return {
            n: {"anon": round(a / MiB), "file": round(f / MiB)} for n, (a, f) in self.peak.items()
        }


def _kernel_counters(pid: int) -> tuple[float, float, int] | None:
    """(user CPU-s, kernel CPU-s, minor faults) of `pid` so far; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks, int(fields[7])


def _counters_used(
    before: dict[str, tuple[float, float, int] | None], pids: dict[str, int], gb: float
) -> dict[str, dict[str, float]]:
    """Per process: user and kernel CPU-s per GB and minor faults since `before`."""
    out: dict[str, dict[str, float]] = {}
    for name, pid in pids.items():
        start, now = before.get(name), _kernel_counters(pid)
        if start is None or now is None:
            continue
        out[name] = {
            "user_s_per_GB": round((now[0] - start[0]) / gb, 2),
            "sys_s_per_GB": round((now[1] - start[1]) / gb, 2),
            "minor_faults": now[2] - start[2],
        }
    return out


def _setting(text: str) -> tuple[str, object]:
    key, _, raw = text.partition("=")
    value: object = raw
    for cast in (int, float):
        try:
            value = cast(raw)
            break
        except ValueError:
            continue
    if raw in ("true", "false"):
        value = raw == "true"
    return key, value


async def _phase(
    system: Cargohold,
    ctx: Context,
    specs: list[BlobSpec],
    digests: list[str],
    conc: int,
    gap: float = 0.0,
) -> dict[str, Any]:
    pids = system.processes()
    await asyncio.sleep(gap)
    await asyncio.to_thread(os.sync)
    _reset_peaks(pids)
    load = machine.load_average()
    meter = CpuMeter(pids)
    counters = {name: _kernel_counters(pid) for name, pid in pids.items()}
    sampler = _RssSampler(pids)
    async with sessions(ctx, conc) as clients:
        sem = asyncio.Semaphore(conc)

        async def push(i: int) -> None:
            async with sem:
                await pick(clients, i).push_blob("bench/pushconc", specs[i], digests[i])

        started = time.perf_counter()
        await asyncio.gather(*(push(i) for i in range(len(specs))))
        elapsed = time.perf_counter() - started
    await asyncio.to_thread(os.sync)
    used = meter.used()
    rss = sampler.stop()
    moved = sum(s.size for s in specs)
    gb = moved / 1e9
    return {
        "concurrency": conc,
        "blobs": len(specs),
        "MB_per_s": round(moved / elapsed / 1e6, 1),
        "cpu_s_per_GB": {p: round(v / gb, 2) for p, v in used.items()},
        "cpu_s_per_GB_total": round(sum(used.values()) / gb, 2),
        "kernel_counters": _counters_used(counters, pids, gb),
        "peak_rss_MiB": {p: round((peak_rss_bytes(pid) or 0) / MiB) for p, pid in pids.items()},
        "peak_rss_sampled_MiB": rss,
        "load_before": load,
        "pids": pids,
    }


async def _pull_phase(system: Cargohold, digests: list[str], size: int) -> dict[str, Any]:
    """Every pushed blob pulled once, 8 at a time: the memory a pull adds (with local
    reads the gateway maps its node's LMDB, so its RssFile grows with what it reads)."""
    pids = system.processes()
    sampler = _RssSampler(pids)
    pool = RawReaderPool(system.urls[:1], 8)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(pool.get(f"/v2/bench/pushconc/blobs/{d}") for d in digests))
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    return {
        "phase": "pull",
        "blobs": len(digests),
        "MB_per_s": round(size * len(digests) / elapsed / 1e6, 1),
        "peak_rss_MiB": {p: round((peak_rss_bytes(pid) or 0) / MiB) for p, pid in pids.items()},
        "peak_rss_sampled_MiB": sampler.stop(),
    }


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    system = Cargohold(
        workdir,
        nodes=args.nodes,
        replicas_=args.nodes,
        write_quorum=min(2, args.nodes),
        gateway_settings=dict(_setting(s) for s in args.gateway_setting),
        node_settings=dict(_setting(s) for s in args.node_setting),
    )
    await system.start()
    try:
        ctx = Context(system, QUICK)
        size = args.size_mib * MiB
        need = 1 + args.rounds * (args.c1_count + args.c8_count)
        specs = [BlobSpec.unique(args.seed + i, size) for i in range(need)]
        digests = list(await asyncio.gather(*(asyncio.to_thread(digest_of, s) for s in specs)))
        async with sessions(ctx, 1) as clients:  # warm-up: channels and thread pools exist
            await pick(clients, 0).push_blob("bench/pushconc", specs[0], digests[0])
        phases: list[dict[str, Any]] = []
        at = 1
        for _ in range(args.rounds):
            for conc, count in ((1, args.c1_count), (8, args.c8_count)):
                take = slice(at, at + count)
                at += count
                phase = await _phase(
                    system, ctx, specs[take], digests[take], conc, args.gap_seconds
                )
                print(json.dumps(phase), flush=True)
                phases.append(phase)
        if args.pull:
            phases.append(await _pull_phase(system, digests[1:at], size))
            print(json.dumps(phases[-1]), flush=True)
        return {
            "nodes": args.nodes,
            "size_mib": args.size_mib,
            "gap_seconds": args.gap_seconds,
            "gateway_settings": args.gateway_setting,
            "node_settings": args.node_setting,
            "label": args.label,
            "cores": os.cpu_count(),
            "phases": phases,
            "load_after": machine.load_average(),
        }
    finally:
        await system.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--c1-count", type=int, default=3)
    parser.add_argument("--c8-count", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap-seconds", type=float, default=0.0, help="idle before each phase")
    parser.add_argument("--seed", type=int, default=int(time.time()) & 0xFFFFFF)
    parser.add_argument("--gateway-setting", action="append", default=[])
    parser.add_argument("--node-setting", action="append", default=[])
    parser.add_argument("--label", default="")
    parser.add_argument("--pull", action="store_true", help="then pull every blob once")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-pushconc-") as tmp:
        res = uvloop.run(run(args, Path(tmp)))
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
