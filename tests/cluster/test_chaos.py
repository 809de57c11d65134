"""Chaos on a real 3-node (R=3, W=2), 2-gateway cluster while four clients push and pull.

One test walks through the faults of issue 3 in order, each while the workload runs:

1. SIGKILL a random node, keep pushing, verify, restart it;
2. SIGKILL the Raft leader (a failover probe times how long manifest PUTs fail), verify,
   restart it;
3. SIGKILL a gateway: clients move to the other one; verify through it, restart;
4. rolling restart: every node, then every gateway, one at a time (SIGTERM);
5. flip a byte of a stored chunk on the replica gateways read first: reads stay
   byte-identical (the node's checksum catches it, the gateway falls back, the copy is
   quarantined).

After every phase every acknowledged image is read back byte-identical through every
running gateway, and the workload must have acknowledged new images during the fault.
At the end every chunk of every acknowledged image has W copies at least, and R copies
once repair (node/repair.py) ran, when the nodes serve it. A summary (per phase: images
acknowledged, failures clients saw, time to recover, bytes repaired) is written to
`$CARGOHOLD_CHAOS_SUMMARY` (see tests/cluster/summary.py), else to the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict

import pytest

from bench.failover import FailoverProbe
from cargohold.placement import rank_nodes
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import (
    flip_stored_bytes,
    image_chunks,
    node_chunk,
    quarantined,
    replica_counts,
)
from cluster.roles import repaired_bytes_total, wait_replicated
from cluster.shapes import CHUNK
from cluster.summary import Phase, PhaseClock, RecordSummary
from cluster.verify import verify_images
from cluster.workload import Workload

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

# Images the workload must acknowledge while each fault is in effect.
PROGRESS = 6
NODE_SETTINGS = {
    # Snapshots and journal truncation happen during the run (docs/raft.md, trap 3).
    "raft_compaction_min_entries": 400,
    "raft_compaction_min_time": 5.0,
    "repair_interval": 5.0,
}


class Run:
    """The cluster, the workload and the phases measured so far."""

    def __init__(self, cluster: LocalCluster, workload: Workload) -> None:
        self.cluster = cluster
        self.workload = workload
        self.phases: list[Phase] = []

    def running_gateways(self) -> list[str]:
        return [
            self.cluster.gateway_urls[j]
            for j, p in enumerate(self.cluster.gateway_procs)
            if p is not None and p.poll() is None
        ]

    def progress(self, n: int = PROGRESS) -> None:
        self.workload.wait_acked(self.workload.acked_count() + n, timeout=120)

    def verify(self, clock: PhaseClock, recovery: float | None = None) -> Phase:
        """Pause new pushes, read every acknowledged image back through every running
        gateway, close the phase's measurements."""
        self.workload.pause()
        assert not self.workload.violations, self.workload.violations[:5]
        specs = [a.spec for a in self.workload.snapshot()]
        result = verify_images(self.running_gateways(), specs, settle=60)
        phase = clock.finish(result, recovery)
        print(f"phase {phase.name}: {phase.phase_seconds}s, {len(specs)} images verified")
        self.phases.append(phase)
        return phase

    def restore_copies(self, phase: Phase, before: int | None) -> None:
        """After a phase's processes are back: repair passes until every chunk of every
        acknowledged image has R copies; the bytes it took (repair counters, `before` =
        their sum when the fault began) and how long."""
        start = time.monotonic()
        specs = [a.spec for a in self.workload.snapshot()]
        chunks = image_chunks(self.cluster, specs)
        wait_replicated(self.cluster, chunks, self.cluster.layout.replicas)
        after = repaired_bytes_total(self.cluster)
        if after is not None:
            phase.bytes_repaired = after - (before or 0)
            phase.notes = (
                phase.notes + f" Back to R copies of all {len(chunks)} chunks "
                f"in {time.monotonic() - start:.1f}s."
            ).strip()


def test_chaos_sequence(
    make_cluster: Callable[..., LocalCluster], record_summary: RecordSummary
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    cluster = make_cluster(nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": NODE_SETTINGS})
    workload = Workload(cluster.gateway_urls, CHUNK, clients=4, seed=seed, pause=0.3)
    run = Run(cluster, workload)
    with workload:
        run.progress(10)

        # 1. a random node
        victim = rng.randrange(cluster.node_count)
        clock = PhaseClock(workload, "kill-node", f"SIGKILL node n{victim + 1} (random)")
        clock.fault_now()
        cluster.kill_node(victim)
        run.progress()
        phase = run.verify(clock)
        before = repaired_bytes_total(cluster)
        cluster.start_node(victim)
        cluster.wait_ready(60)
        run.restore_copies(phase, before)

        # 2. the leader, with a probe committing manifests in a tight loop
        leader = cluster.leader_index()
        assert leader is not None
        with FailoverProbe(cluster.gateway_urls) as probe:
            probe.wait_running()
            clock = PhaseClock(workload, "kill-leader", f"SIGKILL raft leader n{leader + 1}")
            killed_at = clock.fault_now()
            cluster.kill_node(leader)
            failover = probe.wait_recovered(killed_at, timeout=60)
            run.progress()
        phase = run.verify(clock, recovery=failover)
        phase.notes = (
            f"new leader n{(cluster.leader_index() or 0) + 1}; failover probe PUTs "
            f"ok={len(probe.ok)} failed={probe.failed}."
        )
        before = repaired_bytes_total(cluster)
        cluster.start_node(leader)
        cluster.wait_ready(60)
        run.restore_copies(phase, before)

        # 3. a gateway: clients retry through the other one
        gone = rng.randrange(cluster.gateway_count)
        clock = PhaseClock(workload, "kill-gateway", f"SIGKILL gateway-{gone + 1}")
        clock.fault_now()
        cluster.kill_gateway(gone)
        run.progress()
        run.verify(clock)
        cluster.start_gateway(gone)
        cluster.wait_ready(60)

        # 4. rolling restart, one process at a time
        clock = PhaseClock(
            workload,
            "rolling-restart",
            "SIGTERM+start every node, then every gateway, one at a time",
        )
        clock.fault_now()
        for i in range(cluster.node_count):
            cluster.restart_node(i)
            cluster.wait_ready(60)
            run.progress(2)
        for j in range(cluster.gateway_count):
            cluster.restart_gateway(j)
            cluster.wait_ready(60)
            run.progress(2)
        # Every node restarted inside this phase: their repair counters count only it.
        run.restore_copies(run.verify(clock), 0)

        # 5. a flipped byte in a stored chunk, on the replica reads try first
        clock = PhaseClock(workload, "bit-flip", "")
        target = rng.choice(workload.snapshot()).spec
        layer = target.blobs()[2][2]  # the multi-chunk layer
        chunk = layer[:CHUNK]
        chunk_id = hashlib.sha256(chunk).digest()
        first = rank_nodes(chunk_id, [cluster.node_id(i) for i in range(cluster.node_count)])[0]
        node = int(first[1:]) - 1
        clock.phase.fault = f"flip a byte of chunk {chunk_id.hex()[:12]} on n{node + 1}"
        before_flip = repaired_bytes_total(cluster)
        clock.fault_now()
        assert flip_stored_bytes(cluster, node, chunk) >= 1
        # Reads of that image through every gateway stay byte-identical ...
        verify_images(run.running_gateways(), [target], settle=30)
        # ... and the bad copy is out of service on that node: quarantined, and the node
        # serves either nothing or a verified good copy (fetched again by its repair roles).
        assert quarantined(cluster, node) >= 1
        again = node_chunk(cluster, node, chunk_id)
        assert again is None or again == chunk
        assert replica_counts(cluster, [chunk_id.hex()])[chunk_id.hex()] >= 2
        phase = run.verify(clock)
        phase.notes = (
            f"n{node + 1} quarantined the copy; it then served "
            f"{'nothing' if again is None else 'a re-fetched good copy'}."
        )
        run.restore_copies(phase, before_flip)
        run.progress(2)

    # Every acknowledged image, through every gateway, once more; then replica counts.
    assert not workload.violations, workload.violations[:5]
    acked = workload.snapshot()
    specs = [a.spec for a in acked]
    final = verify_images(run.running_gateways(), specs, settle=60)
    assert final.images == len(acked) and final.reads == len(acked) * cluster.gateway_count
    chunks = image_chunks(cluster, specs)
    counts = replica_counts(cluster, chunks)
    low = {c: n for c, n in counts.items() if n < cluster.layout.write_quorum}
    assert not low, f"{len(low)} chunks below W copies"
    repaired, histogram = wait_replicated(cluster, chunks, cluster.layout.replicas)
    path = record_summary(
        "1. fault sequence (3 nodes R=3 W=2, 2 gateways, 4 clients)",
        {
            "setup": f"chunk size {CHUNK // 1024} KiB; images = config + a sub-chunk layer + a "
            f"2-3 chunk layer; workload seed {seed}",
            "phases": [asdict(p) for p in run.phases],
            "images acknowledged": len(acked),
            "pushes started": workload.stats.pushes_started,
            "pushes abandoned (gave up after retries)": workload.stats.pushes_abandoned,
            "pulls verified during the run": workload.stats.pulls_ok,
            "client-visible failed requests": workload.stats.requests_failed,
            "violations (wrong/missing acknowledged data)": len(workload.violations),
            "final verification": f"{final.images} images x {cluster.gateway_count} gateways, "
            f"{final.bytes_read} bytes, all byte-identical",
            "chunk copies -> chunks": histogram,
            "final repair bytes": repaired if repaired is not None else "repair not served",
            "leader failover seconds (probe)": next(
                p.recovery_seconds for p in run.phases if p.name == "kill-leader"
            ),
        },
    )
    assert "kill-leader" in path.read_text()
