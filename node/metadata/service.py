"""The gRPC `Metadata` service: JSON commands through Raft, JSON queries of the state.

`Command` commits one catalogue command (docs/metadata.md) and answers its JSON result once
this node has applied it. `Query` reads the applied state, after a Raft barrier when the
request says `linearizable`. Failures end the call through `cargohold.grpc_status.abort_with`,
so the gateway re-raises the same typed error.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc

from cargohold.errors import RegistryError, RequestInvalid
from cargohold.grpc_status import abort_with
from cargohold.log import log_event
from cargohold.request_ids import adopt
from node.metadata.raft import RaftMember
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
    def __init__(self, raft: RaftMember) -> None:
        self._raft = raft

    async def Command(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        adopt(context)
        try:
            result = await self._raft.command(request.op, _decode_args(request.args))
        except RegistryError as err:
            log_event(
                logger, "metadata.command_refused", logging.DEBUG, op=request.op, code=err.code
            )
            await abort_with(context, err)
        # With the gateway's request id (cargohold/request_ids.py): one push, followed.
        log_event(logger, "metadata.command", logging.DEBUG, op=request.op)
        return _encode(result)

    async def Query(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        adopt(context)
        try:
            result = await self._raft.query(
                request.op, _decode_args(request.args), linearizable=request.linearizable
            )
        except RegistryError as err:
            await abort_with(context, err)
        return _encode(result)
