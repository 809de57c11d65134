"""Raft metadata commands/s: `Metadata.Command op=barrier` over gRPC, straight to the nodes.

A barrier is the smallest replicated command (a no-op committed on a majority), so this
is the ceiling of the metadata group as the gateways see it. Calls go round-robin to every
node (a follower forwards to the leader, as for a gateway's commands), signed as a
gateway's calls are (cargohold/grpc_channels.py). Cargohold only.
"""

from __future__ import annotations

from typing import Any

from bench.driver import drive
from bench.workloads.common import Context
from cargohold.grpc_channels import open_channel
from protos import registry_pb2, registry_pb2_grpc


async def run(ctx: Context) -> dict[str, Any]:
    addresses = ctx.system.grpc_addresses
    if not addresses:
        return {}
    p = ctx.profile
    cluster = getattr(ctx.system, "cluster", None)
    if cluster is None:
        return {}
    cfg = cluster.client_config("gateway")
    channels = [open_channel(a, cfg) for a in addresses]
    try:
        stubs = [registry_pb2_grpc.MetadataStub(c) for c in channels]
        request = registry_pb2.MetadataRequest(op="barrier", args=b"{}")
        out: dict[str, Any] = {}
        for inflight in p.raft_inflight:

            async def one(i: int) -> int:
                await stubs[i % len(stubs)].Command(request, timeout=10)
                return 1

            result = await drive(inflight, one, p.raft_max, p.raft_seconds)
            out[f"barrier_inflight{inflight}"] = result.to_json("commands")
            ctx.advance(f"raft barrier x{inflight}")
        return {"raft_commands": out}
    finally:
        for channel in channels:
            await channel.close()
