"""A power cut of every node at once loses nothing acknowledged (issue 21).

Each node's data directory is its own ext4 filesystem on a loop device. Eight clients push
small manifests through a gateway for a few seconds; then every process is SIGKILLed and
each loop device is copied at once with O_DIRECT reads. The copy holds what reached the
virtual disk: the file data the kernel still held dirty in its page cache (unsynced
writes) is not in it, exactly what a power cut discards. The cluster restarts on the
copies and every acknowledged manifest must pull byte-exact by its tag.

`CARGOHOLD_POWERCUT_CYCLES` cycles (default 2; the issue asks for 10). Needs root, losetup
and mkfs.ext4; skipped visibly elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import CONFIG_TYPE, MANIFEST_TYPE, sha256
from cluster.summary import env_int

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

CYCLES_ENV = "CARGOHOLD_POWERCUT_CYCLES"
STORM_SECONDS = float(os.environ.get("CARGOHOLD_POWERCUT_SECONDS", "3"))
CLIENTS = 8
IMAGE_MB = 128
REPO = "powercut/app"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mount)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount", "dd"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


class Disks:
    """One loop-mounted ext4 image per node data directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.mounts: list[tuple[str, Path]] = []  # (loop device, mount point)

    def attach(self, image: Path, mount_point: Path) -> None:
        mount_point.mkdir(parents=True, exist_ok=True)
        dev = _run("losetup", "-f", "--show", str(image))
        try:
            _run("mount", "-t", "ext4", dev, str(mount_point))
        except subprocess.CalledProcessError:
            _run("losetup", "-d", dev)
            raise
        self.mounts.append((dev, mount_point))

    def format_and_attach(self, image: Path, mount_point: Path) -> None:
        with open(image, "wb") as f:
            f.truncate(IMAGE_MB * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", str(image))
        self.attach(image, mount_point)

    def cut(self, copies: list[Path]) -> None:
        """Copy every device at once, bypassing the page cache (O_DIRECT)."""
        procs = [
            subprocess.Popen(
                ["dd", f"if={dev}", f"of={copy}", "bs=4M", "iflag=direct", "status=none"]
            )
            for (dev, _), copy in zip(self.mounts, copies, strict=True)
        ]
        for proc in procs:
            assert proc.wait(timeout=120) == 0

    def detach_all(self) -> None:
        for dev, mount_point in reversed(self.mounts):
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("umount", "-l", str(mount_point))
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("losetup", "-d", dev)
        self.mounts.clear()


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    reason = _usable()
    if reason:
        pytest.skip(reason)
    d = Disks(tmp_path)
    try:
        yield d
    finally:
        d.detach_all()


def _manifest(config: bytes, n: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
            "layers": [],
            "annotations": {"n": n},
        },
        separators=(",", ":"),
    ).encode()


async def _storm(base: str, seconds: float) -> dict[str, bytes]:
    """CLIENTS concurrent pushers of small manifests; returns tag -> body acknowledged."""
    acked: dict[str, bytes] = {}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(
            f"{base}/v2/{REPO}/blobs/uploads/?digest={sha256(config)}", data=config
        ) as resp:
            assert resp.status == 201, await resp.text()
        stop = time.monotonic() + seconds

        async def pusher(w: int) -> None:
            i = 0
            while time.monotonic() < stop:
                tag = f"w{w}-{i}"
                body = _manifest(config, tag)
                i += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.put(
                        f"{base}/v2/{REPO}/manifests/{tag}",
                        data=body,
                        headers={"Content-Type": MANIFEST_TYPE},
                    ) as resp:
                        await resp.read()
                        if resp.status == 201:
                            acked[tag] = body

        await asyncio.gather(*(pusher(w) for w in range(CLIENTS)))
    return acked


async def _lost(base: str, acked: dict[str, bytes]) -> list[str]:
    lost: list[str] = []
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def check(tag: str, body: bytes) -> None:
            async with sem:
                for attempt in range(20):
                    async with session.get(
                        f"{base}/v2/{REPO}/manifests/{tag}", headers={"Accept": MANIFEST_TYPE}
                    ) as resp:
                        got = await resp.read()
                        if resp.status in (502, 503, 504) and attempt < 19:
                            await asyncio.sleep(0.5)
                            continue
                        if resp.status != 200 or got != body:
                            lost.append(tag)
                        return

        await asyncio.gather(*(check(t, b) for t, b in acked.items()))
    return lost


def _one_cycle(
    make_cluster: Callable[..., LocalCluster], disks: Disks, work: Path, cycle: int
) -> tuple[int, list[str]]:
    cluster = make_cluster(start=False, nodes=3, gateways=1)
    images = [work / f"c{cycle}-n{i}.img" for i in range(cluster.node_count)]
    for i, image in enumerate(images):
        disks.format_and_attach(image, cluster.node_data_dir(i))
    cluster.start(timeout=90)
    acked = asyncio.run(_storm(cluster.gateway_url, STORM_SECONDS))
    assert acked, "the storm acknowledged nothing"
    # The cut: every process at once, then every disk as it is.
    for proc in [*cluster.gateway_procs, *cluster.node_procs]:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    copies = [work / f"c{cycle}-n{i}.cut.img" for i in range(cluster.node_count)]
    disks.cut(copies)
    cluster.kill_all()  # reap
    disks.detach_all()
    for image in images:
        image.unlink()
    for i, copy in enumerate(copies):
        disks.attach(copy, cluster.node_data_dir(i))
    cluster.start(timeout=90)
    lost = asyncio.run(_lost(cluster.gateway_url, acked))
    cluster.kill_all()
    disks.detach_all()
    for copy in copies:
        copy.unlink()
    return len(acked), lost


def test_power_cut_of_every_node_loses_nothing_acknowledged(
    make_cluster: Callable[..., LocalCluster], disks: Disks, tmp_path: Path
) -> None:
    cycles = env_int(CYCLES_ENV, 2)
    results = []
    for cycle in range(cycles):
        acked, lost = _one_cycle(make_cluster, disks, tmp_path, cycle)
        results.append((acked, len(lost)))
        print(f"power cut cycle {cycle}: acknowledged={acked} lost={len(lost)}")
    assert all(lost == 0 for _, lost in results), f"(acknowledged, lost) per cycle: {results}"
