"""A healed ex-leader rejoins: its divergent, uncommitted log suffix must not wedge it.

Three nodes in network namespaces (tests/cluster/netns.py), no gateways. The Raft leader is
partitioned away while clients still send it commands: it appends them but can never commit
them. The majority elects a new leader and commits well over one pysyncobj append batch
(64 KiB) of commands. After `heal`, the old leader must drop its conflicting entries, take
the new leader's log and answer linearizable reads with every command the majority
acknowledged. Upstream pysyncobj 0.3.17 livelocks here for ever (see
node/metadata/pysyncobj_seam.py); this test is the regression guard.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.netns import NetnsLab
from protos import registry_pb2, registry_pb2_grpc

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

REPO = "rejoin/test"
# Enough padded commands that the majority's new entries span several append batches.
MAJORITY_COMMANDS = 600
PAD = "x" * 400


def _args(k: int) -> dict[str, object]:
    return {
        "repo": REPO,
        "digest": "sha256:" + f"{k:064x}",
        "media_type": "application/json",
        "recipe": {"size": 0, "chunks": []},
        "tag": f"t{k}",
        "now": 1.0,
        "annotations": {"pad": PAD},
    }


def _command(cluster: LocalCluster, address: str, k: int, timeout: float) -> None:
    with cluster.channel(address, "gateway") as channel:
        registry_pb2_grpc.MetadataStub(channel).Command(
            registry_pb2.MetadataRequest(op="manifest_put", args=json.dumps(_args(k)).encode()),
            timeout=timeout,
        )


def _commit(cluster: LocalCluster, nodes: list[int], k: int) -> None:
    """Commit command k through any of `nodes`, retrying until one acknowledges it."""
    deadline = time.monotonic() + 60
    while True:
        for i in nodes:
            try:
                _command(cluster, cluster.node_grpc(i), k, timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


def _tags(cluster: LocalCluster, i: int) -> set[str]:
    with cluster.channel(i) as channel:
        reply = registry_pb2_grpc.MetadataStub(channel).Query(
            registry_pb2.MetadataRequest(
                op="tags_list",
                args=json.dumps({"repo": REPO, "n": None, "last": None}).encode(),
                linearizable=True,
            ),
            timeout=15,
        )
    return set(json.loads(reply.result)["tags"])


def test_healed_leader_with_divergent_suffix_catches_up(
    lab: NetnsLab, make_cluster: Callable[..., LocalCluster]
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=0,
        node_hosts=[lab.host_ip(i) for i in range(3)],
        node_exec_prefixes=[lab.exec_prefix(i) for i in range(3)],
        extra={"node": {"raft_command_timeout": 3.0}},
    )
    for k in range(5):
        _commit(cluster, cluster.running_nodes(), k)
    old = cluster.leader_index()
    assert old is not None
    majority = [i for i in range(3) if i != old]
    lab.partition(old)
    try:
        # Commands the cut-off leader appends but cannot commit (outcome unknown).
        stranded = [
            threading.Thread(target=lambda k=k: _swallow(cluster, old, k))
            for k in range(10_000, 10_004)
        ]
        for thread in stranded:
            thread.start()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: _commit(cluster, majority, k), range(5, 5 + MAJORITY_COMMANDS)))
        for thread in stranded:
            thread.join(30)
    finally:
        lab.heal(old)
    acknowledged = {f"t{k}" for k in range(5 + MAJORITY_COMMANDS)}
    deadline = time.monotonic() + 60
    last = ""
    while True:
        try:
            tags = _tags(cluster, old)
            if acknowledged <= tags:
                break
            last = f"{len(acknowledged - tags)} acknowledged tags missing"
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        assert time.monotonic() < deadline, (
            f"the healed ex-leader never caught up ({last}); statuses: "
            f"{[cluster.node_status(i) for i in range(3)]}"
        )
        time.sleep(0.3)
    for i in majority:
        assert acknowledged <= _tags(cluster, i)


def _swallow(cluster: LocalCluster, i: int, k: int) -> None:
    try:
        _command(cluster, cluster.node_grpc(i), k, timeout=10)
    except grpc.RpcError:
        pass
