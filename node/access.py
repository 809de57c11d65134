"""Who may call what on a node: authentication of every gRPC call and the role matrix.

`AccessInterceptor` sits in front of the Chunks, Metadata and Admin services. It finds the
caller's role (cargohold/cluster_auth.py): from the client certificate when the server
requires mTLS (`cluster.tls_ca` with `tls_cert`/`tls_key`), else from the per-call HMAC
token. A call without a valid credential ends with UNAUTHENTICATED, a role the matrix
below does not allow with PERMISSION_DENIED; each refusal is logged once per peer host
and reason (`access.refused`), not once per call.

The matrix (docs/security.md renders it):

    RPC                         gateway   node   admin
    Chunks.Put/Get/Has          yes       yes    -
    Chunks.List/Delete          -         yes    -
    Metadata.Query              yes       yes    yes
    Metadata.Command            registry  internal  internal  (by `op`, `_COMMAND_ROLES`)
    Admin.Status                yes       yes    yes
    Admin.Trigger               -         yes    yes
    Admin.Add/SetState/RemoveMember  -    -      yes

A method missing from the matrix is refused (deny by default).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from cargohold.cluster_auth import METADATA_KEY, AuthError, TokenVerifier, role_from_uris
from cargohold.config import Config
from cargohold.log import log_event

logger = logging.getLogger("cargohold.node.access")

_ALL = frozenset({"gateway", "node", "admin"})
_DATA = frozenset({"gateway", "node"})
_NODE = frozenset({"node"})
_OPERATORS = frozenset({"node", "admin"})
_ADMIN = frozenset({"admin"})

RPC_ROLES: dict[str, frozenset[str]] = {
    "/cargohold.v1.Chunks/Put": _DATA,
    "/cargohold.v1.Chunks/Get": _DATA,
    "/cargohold.v1.Chunks/Has": _DATA,
    "/cargohold.v1.Chunks/List": _NODE,
    "/cargohold.v1.Chunks/Delete": _NODE,
    "/cargohold.v1.Metadata/Query": _ALL,
    "/cargohold.v1.Metadata/Command": _ALL,
    "/cargohold.v1.Admin/Status": _ALL,
    "/cargohold.v1.Admin/Trigger": _OPERATORS,
    "/cargohold.v1.Admin/AddMember": _ADMIN,
    "/cargohold.v1.Admin/SetMemberState": _ADMIN,
    "/cargohold.v1.Admin/RemoveMember": _ADMIN,
}
_COMMAND = "/cargohold.v1.Metadata/Command"
# Metadata commands by `op`: registry changes come from gateways (nodes apply their own
# internal commands through Raft directly, not over gRPC); membership and housekeeping from
# nodes or the operator. An op missing here is refused.
_REGISTRY_OPS = (
    "upload_append",
    "upload_cancel",
    "blob_commit",
    "blob_mount",
    "blob_unlink",
    "manifest_put",
    "tag_delete",
    "manifest_delete",
)
COMMAND_ROLES: dict[str, frozenset[str]] = {
    **{op: frozenset({"gateway"}) for op in _REGISTRY_OPS},
    "barrier": _ALL,
    "member_join": _OPERATORS,
    "member_set_state": _OPERATORS,
    "expire_uploads": _OPERATORS,
    "gc_prune": _OPERATORS,
    # Registry users, namespaces and roles: the operator's admin CLI only.
    "user_put": _ADMIN,
    "namespace_put": _ADMIN,
    "grant_set": _ADMIN,
}
_SEEN_MAX = 10_000


def _peer_host(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or "?"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate every call and apply the role matrix; see the module docstring."""

    def __init__(self, cfg: Config, mtls: bool) -> None:
        self._mtls = mtls
        self._tokens = TokenVerifier(
            cfg.cluster.secret, cfg.cluster.auth_max_skew, cfg.cluster.auth_nonce_cache_max
        )
        self._logged: set[tuple[str, str]] = set()
        self._cert_roles: dict[bytes, str | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        allowed = RPC_ROLES.get(method, frozenset())
        if self._mtls:
            return _wrap(handler, self._checker(method, allowed, None))
        token = None
        for key, value in details.invocation_metadata or ():
            if key == METADATA_KEY:
                token = value if isinstance(value, str) else value.decode()
                break
        try:
            role = self._tokens.verify(token, method)
        except AuthError as err:
            return _refusal(handler, self, grpc.StatusCode.UNAUTHENTICATED, err.reason)
        if role not in allowed:
            return _refusal(
                handler,
                self,
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {role} may not call {method}",
            )
        if method == _COMMAND:
            return _wrap(handler, self._checker(method, allowed, role))
        return handler

    def _checker(
        self, method: str, allowed: frozenset[str], role: str | None
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
        async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
            who = role
            if who is None:
                who = self._cert_role(context)
                if who is None:
                    await self.refuse(
                        context, grpc.StatusCode.UNAUTHENTICATED, "no cluster certificate role"
                    )
                if who not in allowed:
                    await self.refuse(
                        context,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"role {who} may not call {method}",
                    )
            if method == _COMMAND:
                op = getattr(request, "op", "")
                if who not in COMMAND_ROLES.get(op, frozenset()):
                    await self.refuse(
                        context,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"role {who} may not run command {op}",
                    )

        return check

    def _cert_role(self, context: grpc.aio.ServicerContext) -> str | None:
        auth = context.auth_context()
        pem = b"".join(auth.get("x509_pem_cert", ()))
        if not pem:
            return None
        if pem not in self._cert_roles:
            from cargohold.certs import san_uris

            if len(self._cert_roles) > _SEEN_MAX:
                self._cert_roles.clear()
            self._cert_roles[pem] = role_from_uris(san_uris(pem))
        return self._cert_roles[pem]

    async def refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str
    ) -> None:
        """End the call with `code`; log it the first time this peer host gets this reason."""
        key = (_peer_host(context), reason)
        if key not in self._logged:
            if len(self._logged) > _SEEN_MAX:
                self._logged.clear()
            self._logged.add(key)
            log_event(
                logger,
                "access.refused",
                logging.WARNING,
                peer=key[0],
                code=code.name,
                reason=reason,
            )
        await context.abort(code, f"{code.name.lower()}: {reason}")


def _identity(raw: bytes) -> bytes:
    return raw


def _refusal(
    handler: grpc.RpcMethodHandler,
    interceptor: AccessInterceptor,
    code: grpc.StatusCode,
    reason: str,
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses without parsing the request."""
    if handler.unary_stream is not None:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await interceptor.refuse(context, code, reason)
            yield  # pragma: no cover - makes this an async generator

        return grpc.unary_stream_rpc_method_handler(refuse_stream, request_deserializer=_identity)

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await interceptor.refuse(context, code, reason)

    return grpc.unary_unary_rpc_method_handler(refuse_unary, request_deserializer=_identity)


def _wrap(
    handler: grpc.RpcMethodHandler,
    check: Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]],
) -> grpc.RpcMethodHandler:
    """`handler` with `check(request, context)` run before its behaviour."""
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            await check(request, context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            checked_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    inner = handler.unary_unary

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(request, context)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        checked,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
