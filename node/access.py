"""Who may call what on a node: authentication of every gRPC call and the role matrix.

`AccessInterceptor` sits in front of the Chunks, Metadata and Admin services. It finds the
caller's role (cargohold/cluster_auth.py): from the client certificate when the server
requires mTLS (`cluster.tls_ca` with `tls_cert`/`tls_key`), else from the per-call HMAC
token. A call without a valid credential ends with UNAUTHENTICATED, a role the matrix
below does not allow with PERMISSION_DENIED; each refusal is logged once per peer host
and reason (`access.refused`), not once per call.

The matrix (docs/security.md renders it):

    RPC                         gateway   node   admin
    Chunks.Put/PutMany/Has      yes       yes    yes (`admin vulndb import` stores the index)
    Chunks.BulkAddress          yes       yes    -
    bulk port hello             yes       yes    -   (`BULK_ROLES`, node/bulk_puts.py)
    Chunks.Get                  yes       yes    yes (audit verify reads sealed segments)
    Chunks.List/Delete          -         yes    -
    Metadata.Query              yes       yes    yes
    Metadata.Command            registry  internal  internal  (by `op`, `_COMMAND_ROLES`)
    Metadata.Commands           as Command, for EVERY command of the pack (one refused op
                                refuses the whole pack)
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

# Who may open a bulk put connection (cargohold/bulk_wire.py; not a gRPC method): the
# chunk writers, gateways and nodes.
BULK_ROLES = _DATA

RPC_ROLES: dict[str, frozenset[str]] = {
    # The admin CLI stores the vulnerability database's index (`cargohold admin vulndb`).
    "/cargohold.v1.Chunks/Put": _ALL,
    # A pack of Puts (protos/README.md, "Packed calls"): Put's roles.
    "/cargohold.v1.Chunks/PutMany": _ALL,
    # The admin CLI reads the activity log's sealed segments (`cargohold admin audit`).
    "/cargohold.v1.Chunks/Get": _ALL,
    "/cargohold.v1.Chunks/Has": _ALL,
    # Where the bulk put port is (cargohold/bulk_wire.py): asked by whoever may use it.
    "/cargohold.v1.Chunks/BulkAddress": _DATA,
    "/cargohold.v1.Chunks/List": _NODE,
    "/cargohold.v1.Chunks/Delete": _NODE,
    "/cargohold.v1.Metadata/Query": _ALL,
    "/cargohold.v1.Metadata/Command": _ALL,
    # A pack of commands: each command's op is checked as Command's (`_checker`).
    "/cargohold.v1.Metadata/Commands": _ALL,
    # A gateway's access lease on the leader (node/metadata/access_leases.py).
    "/cargohold.v1.Metadata/WatchAccess": frozenset({"gateway"}),
    "/cargohold.v1.Admin/Status": _ALL,
    "/cargohold.v1.Admin/Trigger": _OPERATORS,
    "/cargohold.v1.Admin/AddMember": _ADMIN,
    "/cargohold.v1.Admin/SetMemberState": _ADMIN,
    "/cargohold.v1.Admin/RemoveMember": _ADMIN,
}
_COMMAND = "/cargohold.v1.Metadata/Command"
_COMMANDS = "/cargohold.v1.Metadata/Commands"
_BY_OP = frozenset({_COMMAND, _COMMANDS})
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
    # A gateway's batched pulls (last-pulled times and the activity log's pull records).
    "pull_record",
    # The activity log: a gateway's batched events, sealing and retention of segments.
    "audit_append",
    "audit_seal",
    "audit_expire",
    # Webhook delivery (gateway/webhooks.py): the lease and the endpoints' cursors.
    "webhook_lease",
    "webhook_advance",
    # Search's platforms and labels of manifests pushed before they were recorded
    # (gateway/search_backfill.py).
    "image_info_backfill",
    # Replication rules (gateway/replication/): a rule's lease, cursor and status.
    "replication_lease",
    "replication_report",
    # The lease of a once-at-a-time gateway job (gateway/search_backfill.py).
    "job_lease",
)
ACCESS_OPS = (
    "user_put",
    "namespace_put",
    "grant_set",
    "group_put",
    "group_delete",
    "group_member_set",
    "group_grant_set",
    "robot_put",
    "robot_delete",
    "trust_key_put",
    "pull_policy_put",
    "vuln_policy_put",
)
_ACCESS_WRITERS = frozenset({"admin", "gateway"})
COMMAND_ROLES: dict[str, frozenset[str]] = {
    **{op: frozenset({"gateway"}) for op in _REGISTRY_OPS},
    "barrier": _ALL,
    "member_join": _OPERATORS,
    "member_set_state": _OPERATORS,
    "expire_uploads": _OPERATORS,
    "gc_prune": _OPERATORS,
    # Registry users, groups, robots, namespaces, roles and signature trust: the operator's
    # admin CLI, and gateways for their HTTP admin API (gateway/admin_api/), which checks
    # its caller is a cluster or namespace admin first. A gateway holds the token signing
    # key anyway, so it could already mint any token: this gives it nothing it could not
    # take.
    **{op: _ACCESS_WRITERS for op in ACCESS_OPS},
    # Namespace storage quotas (node/metadata/quotas.py): the operator's admin CLI only.
    "quota_set": _ADMIN,
    # The trash: purged by the GC leader (or the operator), restored by the operator only
    # (a gateway, or a stolen gateway credential, can delete but never purge the trash).
    "trash_purge": _OPERATORS,
    "trash_restore": _ADMIN,
    # Webhook endpoints and their dead letters: the operator's admin CLI only (an endpoint's
    # headers may carry a receiver's credential).
    "webhook_put": _ADMIN,
    "webhook_remove": _ADMIN,
    "webhook_retry": _ADMIN,
    # A replication rule's run, asked for by the operator (`cargohold admin replication run`).
    "replication_run": _ADMIN,
    # Its dead letters queued again (`cargohold admin replication retry`).
    "replication_retry": _ADMIN,
    # The SBOM scanner's queue (node/metadata/scans.py): gateways run the scans; a rescan
    # may come from the operator too.
    "scan_claim": frozenset({"gateway"}),
    "scan_finish": frozenset({"gateway"}),
    "scan_enqueue": _ACCESS_WRITERS,
    # The vulnerability database (docs/supply-chain.md): imported by the operator only.
    "vulndb_put": _ADMIN,
}
_SEEN_MAX = 10_000


def _peer_host(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or "?"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class FirstSeen:
    """Keys seen so far, to log a refusal once per (peer host, reason) rather than per
    call; forgets everything past `_SEEN_MAX` keys, so a scanner cannot grow it."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def first(self, key: tuple[str, str]) -> bool:
        """Whether `key` is new (and remember it)."""
        if key in self._seen:
            return False
        if len(self._seen) > _SEEN_MAX:
            self._seen.clear()
        self._seen.add(key)
        return True


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate every call and apply the role matrix; see the module docstring."""

    def __init__(self, cfg: Config, mtls: bool) -> None:
        self._mtls = mtls
        self._tokens = TokenVerifier(
            cfg.cluster.secret, cfg.cluster.auth_max_skew, cfg.cluster.auth_nonce_cache_max
        )
        self._logged = FirstSeen()
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
        if method in _BY_OP:
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
            if method in _BY_OP:
                ops = (
                    [getattr(request, "op", "")]
                    if method == _COMMAND
                    else [command.op for command in getattr(request, "commands", ())]
                )
                for op in ops:
                    if who not in COMMAND_ROLES.get(op, frozenset()):
                        # One forbidden op refuses the whole pack: nothing of it runs.
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
        if self._logged.first(key):
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
    if handler.stream_stream is not None:

        async def refuse_bidi(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await interceptor.refuse(context, code, reason)
            yield  # pragma: no cover - makes this an async generator

        return grpc.stream_stream_rpc_method_handler(refuse_bidi, request_deserializer=_identity)
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
    """`handler` with `check(request, context)` run before its behaviour (a stream of
    requests: `check(None, context)`)."""
    streaming = handler.stream_stream or handler.unary_stream
    if streaming is not None:
        bidi = handler.stream_stream is not None

        async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            await check(None if bidi else request, context)
            async for item in streaming(request, context):
                yield item

        make = (
            grpc.stream_stream_rpc_method_handler if bidi else grpc.unary_stream_rpc_method_handler
        )
        return make(
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
