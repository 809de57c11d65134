"""`/healthz` (the process is alive) and `/readyz` (it can serve pushes now).

Ready means both, checked against the cluster and not against this gateway's caches:

- a linearizable `members` read answers: a Raft leader with a majority behind it is
  reachable through the gateway's own metadata path;
- at least `cluster.write_quorum` active members answer an `Admin.Status` probe and are
  not full, so a chunk write can collect its W acknowledgements.

A check is bounded by `gateway.readiness_timeout_seconds` and its answer reused for
`gateway.readiness_cache_seconds`, so load-balancer probes cannot multiply cluster calls.
The probe channels are its own (`cargohold.grpc_channels`), closed with the application.
Both answer JSON: 200 `{"status": "ready", ...}` or 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from cargohold.config import Config
from cargohold.errors import RegistryError
from cargohold.grpc_channels import channel_credentials, open_channel
from cargohold.metadata_api import Metadata
from protos import registry_pb2, registry_pb2_grpc


@dataclass
class Verdict:
    ready: bool
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ready" if self.ready else "not ready"}
        if self.reason:
            body["reason"] = self.reason
        body.update(self.detail)
        return body


class Readiness:
    """Answers "can this gateway serve pushes now?"; see the module docstring."""

    def __init__(self, cfg: Config, meta: Metadata) -> None:
        self._cfg = cfg
        self._meta = meta
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = channel_credentials(cfg)
        self._last: tuple[float, Verdict] | None = None
        self._running: asyncio.Task[Verdict] | None = None

    async def verdict(self) -> Verdict:
        now = time.monotonic()
        if (
            self._last is not None
            and now - self._last[0] < self._cfg.gateway.readiness_cache_seconds
        ):
            return self._last[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
        task = self._running
        try:
            verdict = await asyncio.shield(task)
        finally:
            if task.done() and self._running is task:
                self._running = None
        self._last = (time.monotonic(), verdict)
        return verdict

    async def _check(self) -> Verdict:
        timeout = self._cfg.gateway.readiness_timeout_seconds
        try:
            members = await asyncio.wait_for(self._meta.members(), timeout)
        except (RegistryError, TimeoutError) as exc:
            return Verdict(False, f"no Raft majority answers: {exc or 'timeout'}")
        active = [m for m in members if m.state == "active"]
        answers = await asyncio.gather(*(self._probe(m.grpc) for m in active))
        writable = sum(1 for ok in answers if ok)
        need = self._cfg.cluster.write_quorum
        detail = {"active_nodes": len(active), "writable_nodes": writable, "write_quorum": need}
        if writable < need:
            return Verdict(False, "fewer writable nodes than the write quorum", detail)
        return Verdict(True, "", detail)

    async def _probe(self, address: str) -> bool:
        """Whether the node at `address` answers within the timeout and takes writes."""
        try:
            reply = await self.status(address)
        except grpc.aio.AioRpcError:
            return False
        return not reply.disk_full

    async def status(self, address: str) -> registry_pb2.StatusReply:
        """The `Admin.Status` of the node at `address` (the web UI's cluster page too);
        grpc.aio.AioRpcError when it does not answer within the readiness timeout."""
        timeout = self._cfg.gateway.readiness_timeout_seconds
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(address, self._cfg, self._credentials)
        stub = registry_pb2_grpc.AdminStub(channel)
        return await stub.Status(registry_pb2.StatusRequest(), timeout=timeout)

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._running
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


READINESS: web.AppKey[Readiness] = web.AppKey("cargohold_readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers HTTP. Never asks the cluster."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    verdict = await request.app[READINESS].verdict()
    return web.json_response(verdict.to_json(), status=200 if verdict.ready else 503)
