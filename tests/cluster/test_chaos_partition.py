"""A network partition: the Raft leader cut off from its peers while gateways still reach it.

Nodes run in network namespaces (tests/cluster/netns.py), gateways in the root namespace.
`partition(i)` drops what node i forwards to or receives from the other nodes, but not the
gateways' traffic: the old leader keeps answering gRPC, it is the node gateways prefer for
metadata, and its local state goes stale. While it is cut off, with clients pushing and
pulling:

- a tag is moved (new manifest PUT by tag) through a gateway: it must succeed on the
  majority side;
- every read of that tag through every gateway answers the NEW digest or a retryable
  error, never the old one (invariant 2);
- on the isolated node itself a linearizable query fails (its Raft barrier cannot commit)
  while a local read still shows the old digest: the node really is stale, so the gateways
  answered correctly because they never trusted it.

After `heal`, the node catches up, and every acknowledged image reads back through every
gateway. Skips (visibly) where network namespaces cannot be made (not root, no iptables).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace

import aiohttp
import grpc
import pytest

from cargohold_cli.devcluster import LocalCluster, free_port, to_toml
from cluster.images import ImageSpec, random_image
from cluster.netns import NetnsLab
from cluster.registry_client import RegistryClient, Retryable
from cluster.shapes import CHUNK
from cluster.summary import PhaseClock, RecordSummary
from cluster.verify import verify_images
from cluster.workload import Workload
from protos import registry_pb2, registry_pb2_grpc

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

TAG = "moving"


async def _push(
    base_urls: list[str], spec: ImageSpec, manifest_too: bool = True, limit: float = 90.0
) -> tuple[float, int]:
    """Push `spec` through the gateways (moving on after each retryable failure); returns
    (seconds taken, failures seen)."""
    start = time.monotonic()
    failures = 0
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session)
        k = 0

        async def retry(op: Callable[[str], object]) -> None:
            nonlocal k, failures
            while True:
                try:
                    await op(base_urls[k % len(base_urls)])  # type: ignore[misc]
                    return
                except Retryable:
                    failures += 1
                    k += 1
                    if time.monotonic() - start > limit:
                        raise
                    await asyncio.sleep(0.1)

        for _, digest, data in spec.blobs():
            await retry(lambda b, d=digest, x=data: client.push_blob(b, spec.repo, d, x, True))
        if manifest_too:
            await retry(lambda b: client.put_manifest(b, spec.repo, spec.tag, spec.manifest()))
    return time.monotonic() - start, failures


async def _read_tag(base: str, repo: str) -> tuple[str, float]:
    """('digest', seconds) or ('retryable:<status>', seconds) for one GET by tag."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session)
        try:
            status, dcd, _ = await client.get_manifest(base, repo, TAG)
        except Retryable as exc:
            return f"retryable:{exc.status}", time.monotonic() - start
    return (dcd if status == 200 else f"status:{status}"), time.monotonic() - start


@contextlib.contextmanager
def sticky_gateway(cluster: LocalCluster, node: int) -> Iterator[str]:
    """One more gateway process whose only seed is `node`: it learns the member list and
    the leader from that node alone, so while `node` is the leader (and after it is cut
    off, while it still answers) this gateway sends its metadata queries there first."""
    config = tomllib.loads(cluster.gateway_config_path(0).read_text())
    port = free_port()
    config["gateway"]["listen"] = f"127.0.0.1:{port}"
    config["gateway"]["nodes"] = [cluster.node_grpc(node)]
    path = cluster.base_dir / "config" / "gateway-sticky.toml"
    path.write_text(to_toml(config))
    with open(cluster.base_dir / "logs" / "gateway-sticky.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cargohold_cli", "gateway", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "sticky gateway"
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _tag_on_node(cluster: LocalCluster, i: int, repo: str, linearizable: bool) -> str:
    with cluster.channel(i) as channel:
        stub = registry_pb2_grpc.MetadataStub(channel)
        reply = stub.Query(
            registry_pb2.MetadataRequest(
                op="tag_get",
                args=json.dumps({"repo": repo, "tag": TAG}).encode(),
                linearizable=linearizable,
            ),
            timeout=30,
        )
    return str(json.loads(reply.result)["digest"])


def test_partitioned_leader_never_serves_a_moved_tag(
    lab: NetnsLab, make_cluster: Callable[..., LocalCluster], record_summary: RecordSummary
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        node_hosts=[lab.host_ip(i) for i in range(3)],
        node_exec_prefixes=[lab.exec_prefix(i) for i in range(3)],
        # A barrier on the cut-off node gives up after 3 s (default 10 s): the same outcome,
        # sooner, so the gateways' retries elsewhere do not stretch the test.
        extra={"node": {"raft_command_timeout": 3.0}},
    )
    rng = random.Random()
    old = replace(random_image(rng, "chaos/moving", CHUNK), tag=TAG)
    new = replace(random_image(rng, "chaos/moving", CHUNK), tag=TAG)
    gateways = cluster.gateway_urls
    with contextlib.ExitStack() as stack:
        workload = stack.enter_context(
            Workload(gateways, CHUNK, clients=3, seed=rng.randrange(1 << 30), pause=0.3)
        )
        workload.wait_acked(6)
        asyncio.run(_push(gateways, old))
        asyncio.run(_push(gateways, new, manifest_too=False))
        leader = cluster.leader_index()
        assert leader is not None
        assert _tag_on_node(cluster, leader, old.repo, linearizable=True) == old.digest

        clock = PhaseClock(
            workload,
            "partition-leader",
            f"partition raft leader n{leader + 1} from its peers (gateways "
            f"still reach it), move a tag, read it through every gateway",
        )
        sticky = stack.enter_context(sticky_gateway(cluster, leader))
        asyncio.run(_read_tag(sticky, new.repo))  # it knows the leader now
        clock.fault_now()
        lab.partition(leader)
        try:
            moved_in, move_failures = asyncio.run(_push(gateways, new))
            reads: list[tuple[str, str, float]] = []
            for _ in range(3):
                for base in [*gateways, sticky]:
                    answer, took = asyncio.run(_read_tag(base, new.repo))
                    reads.append((base, answer, took))
            stale = [r for r in reads if r[1] == old.digest]
            assert not stale, f"a gateway served the old digest of a moved tag: {stale}"
            assert any(r[1] == new.digest for r in reads), reads
            wrong = [r for r in reads if r[1] != new.digest and not r[1].startswith("retry")]
            assert not wrong, wrong
            # The cut-off node is stale, and refuses to answer linearizably.
            assert _tag_on_node(cluster, leader, old.repo, linearizable=False) == old.digest
            with pytest.raises(grpc.RpcError) as refused:
                _tag_on_node(cluster, leader, old.repo, linearizable=True)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            workload.wait_acked(workload.acked_count() + 4, timeout=120)
        finally:
            lab.heal(leader)
        healed_at = time.monotonic()
        deadline = healed_at + 60
        last = ""
        while True:
            try:
                last = _tag_on_node(cluster, leader, new.repo, linearizable=True)
                if last == new.digest:
                    break
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            assert time.monotonic() < deadline, (
                f"healed node never caught up: {last}; status "
                f"{[cluster.node_status(i) for i in range(3)]}\n{cluster.tail_logs()}"
            )
            time.sleep(0.2)
        caught_up = time.monotonic() - healed_at
        workload.wait_acked(workload.acked_count() + 4, timeout=120)
        workload.pause()
        assert not workload.violations, workload.violations[:5]
        specs = [a.spec for a in workload.snapshot()]
        result = verify_images(gateways, specs, settle=60)
        verify_images(gateways, [new], settle=30)
        old_by_digest = verify_images(gateways, [replace(old, tag=old.digest)], settle=30)
        assert old_by_digest.images == 1
        phase = clock.finish(result)
    slow = max(r[2] for r in reads)
    sticky_slow = max(r[2] for r in reads if r[0] == sticky)
    phase.notes = (
        f"tag move took {moved_in:.1f}s ({move_failures} retried failures); "
        f"{len(reads)} reads: {sum(r[1] == new.digest for r in reads)} new digest, "
        f"{sum(r[1].startswith('retry') for r in reads)} retryable, 0 stale; "
        f"slowest read {slow:.1f}s (through the gateway seeded with the cut-off node: "
        f"{sticky_slow:.1f}s); node caught up {caught_up:.1f}s after heal"
    )
    record_summary(
        "2. partition (3 nodes in network namespaces, gateways in the root one)",
        {
            "phases": [asdict(phase)],
            "images acknowledged": len(specs),
            "violations (wrong/missing acknowledged data)": len(workload.violations),
        },
    )
