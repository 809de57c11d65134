"""What per-call authentication costs: unary Metadata calls and chunk Puts, with and without.

One in-process grpc.aio server on loopback serves the real Chunks service (an in-memory
store) and a Metadata service that answers at once, so the figures are the RPC path's own
cost; it runs once plain and once behind node/access.py's interceptor, with clients
signing through cargohold/grpc_channels.py. Sequential calls (latency) and 32 in flight
(throughput) for a 100-byte Metadata.Query, and 4 MiB Chunks.Put.

    .venv/bin/python -m bench.auth_cost [--seconds 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import grpc
import grpc.aio

from cargohold.config import Config
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.grpc_channels import channel_options, open_channel
from node import chunk_service
from node.access import AccessInterceptor
from node.memstore import MemoryChunkStore
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc


class _Metadata(pb_grpc.MetadataServicer):
    async def Query(self, request: Any, context: Any) -> pb.MetadataReply:
        return pb.MetadataReply(result=b"[]")


async def _serve(cfg: Config, auth: bool) -> tuple[grpc.aio.Server, str]:
    interceptors = [AccessInterceptor(cfg, mtls=False)] if auth else []
    server = grpc.aio.server(interceptors=interceptors, options=channel_options(cfg)[:3])
    chunk_service.add_to_server(server, MemoryChunkStore(), cfg.node)
    pb_grpc.add_MetadataServicer_to_server(_Metadata(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _rate(one: Any, inflight: int, seconds: float) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await one()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.monotonic() - start)


async def measure(seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """Both servers run at once and the rounds alternate between them, so load from other
    processes hits both alike; each figure is the median of its rounds."""
    data = os.urandom(4 * 1024 * 1024)
    chunk_id, checksum = chunk_id_of(data), checksum_of(data)
    query = pb.MetadataRequest(op="members", args=b"{}")
    put = pb.PutChunkRequest(id=chunk_id, data=data, checksum=checksum)
    setups = []
    for auth in (False, True):
        cfg = Config()
        cfg.cluster.secret = "bench-secret" if auth else ""
        cfg.role = "gateway"
        server, address = await _serve(cfg, auth)
        setups.append(("authenticated" if auth else "open", server, open_channel(address, cfg)))
    samples: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in setups}
    try:
        for _ in range(rounds):
            for name, _, channel in setups:
                metadata = pb_grpc.MetadataStub(channel)
                chunks = pb_grpc.ChunksStub(channel)

                async def one_query(metadata: Any = metadata) -> None:
                    await metadata.Query(query, timeout=10)

                async def one_put(chunks: Any = chunks) -> None:
                    await chunks.Put(put, timeout=30)

                for key, one, inflight in (
                    ("query_per_s_sequential", one_query, 1),
                    ("query_per_s_32_in_flight", one_query, 32),
                    ("put_4mib_per_s_sequential", one_put, 1),
                    ("put_4mib_per_s_4_in_flight", one_put, 4),
                ):
                    rate = await _rate(one, inflight, seconds)
                    samples[name].setdefault(key, []).append(rate)
    finally:
        for _, server, channel in setups:
            await channel.close()
            await server.stop(None)
    return {
        name: {key: round(statistics.median(values), 1) for key, values in by_key.items()}
        for name, by_key in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per sample")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    result: dict[str, Any] = asyncio.run(measure(args.seconds, args.rounds))
    open_, auth = result["open"], result["authenticated"]
    for key in open_:
        result.setdefault("cost_percent", {})[key] = round(100 * (1 - auth[key] / open_[key]), 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
