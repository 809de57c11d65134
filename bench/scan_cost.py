"""What SBOM scanning on push costs (docs/supply-chain.md, issue 14):

    .venv/bin/python -m bench.scan_cost storm [--rounds 2] [--images 60] [--concurrency 8]
    .venv/bin/python -m bench.scan_cost base-image [--image cargohold-base:bookworm]

`storm`: a push storm of small but real images (config + two gzip tar layers: a dpkg
status of 200 packages with os-release, and 64 KiB of unique bytes with a Python
dist-info) into a 3-node dev cluster with one gateway, scanning off (A) and on (B),
interleaved A B B A ... because the machine is shared. Per run: images/s of the storm
itself and, with scanning on, how long the queue took to drain after the last push (every
image's SBOM stored). The load average is recorded before and after each run.

`base-image`: the project's base image copied with skopeo from the Docker engine into a
cluster with scanning on; the scan time is from the end of the push to the scan record's
`done` (`yield_seconds` 0 and a 0.2 s poll here, so that is within 0.2 s of the scan
itself).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import machine
from bench.systems import remove_workdir
from cargohold_cli import admin_sbom
from cargohold_cli.devcluster import LocalCluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=1)


def build_image(i: int, salt: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(config, layers, manifest) of image `i`: unique bytes, real package databases."""
    status = "".join(
        f"Package: pkg{n}\nStatus: install ok installed\nArchitecture: amd64\n"
        f"Source: src{n // 4}\nVersion: 1.{n}-{i}\nDescription: package {n}\n\n"
        for n in range(200)
    ).encode()
    base = _tar({"var/lib/dpkg/status": status, "etc/os-release": b"ID=debian\nVERSION_ID=12\n"})
    app = _tar(
        {
            "app/data.bin": salt + i.to_bytes(8, "big") + os.urandom(64 * 1024),
            f"usr/lib/python3/dist-packages/app{i}-1.0.dist-info/METADATA": (
                f"Name: app{i}\nVersion: 1.0\n".encode()
            ),
        }
    )
    config = json.dumps({"architecture": "amd64", "os": "linux", "i": i}).encode()
    layers = [base, app]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [
                {"mediaType": LAYER_GZIP, "digest": _sha(d), "size": len(d)} for d in layers
            ],
        }
    ).encode()
    return config, layers, manifest


async def _push(session: aiohttp.ClientSession, base: str, repo: str, image: Any) -> str:
    config, layers, manifest = image
    for data in (config, *layers):
        url = f"{base}/v2/{repo}/blobs/uploads/?digest={_sha(data)}"
        async with session.post(url, data=data) as resp:
            assert resp.status == 201, await resp.text()
    async with session.put(
        f"{base}/v2/{repo}/manifests/latest",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Docker-Content-Digest"]


def _cluster(root: Path, scanning: bool, yield_seconds: float = 1.0) -> LocalCluster:
    scanner = {"enabled": scanning, "poll_seconds": 0.2, "yield_seconds": yield_seconds}
    return LocalCluster(root, nodes=3, gateways=1, extra={"scanner": scanner})


def _done_count(cluster: LocalCluster) -> tuple[int, int]:
    records = admin_sbom.list_scans(cluster.node_grpc_addresses, cluster.client_config("admin"))
    return sum(r.state == "done" for r in records), sum(r.state == "failed" for r in records)


async def storm_once(scanning: bool, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    salt = os.urandom(8)
    images = [build_image(i, salt) for i in range(args.images)]
    cluster = _cluster(root / f"{'on' if scanning else 'off'}-{salt.hex()}", scanning)
    record: dict[str, Any] = {"scanning": scanning, "load_before": machine.load_average()}
    try:
        await asyncio.to_thread(cluster.start, 90)
        base = cluster.gateway_url
        gate = asyncio.Semaphore(args.concurrency)
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> None:
                async with gate:
                    await _push(session, base, f"storm/r{i % 10}-{i}", images[i])

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(args.images)))
            elapsed = time.perf_counter() - started
        record["storm_s"] = round(elapsed, 3)
        record["images_per_s"] = round(args.images / elapsed, 2)
        if scanning:
            while True:
                done, failed = await asyncio.to_thread(_done_count, cluster)
                if done + failed >= args.images:
                    break
                await asyncio.sleep(0.2)
            drained = time.perf_counter() - started
            record.update(
                scanned=done,
                scan_failed=failed,
                all_scanned_after_s=round(drained, 2),
                drain_after_storm_s=round(drained - elapsed, 2),
            )
    finally:
        record["load_after"] = machine.load_average()
        await asyncio.to_thread(cluster.stop)
    return record


async def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="scan-cost-"))
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for scanning in order:
                runs.append(await storm_once(scanning, args, root))
                print(f"round {i + 1} scanning={scanning} done", file=sys.stderr)
    finally:
        remove_workdir(root)
    off = [r["images_per_s"] for r in runs if not r["scanning"]]
    on = [r["images_per_s"] for r in runs if r["scanning"]]
    return {
        "mode": "storm",
        "images": args.images,
        "concurrency": args.concurrency,
        "runs": runs,
        "images_per_s_off": off,
        "images_per_s_on": on,
        "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 3),
    }


async def run_base_image(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="scan-base-"))
    cluster = _cluster(root / "cluster", True, yield_seconds=0.0)  # the scan alone
    try:
        await asyncio.to_thread(cluster.start, 90)
        host = cluster.gateway_url.removeprefix("http://")
        load = machine.load_average()
        await asyncio.to_thread(
            subprocess.run,
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"docker-daemon:{args.image}",
                f"docker://{host}/base/image:latest",
            ],
            check=True,
        )
        pushed = time.time()
        cfg = cluster.client_config("admin")
        while True:
            records = await asyncio.to_thread(
                admin_sbom.list_scans, cluster.node_grpc_addresses, cfg, "base/image"
            )
            if records and records[0].state in ("done", "failed"):
                break
            await asyncio.sleep(0.1)
        rec = records[0]
        return {
            "mode": "base-image",
            "image": args.image,
            "state": rec.state,
            "error": rec.error,
            "scan_s_after_push": round(rec.updated_at - pushed, 2),
            "load_before": load,
            "load_after": machine.load_average(),
        }
    finally:
        await asyncio.to_thread(cluster.stop)
        remove_workdir(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scan_cost", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("storm", "base-image"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--image", default="cargohold-base:bookworm")
    parser.add_argument("--out", help="write the JSON result here too")
    args = parser.parse_args(argv)
    run = run_storm(args) if args.mode == "storm" else run_base_image(args)
    text = json.dumps(asyncio.run(run), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
