"""Where a gateway spends its time under push and pull: cProfile of a real gateway process.

`python -m bench.profile_gateway [--nodes 1|3] [--size-mib 64] [--count 8]` starts a
LocalCluster, replaces its gateway by the same gateway run under `python -m cProfile`,
pushes `count` blobs of `size` (4 at a time), pulls them twice, does a burst of manifest
reads, stops the gateway with SIGTERM (it exits cleanly, so cProfile writes its file) and
prints the top functions by own time and by cumulative time: the text goes to
`bench/results/profile-gateway-<nodes>n.txt`, the raw profile to `bench/results/tmp/`.
Only the gateway's event-loop thread is profiled (work sent to threads, e.g. hashing,
shows up as the waits on it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.blobdata import BlobSpec, digest_of
from bench.driver import drive
from bench.images import Image, push_image
from bench.profiles import QUICK
from bench.systems import _wait_http
from bench.workloads.common import Context, pick, sessions
from bench.workloads.manifests import _read_cell
from cargohold_cli.devcluster import LocalCluster, signal_process

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


class _Fixed:
    """A SystemUnderTest stand-in pointing at one URL (only `urls` is used here)."""

    def __init__(self, url: str) -> None:
        self.urls = [url]
        self.grpc_addresses: list[str] = []
        self.replicas = 1
        self.name = self.label = "profiled"

    def processes(self) -> dict[str, int]:
        return {}


async def _load(url: str, size: int, count: int) -> dict[str, Any]:
    ctx = Context(_Fixed(url), QUICK)  # type: ignore[arg-type]
    specs = [BlobSpec.unique(0xB0B0 + i, size) for i in range(count)]
    digests = await asyncio.gather(*(asyncio.to_thread(digest_of, s) for s in specs))
    out: dict[str, Any] = {}
    async with sessions(ctx, 4) as clients:

        async def push(i: int) -> int:
            return await pick(clients, i).push_blob("profile/blobs", specs[i], digests[i])

        async def pull(i: int) -> int:
            return await pick(clients, i).pull_blob("profile/blobs", digests[i % count])

        out["push"] = (await drive(4, push, count, 600)).to_json("bytes")
        out["pull"] = (await drive(4, pull, 2 * count, 600)).to_json("bytes")
        image = await asyncio.to_thread(Image.build, "profile", [BlobSpec.unique(7, 4096)])
        await push_image(clients[0], "bench/manifests", "v1", image)
    out["get_digest"] = await _read_cell(ctx, "get_digest", image.digest, 32)
    out["head_tag"] = await _read_cell(ctx, "head_tag", "v1", 32)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile-gateway-{args.nodes}n"
    raw = args.out / "tmp" / f"profile-gateway-{args.nodes}n.prof"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        cluster = LocalCluster(
            Path(tmp) / "cluster",
            nodes=args.nodes,
            gateways=1,
            replicas=args.nodes,
            write_quorum=min(2, args.nodes),
        )
        proc: subprocess.Popen[bytes] | None = None
        try:
            cluster.start(timeout=90)
            cluster.kill_gateway(0, 15)
            log = Path(tmp) / "profiled-gateway.log"
            with open(log, "ab") as log_file:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cProfile",
                        "-o",
                        str(raw),
                        "-m",
                        "cargohold_cli",
                        "gateway",
                        "--config",
                        str(cluster.gateway_config_path(0)),
                    ],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            _wait_http(f"{cluster.gateway_url}/v2/", proc, 60, log)
            started = time.perf_counter()
            import uvloop

            load = uvloop.run(_load(cluster.gateway_url, args.size_mib * MiB, args.count))
            elapsed = time.perf_counter() - started
        finally:
            signal_process(proc)
            cluster.stop()
    buf = io.StringIO()
    stats = pstats.Stats(str(raw), stream=buf)
    buf.write(
        f"load ({elapsed:.1f} s): "
        + ", ".join(f"{k}: {v.get('MB_per_s', v.get('ops_per_s'))}" for k, v in load.items())
        + "\n"
    )
    stats.strip_dirs().sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    Path(f"{stem}.txt").write_text(buf.getvalue())
    print(buf.getvalue())
    print(f"{raw}\n{stem}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
