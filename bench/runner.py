"""One benchmark run: machine, physical bounds, client ceiling, then each system in turn.

Every system is started by the harness, driven through every workload, stopped, and its
data removed before the next one starts, so that they never compete with each other.
A workload that fails is recorded (with its error) and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine, physical
from bench.procstats import peak_rss_mib
from bench.profiles import Profile
from bench.progress import Progress
from bench.systems import (
    Cargohold,
    Distribution,
    SystemUnderTest,
    Trivial,
    make_workdir,
    remove_workdir,
)
from bench.workloads import ALL, blobs, cell_count, manifests
from bench.workloads.common import Context, settle_writes

SYSTEM_NAMES = ("distribution", "cargohold-r1", "cargohold-r3")
# Variants run only when named in --systems: the same cluster with its Raft log unsynced
# (node.raft_fsync = false), to measure what the sync before each acknowledgement costs;
# the 1-node cluster with its gateways' access log off, to measure what the log costs;
# the 3-node cluster with token auth on (the gateways' token service, the client sending
# Bearer tokens like docker; the activity log is on by default), to measure what auth costs.
# The 1- and 3-node clusters with every chunk read over gRPC (no short-circuit local reads,
# gateway/cluster/local_reads.py), to measure what reading the local LMDB gains; and with
# local chunks copied out of the map instead of sent by sendfile (gateway.local_sendfile off),
# to measure what the zero-copy send gains.
VARIANT_NAMES = (
    "cargohold-r3-nofsync",
    "cargohold-r1-noaccesslog",
    "cargohold-r3-auth",
    "cargohold-r1-grpcreads",
    "cargohold-r3-grpcreads",
    "cargohold-r1-copyreads",
    "cargohold-r3-copyreads",
)


@dataclass(frozen=True)
class _Shape:
    """One Cargohold system of the benchmark: its cluster shape and what differs."""

    nodes: int
    label: str
    node_settings: dict[str, object] = field(default_factory=dict)
    gateway_settings: dict[str, object] = field(default_factory=dict)
    auth: bool = False
    local_reads: bool = True

    @property
    def write_quorum(self) -> int:
        return 1 if self.nodes == 1 else 2


_R1, _R3 = "Cargohold 1 node R=1", "Cargohold 3 nodes R=3 W=2"
CARGOHOLD_SHAPES: dict[str, _Shape] = {
    "cargohold-r1": _Shape(1, _R1),
    "cargohold-r3": _Shape(3, _R3),
    "cargohold-r3-nofsync": _Shape(3, f"{_R3}, raft_fsync off", {"raft_fsync": False}),
    "cargohold-r1-noaccesslog": _Shape(
        1, f"{_R1}, access log off", gateway_settings={"access_log": False}
    ),
    "cargohold-r3-auth": _Shape(3, f"{_R3}, token auth", auth=True),
    "cargohold-r1-grpcreads": _Shape(1, f"{_R1}, reads over gRPC only", local_reads=False),
    "cargohold-r3-grpcreads": _Shape(3, f"{_R3}, reads over gRPC only", local_reads=False),
    "cargohold-r1-copyreads": _Shape(
        1, f"{_R1}, local chunks copied (no sendfile)", gateway_settings={"local_sendfile": False}
    ),
    "cargohold-r3-copyreads": _Shape(
        3, f"{_R3}, local chunks copied (no sendfile)", gateway_settings={"local_sendfile": False}
    ),
}


def make_system(name: str, workdir: Path, profile: Profile) -> SystemUnderTest:
    if name == "distribution":
        return Distribution(workdir)
    shape = CARGOHOLD_SHAPES.get(name)
    if shape is None:
        raise ValueError(f"unknown system {name!r}; choose from {SYSTEM_NAMES + VARIANT_NAMES}")
    return Cargohold(
        workdir,
        nodes=shape.nodes,
        replicas_=shape.nodes,
        write_quorum=shape.write_quorum,
        gateways=profile.gateways,
        gateway_workers=profile.gateway_workers,
        name=name,
        label=shape.label
        + (f", {profile.gateway_workers} gateway workers" if profile.gateway_workers > 1 else ""),
        node_settings=dict(shape.node_settings),
        gateway_settings=dict(shape.gateway_settings),
        auth=shape.auth,
        local_reads=shape.local_reads,
    )


async def _run_workloads(
    ctx: Context, names: list[str], on_error: Callable[[str, str], None]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        try:
            await settle_writes(ctx)
            results.update(await ALL[name](ctx))
        except Exception as exc:
            on_error(name, f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
    return results


async def calibrate(profile: Profile, root: Path) -> dict[str, Any]:
    """The client against a registry that does nothing: the client's own ceiling."""
    system = Trivial(make_workdir(root, "trivial"))
    cells = (profile.calibration_blob,)
    conns = tuple(sorted({32, max(profile.manifest_conns)}))
    bar = Progress(2 * len(cells) + 2 * len(conns), "client ceiling")
    ctx = Context(system, profile, bar.advance)
    try:
        await system.start()
        out: dict[str, Any] = {}
        out.update(await blobs.run(ctx, cells=cells, pull_rounds=1, verify=False))
        out.update(await manifests.run(ctx, ops=("head_tag", "get_digest"), conns=conns))
        return out
    finally:
        bar.close()
        await system.stop()
        remove_workdir(system.workdir)


async def bench_system(
    name: str, profile: Profile, root: Path, workloads: list[str]
) -> dict[str, Any]:
    system = make_system(name, make_workdir(root, name), profile)
    errors: dict[str, str] = {}
    record: dict[str, Any] = {
        "label": system.label,
        "copies": system.replicas,  # copies of each pushed byte (bench/report.py's floor)
        "load_average_before": machine.load_average(),
    }
    has_raft = name.startswith("cargohold") and "raft" in workloads
    bar = Progress(cell_count(profile, has_raft), name)
    started = time.perf_counter()
    try:
        await system.start()
        record["startup_s"] = round(time.perf_counter() - started, 2)
        record["urls"] = system.urls
        ctx = Context(system, profile, bar.advance)
        record["results"] = await _run_workloads(
            ctx, workloads, lambda w, e: errors.__setitem__(w, e)
        )
    except Exception as exc:
        errors["start"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
    finally:
        bar.close()
        # High-water marks over the whole run, read while the processes still live.
        record["peak_rss_MiB"] = peak_rss_mib(system.processes())
        try:
            await system.stop()
        finally:
            remove_workdir(system.workdir)
    record["elapsed_s"] = round(time.perf_counter() - started, 1)
    record["load_average_after"] = machine.load_average()
    if errors:
        record["errors"] = errors
    return record


async def run(
    profile: Profile,
    systems: list[str],
    workloads: list[str],
    root: Path,
    skip_calibration: bool = False,
) -> dict[str, Any]:
    started = time.time()
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    info = machine.info()
    await blobs.prepare((*profile.blob_cells, profile.calibration_blob))
    bounds = await asyncio.to_thread(physical.measure, root, profile.physical_bytes)
    result: dict[str, Any] = {
        "profile": profile.name,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": info,
        "physical": bounds,
        "systems": {},
    }
    if not skip_calibration:
        result["client_ceiling"] = await calibrate(profile, root)
    for name in systems:
        result["systems"][name] = await bench_system(name, profile, root, workloads)
    result["elapsed_s"] = round(time.time() - started, 1)
    result["machine"]["load_average_at_end"] = machine.load_average()
    return result
