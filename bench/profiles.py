"""The two run sizes, `quick` (under 3 minutes in all) and `full`, as plain data.

Every workload reads its sizes, counts, connection counts and time bounds from here, so
no limit is hard-coded in a workload. Counts bound the work; `*_seconds` bound the time of
one measurement cell (a cell that hits its bound is marked `timed_out` in the results).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class BlobCell:
    size: int
    concurrency: int
    count: int  # blobs pushed (and then pulled `pull_rounds` times each)


@dataclass(frozen=True)
class Profile:
    name: str
    blob_cells: tuple[BlobCell, ...]
    pull_rounds: int
    blob_cell_seconds: float
    manifest_conns: tuple[int, ...]
    manifest_seconds: float
    manifest_max_requests: int
    storm_clients: int
    storm_layers: int
    storm_layer_size: int
    storm_seconds: float
    push_storm_images: int
    push_storm_concurrency: int
    push_storm_layer_size: int
    push_storm_seconds: float
    tag_put_conns: tuple[int, ...]
    tag_put_seconds: float
    tag_put_max: int
    raft_inflight: tuple[int, ...]
    raft_seconds: float
    raft_max: int
    dedup_images: int
    dedup_unit: int  # base layers and shared prefixes are multiples of this (chunk size)
    calibration_blob: BlobCell
    physical_bytes: int
    gateways: int
    # A blob cell is skipped (and says so) unless its data, every replica, fits on the disk
    # with this much to spare: the machine may be shared.
    disk_margin: int = 8 * GiB
    # Worker processes per Cargohold gateway (`gateway.workers`, gateway/workers.py).
    gateway_workers: int = 1
    # A blob pull cell goes on past its `pull_rounds` until it has lasted this long: a
    # large blob pulled at a few GB/s is over in a fraction of a second otherwise, and a
    # single hiccup then moves the cell's rate by tens of percent (bench/README.md).
    pull_min_seconds: float = 0.0


QUICK = Profile(
    name="quick",
    blob_cells=(
        BlobCell(1 * MiB, 1, 16),
        BlobCell(1 * MiB, 8, 48),
        BlobCell(64 * MiB, 1, 2),
        BlobCell(64 * MiB, 8, 8),
    ),
    pull_rounds=2,
    blob_cell_seconds=20.0,
    manifest_conns=(1, 32),
    manifest_seconds=0.8,
    manifest_max_requests=20_000,
    storm_clients=50,
    storm_layers=4,
    storm_layer_size=2 * MiB,
    storm_seconds=30.0,
    push_storm_images=160,
    push_storm_concurrency=8,
    push_storm_layer_size=16 * 1024,
    push_storm_seconds=20.0,
    tag_put_conns=(1, 16),
    tag_put_seconds=0.8,
    tag_put_max=2_000,
    raft_inflight=(1, 64),
    raft_seconds=0.8,
    raft_max=20_000,
    dedup_images=4,
    dedup_unit=4 * MiB,
    calibration_blob=BlobCell(64 * MiB, 8, 8),
    physical_bytes=512 * MiB,
    gateways=1,
    pull_min_seconds=2.0,
)

FULL = Profile(
    name="full",
    blob_cells=(
        BlobCell(1 * MiB, 1, 100),
        BlobCell(1 * MiB, 8, 400),
        BlobCell(64 * MiB, 1, 6),
        BlobCell(64 * MiB, 8, 24),
        BlobCell(1 * GiB, 1, 1),
        BlobCell(1 * GiB, 8, 8),
    ),
    pull_rounds=2,
    blob_cell_seconds=420.0,
    manifest_conns=(1, 8, 32, 64),
    manifest_seconds=4.0,
    manifest_max_requests=200_000,
    storm_clients=50,
    storm_layers=5,
    storm_layer_size=16 * MiB,
    storm_seconds=180.0,
    push_storm_images=1600,
    push_storm_concurrency=16,
    push_storm_layer_size=32 * 1024,
    push_storm_seconds=120.0,
    tag_put_conns=(1, 16, 64),
    tag_put_seconds=4.0,
    tag_put_max=50_000,
    raft_inflight=(1, 16, 64),
    raft_seconds=4.0,
    raft_max=200_000,
    dedup_images=8,
    dedup_unit=4 * MiB,
    calibration_blob=BlobCell(64 * MiB, 8, 24),
    physical_bytes=2 * GiB,
    gateways=1,
    pull_min_seconds=3.0,
)

# A few seconds per system: for the harness's own tests, not for numbers.
SMOKE = Profile(
    name="smoke",
    blob_cells=(BlobCell(1 * MiB, 1, 2), BlobCell(1 * MiB, 2, 4)),
    pull_rounds=1,
    blob_cell_seconds=10.0,
    manifest_conns=(2,),
    manifest_seconds=0.2,
    manifest_max_requests=200,
    storm_clients=4,
    storm_layers=2,
    storm_layer_size=256 * 1024,
    storm_seconds=10.0,
    push_storm_images=4,
    push_storm_concurrency=2,
    push_storm_layer_size=16 * 1024,
    push_storm_seconds=10.0,
    tag_put_conns=(2,),
    tag_put_seconds=0.2,
    tag_put_max=50,
    raft_inflight=(2,),
    raft_seconds=0.2,
    raft_max=50,
    dedup_images=2,
    dedup_unit=1 * MiB,
    calibration_blob=BlobCell(1 * MiB, 2, 4),
    physical_bytes=16 * MiB,
    gateways=1,
)

# The cost of the Raft log sync (issue 21): run with
# `--systems cargohold-r3,cargohold-r3-nofsync --workloads blobs,tag_puts,raft`.
# Manifest (tag) pushes and Raft commands at 1 and 32 in flight, and blob pushes.
DURABILITY = replace(
    QUICK,
    name="durability",
    blob_cells=(BlobCell(1 * MiB, 8, 48), BlobCell(64 * MiB, 8, 8)),
    pull_rounds=1,
    tag_put_conns=(1, 32),
    tag_put_seconds=5.0,
    tag_put_max=20_000,
    raft_inflight=(1, 32),
    raft_seconds=3.0,
)

PROFILES = {"quick": QUICK, "full": FULL, "smoke": SMOKE, "durability": DURABILITY}
