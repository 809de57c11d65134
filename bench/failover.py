"""Leader failover time: seconds from a SIGKILL of the Raft leader until a manifest PUT
succeeds again, on a real LocalCluster.

    .venv/bin/python -m bench.failover                       # 3 nodes, 2 gateways, 5 kills
    .venv/bin/python -m bench.failover --nodes 5 --kills 10 --out bench/results/failover.json

`FailoverProbe` commits a tiny manifest (one pre-pushed config blob, a new tag each time)
in a tight loop through the gateways, switching gateway after a failure, and records when
each PUT was sent and when its 201 arrived. The failover time of one kill is from the
SIGKILL until the first 201 for a PUT *sent after* the kill (a PUT in flight at the kill
may have committed just before it). Each kill is followed by restarting the old leader
and waiting until the cluster is ready again. The chaos suite (tests/cluster/test_chaos.py)
uses the same probe.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from cargohold_cli.devcluster import LocalCluster

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_CONFIG = b'{"probe":true}'
_CONFIG_DIGEST = "sha256:" + hashlib.sha256(_CONFIG).hexdigest()


def _manifest(tag: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _CONFIG_DIGEST, "size": len(_CONFIG)},
            "layers": [],
            "annotations": {"probe": tag},
        }
    ).encode()


class FailoverProbe:
    """Manifest PUTs in a tight loop (background thread); see the module docstring."""

    def __init__(
        self, gateway_urls: list[str], repo: str = "failover/probe", timeout: float = 30.0
    ) -> None:
        self.gateway_urls = list(gateway_urls)
        self.repo = repo
        self.timeout = timeout
        self.ok: list[tuple[float, float]] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def start(self) -> FailoverProbe:
        self._thread = threading.Thread(target=self._main, name="failover-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> FailoverProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.ok)

    def wait_running(self, successes: int = 5, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < successes:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe made {self.count()} PUTs in {timeout}s")
            time.sleep(0.02)

    def recovery_after(self, t: float) -> float | None:
        """Seconds from `t` until the first 201 of a PUT sent at or after `t`."""
        with self._lock:
            times = [done for sent, done in self.ok if sent >= t]
        return min(times) - t if times else None

    def wait_recovered(self, t: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            took = self.recovery_after(t)
            if took is not None:
                return took
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no manifest PUT succeeded within {timeout}s of the fault")
            time.sleep(0.02)

    def _check_alive(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError(f"failover probe died: {self._error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by stop()/wait_*()
            self._error = exc

    async def _put(
        self, session: aiohttp.ClientSession, method: str, url: str, body: bytes, content_type: str
    ) -> int:
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            return 0

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            gateway = 0
            while True:
                base = self.gateway_urls[gateway]
                status = await self._put(
                    session,
                    "POST",
                    f"{base}/v2/{self.repo}/blobs/uploads/?digest={_CONFIG_DIGEST}",
                    _CONFIG,
                    "application/octet-stream",
                )
                if status == 201:
                    break
                if self._stop.is_set():
                    return
                gateway = (gateway + 1) % len(self.gateway_urls)
                await asyncio.sleep(0.1)
            n = 0
            while not self._stop.is_set():
                n += 1
                tag = f"p{n}"
                base = self.gateway_urls[gateway]
                sent = time.monotonic()
                status = await self._put(
                    session,
                    "PUT",
                    f"{base}/v2/{self.repo}/manifests/{tag}",
                    _manifest(tag),
                    MANIFEST_TYPE,
                )
                if status != 201:
                    self.failed += 1
                    gateway = (gateway + 1) % len(self.gateway_urls)
                    await asyncio.sleep(0.01)
                    continue
                with self._lock:
                    self.ok.append((sent, time.monotonic()))


def measure(cluster: LocalCluster, kills: int) -> dict[str, Any]:
    """Kill the leader `kills` times under the probe; the failover seconds of each."""
    times: list[float] = []
    with FailoverProbe(cluster.gateway_urls) as probe:
        probe.wait_running()
        for _ in range(kills):
            leader = cluster.leader_index()
            if leader is None:
                cluster.wait_ready(60)
                leader = cluster.leader_index()
            assert leader is not None
            killed_at = time.monotonic()
            cluster.kill_node(leader)
            times.append(round(probe.wait_recovered(killed_at), 3))
            cluster.start_node(leader)
            cluster.wait_ready(60)
            probe.wait_running(probe.count() + 5)
        failed = probe.failed
    return {
        "nodes": cluster.node_count,
        "gateways": cluster.gateway_count,
        "kills": kills,
        "failover_seconds": times,
        "median_seconds": round(statistics.median(times), 3) if times else None,
        "max_seconds": max(times) if times else None,
        "probe_puts_failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cargohold-failover-") as tmp:
        cluster = LocalCluster(tmp, nodes=args.nodes, gateways=args.gateways)
        try:
            cluster.start(timeout=90)
            result = measure(cluster, args.kills)
        finally:
            cluster.kill_all()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
