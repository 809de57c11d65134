"""The gRPC `Metadata` service: JSON commands through Raft, JSON queries of the state.

`Command` commits one catalogue command (docs/metadata.md) and answers its JSON result once
this node has applied it. `Query` reads the applied state, after a Raft barrier when the
request says `linearizable`. Failures end the call with the status code of
`cargohold.errors.grpc_status_name` and the details string of `to_grpc_details`, so the
gateway re-raises the same typed error.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc

from cargohold.errors import (
    RegistryError,
    RequestInvalid,
    grpc_status_name,
    to_grpc_details,
    to_grpc_trailer,
)
from node.metadata.raft import RaftMember
from protos import registry_pb2, registry_pb2_grpc


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


async def abort_with(context: grpc.aio.ServicerContext, err: RegistryError) -> NoReturn:
    """End the call with the status and details the catalogue prescribes for `err`."""
    await context.abort(
        getattr(grpc.StatusCode, grpc_status_name(err)),
        to_grpc_details(err),
        to_grpc_trailer(err),
    )
    raise AssertionError("unreachable: context.abort raises")


class MetadataServicer(registry_pb2_grpc.MetadataServicer):
    def __init__(self, raft: RaftMember) -> None:
        self._raft = raft

    async def Command(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        try:
            result = await self._raft.command(request.op, _decode_args(request.args))
        except RegistryError as err:
            await abort_with(context, err)
        return _encode(result)

    async def Query(
        self, request: registry_pb2.MetadataRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MetadataReply:
        try:
            result = await self._raft.query(
                request.op, _decode_args(request.args), linearizable=request.linearizable
            )
        except RegistryError as err:
            await abort_with(context, err)
        return _encode(result)
