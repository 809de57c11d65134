"""The gRPC `Metadata` service: JSON commands through Raft, JSON queries of the state.

`Command` commits one catalogue command (docs/metadata.md) and answers its JSON result once
this node has applied it; `Commands` (a gateway's pack of them, protos/README.md "Packed
calls") runs each the same way, concurrently so Raft's group commit shares one log entry,
and answers a PackItem per command (`cargohold.pack_items`). `Query` reads the applied
state, after a Raft barrier when the request says `linearizable` (a `search` first waits a
bounded time for the node's index: node/metadata/search_build.py). Failures end the call
through `cargohold.grpc_status.abort_with`, so the gateway re-raises the same typed error.
`WatchAccess` is a gateway's access lease stream (node/metadata/access_leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cargohold.errors import RegistryError, RequestInvalid
from cargohold.grpc_status import abort_with
from cargohold.log import log_event
from cargohold.pack_items import error_item, ok_item, status_item
from cargohold.request_ids import adopt, adopt_id
from node.metadata.raft import RaftMember
from node.metadata.search_build import SearchIndexBuilder
from node.metrics import PackCounts
from protos import registry_pb2, registry_pb2_grpc

logger = logging.getLogger("cargohold.node.metadata")


def _decode_args(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise RequestInvalid("args is not JSON") from exc
    if not isinstance(args, dict):
        raise RequestInvalid("args must be a JSON object")
    return args


def _encode(result: Any) -> registry_pb2.MetadataReply:
    return registry_pb2.MetadataReply(result=json.dumps(result, separators=(",", ":")).encode())


class MetadataServicer(registry_pb2_grpc.MetadataServicer):
    def __init__(
        self,
        raft: RaftMember,
        search: SearchIndexBuilder | None = None,
        search_ready_wait: float = 0.0,
        packs: PackCounts | None = None,
    ) -> None:
        self._raft = raft
        # Packed calls served and the commands they carried (node/metrics.py reads them).
        self._packs = packs
        self._search = search
        self._search_ready_wait = search_ready_wait

    async def Command(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        adopt(context)
        try:
            return await self._command(request)
        except RegistryError as err:
            await abort_with(context, err)

    async def Commands(
        self, request: registry_pb2.MetadataPack, context: grpc.aio.ServicerContext
    ) -> registry_pb2.PackReply:
        """A gateway's pack of commands: each runs as `Command` runs it, all at once (Raft's
        group commit puts them in one log entry), each answering its own PackItem."""
        adopt(context)
        commands, ids = request.commands, request.request_ids
        if self._packs is not None:
            self._packs.record("Metadata/Commands", len(commands))
        items = await asyncio.gather(
            *(
                self._pack_command(command, ids[i] if i < len(ids) else "")
                for i, command in enumerate(commands)
            )
        )
        return registry_pb2.PackReply(items=items)

    async def _pack_command(
        self, request: registry_pb2.MetadataRequest, request_id: str
    ) -> registry_pb2.PackItem:
        """One command of a pack, in a task of its own (its log lines name `request_id`)."""
        adopt_id(request_id)
        try:
            reply = await self._command(request)
        except RegistryError as err:
            return error_item(err)
        except Exception as exc:
            # What grpc answers for a handler's unexpected exception.
            log_event(
                logger, "metadata.command_failed", logging.ERROR, op=request.op, error=repr(exc)
            )
            return status_item(grpc.StatusCode.UNKNOWN, f"Unexpected {exc!r}")
        return ok_item(reply.SerializeToString())

    async def _command(self, request: registry_pb2.MetadataRequest) -> registry_pb2.MetadataReply:
        """Commit one command; its reply, or the RegistryError it failed with."""
        try:
            result = await self._raft.command(request.op, _decode_args(request.args))
        except RegistryError as err:
            log_event(
                logger, "metadata.command_refused", logging.DEBUG, op=request.op, code=err.code
            )
            raise
        # With the gateway's request id (cargohold/request_ids.py): one push, followed.
        log_event(logger, "metadata.command", logging.DEBUG, op=request.op)
        return _encode(result)

    async def Query(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        adopt(context)
        if request.op == "search" and self._search is not None:
            # A node just started builds its index in the background: wait a little for
            # it, then the state answers UNAVAILABLE and the gateway asks another node.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._search_ready_wait):
                    await self._search.wait_ready()
        try:
            result = await self._raft.query(
                request.op, _decode_args(request.args), linearizable=request.linearizable
            )
        except RegistryError as err:
            await abort_with(context, err)
        return _encode(result)

    async def WatchAccess(
        self,
        request_iterator: AsyncIterator[registry_pb2.AccessPing],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[registry_pb2.AccessLease]:
        try:
            async for lease in self._raft.leases.watch(request_iterator):
                yield lease
        except RegistryError as err:
            await abort_with(context, err)
