"""The node's access interceptor (node/access.py) on a real grpc.aio server: every cell of
the role x RPC matrix (and x metadata op for commands), anonymous and forged calls, the
once-per-peer log, and the same matrix under mutual TLS with `cargohold admin certs`
certificates. Behind the interceptor sit servicers answering empty replies, so an allowed call
ends OK and a refused one UNAUTHENTICATED or PERMISSION_DENIED."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from cargohold.certs import create_ca, issue, san_uris
from cargohold.cluster_auth import METADATA_KEY, Credential, role_key, sign
from cargohold.config import Config
from cargohold.grpc_channels import open_channel
from node.access import COMMAND_ROLES, RPC_ROLES, AccessInterceptor
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

SECRET = "access-test-secret"
ROLES = ("gateway", "node", "admin")

# Every RPC with a request that reaches it: (service stub, method, request factory).
CALLS: dict[str, tuple[str, Callable[[], Any]]] = {
    "/cargohold.v1.Chunks/Put": ("ChunksStub", lambda: pb.PutChunkRequest(id=b"x" * 32)),
    "/cargohold.v1.Chunks/PutMany": ("ChunksStub", lambda: pb.PutManyRequest(puts=[b"x"])),
    "/cargohold.v1.Chunks/Get": ("ChunksStub", lambda: pb.GetChunkRequest(id=b"x" * 32)),
    "/cargohold.v1.Chunks/Has": ("ChunksStub", lambda: pb.HasChunksRequest(ids=[b"x" * 32])),
    "/cargohold.v1.Chunks/List": ("ChunksStub", lambda: pb.ListChunksRequest()),
    "/cargohold.v1.Chunks/Delete": ("ChunksStub", lambda: pb.DeleteChunksRequest(ids=[b"x"])),
    "/cargohold.v1.Chunks/BulkAddress": ("ChunksStub", lambda: pb.BulkAddressRequest()),
    "/cargohold.v1.Metadata/Query": ("MetadataStub", lambda: pb.MetadataRequest(op="members")),
    "/cargohold.v1.Metadata/Command": (
        "MetadataStub",
        lambda: pb.MetadataRequest(op="barrier"),
    ),
    # A pack of one op every role may run: the RPC matrix alone decides.
    "/cargohold.v1.Metadata/Commands": (
        "MetadataStub",
        lambda: pb.MetadataPack(commands=[pb.MetadataRequest(op="barrier")]),
    ),
    "/cargohold.v1.Metadata/WatchAccess": ("MetadataStub", lambda: pb.AccessPing(seq=1)),
    "/cargohold.v1.Admin/Status": ("AdminStub", lambda: pb.StatusRequest()),
    "/cargohold.v1.Admin/Trigger": ("AdminStub", lambda: pb.TriggerRequest(role="scrub")),
    "/cargohold.v1.Admin/AddMember": ("AdminStub", lambda: pb.MemberRequest(id="n9")),
    "/cargohold.v1.Admin/SetMemberState": ("AdminStub", lambda: pb.MemberRequest(id="n1")),
    "/cargohold.v1.Admin/RemoveMember": ("AdminStub", lambda: pb.MemberRequest(id="n1")),
}


def cfg_with(secret: str = SECRET, **cluster: str) -> Config:
    cfg = Config()
    cfg.cluster.secret = secret
    for key, value in cluster.items():
        setattr(cfg.cluster, key, value)
    return cfg


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def start(mtls_dir: Path | None = None) -> str:
        cfg = cfg_with()
        server = grpc.aio.server(interceptors=[AccessInterceptor(cfg, mtls=mtls_dir is not None)])
        for service in pb.DESCRIPTOR.services_by_name.values():
            getattr(pb_grpc, f"add_{service.name}Servicer_to_server")(_empty(service), server)
        if mtls_dir is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [((mtls_dir / "n1-key.pem").read_bytes(), (mtls_dir / "n1.pem").read_bytes())],
                root_certificates=(mtls_dir / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
            port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


async def call(channel: grpc.aio.Channel, method: str, request: Any = None) -> grpc.StatusCode:
    """The status a call of `method` ends with (OK only if the servicer answered)."""
    stub_name, make = CALLS[method]
    stub = getattr(pb_grpc, stub_name)(channel)
    rpc = getattr(stub, method.rsplit("/", 1)[1])
    try:
        if method.endswith("/List"):
            async for _ in rpc(request or make(), timeout=10):
                pass
        elif method.endswith("/WatchAccess"):  # a stream of requests
            async for _ in rpc(iter([request or make()]), timeout=10):
                pass
        else:
            await rpc(request or make(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def expected(role: str, method: str, op: str | None = None) -> grpc.StatusCode:
    allowed = role in RPC_ROLES[method] and (op is None or role in COMMAND_ROLES[op])
    return grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED


def _empty(service: Any) -> Any:
    """A servicer of `service` whose every method answers an empty reply."""
    methods: dict[str, Any] = {}
    for method in service.methods:
        reply = getattr(pb, method.output_type.name)
        if method.server_streaming:

            async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                for _ in ():
                    yield None

            methods[method.name] = stream
        else:

            async def unary(self: Any, request: Any, context: Any, reply: Any = reply) -> Any:
                return reply()

            methods[method.name] = unary
    return type(f"Empty{service.name}", (), methods)()


def test_matrix_covers_every_rpc_of_the_protocol() -> None:
    served = {
        f"/cargohold.v1.{service.name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert served == set(RPC_ROLES) == set(CALLS)


async def test_every_cell_of_the_rpc_matrix(serve: Serve) -> None:
    address = await serve()
    refused = 0
    for role in ROLES:
        cfg = cfg_with()
        async with open_channel(address, cfg, role=role) as channel:
            for method in CALLS:
                if method.endswith("/Command"):
                    continue
                got = await call(channel, method)
                assert got == expected(role, method), (role, method)
                refused += got == grpc.StatusCode.PERMISSION_DENIED
    # The gateway: List, Delete, Trigger and the three membership RPCs; node: the three and
    # WatchAccess; admin: Chunks.List and Delete (it reads the activity log's sealed
    # segments and stores the vulnerability database's index), WatchAccess (the access
    # leases are the gateways') and BulkAddress (only chunk writers use the bulk port).
    assert refused == 6 + 4 + 4


async def test_every_cell_of_the_command_matrix(serve: Serve) -> None:
    address = await serve()
    method = "/cargohold.v1.Metadata/Command"
    for role in ROLES:
        async with open_channel(address, cfg_with(), role=role) as channel:
            for op in [*COMMAND_ROLES, "no_such_op"]:
                got = await call(channel, method, pb.MetadataRequest(op=op, args=b"{}"))
                want = (
                    grpc.StatusCode.PERMISSION_DENIED
                    if op not in COMMAND_ROLES
                    else expected(role, method, op)
                )
                assert got == want, (role, op)
    for op in ("member_join", "member_set_state", "expire_uploads"):
        assert "gateway" not in COMMAND_ROLES[op]
    for op in ("blob_commit", "blob_mount", "tag_delete", "manifest_put"):
        assert COMMAND_ROLES[op] == {"gateway"}
    # A gateway (or its stolen credential) deletes into the trash; only the operator
    # restores, only nodes and the operator purge.
    assert COMMAND_ROLES["trash_restore"] == {"admin"}
    assert COMMAND_ROLES["trash_purge"] == {"node", "admin"}
    # The vulnerability database: the operator only (a gateway could otherwise hide CVEs).
    assert COMMAND_ROLES["vulndb_put"] == {"admin"}


def _pack(*ops: str) -> pb.MetadataPack:
    return pb.MetadataPack(commands=[pb.MetadataRequest(op=op, args=b"{}") for op in ops])


async def test_a_pack_of_commands_is_refused_whole_for_one_forbidden_op(serve: Serve) -> None:
    address = await serve()
    method = "/cargohold.v1.Metadata/Commands"
    gateway_ops = ("blob_commit", "upload_append", "barrier")
    async with open_channel(address, cfg_with(), role="gateway") as channel:
        assert await call(channel, method, _pack(*gateway_ops)) == grpc.StatusCode.OK
        # One op the gateway may not run, anywhere in the pack: nothing of it runs.
        for forbidden in ("member_join", "trash_purge", "no_such_op"):
            for at in range(len(gateway_ops) + 1):
                ops = [*gateway_ops[:at], forbidden, *gateway_ops[at:]]
                got = await call(channel, method, _pack(*ops))
                assert got == grpc.StatusCode.PERMISSION_DENIED, (forbidden, at)
    # Every op against every role, each alone in a pack, as Command's matrix says.
    for role in ROLES:
        async with open_channel(address, cfg_with(), role=role) as channel:
            for op in COMMAND_ROLES:
                got = await call(channel, method, _pack(op))
                assert got == expected(role, "/cargohold.v1.Metadata/Command", op), (role, op)


async def test_calls_without_valid_credentials_are_unauthenticated(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    address = await serve()
    caplog.set_level(logging.WARNING, logger="cargohold.node.access")
    async with grpc.aio.insecure_channel(address) as channel:
        for method in CALLS:
            for _ in range(3):
                assert await call(channel, method) == grpc.StatusCode.UNAUTHENTICATED, method
    # Logged once per peer and reason, not per call.
    refusals = [r for r in caplog.records if "access.refused" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].__dict__["fields"]["reason"] == "no credentials"
    # Another cluster's secret, and a replayed token.
    async with open_channel(address, cfg_with("other"), role="admin") as channel:
        assert await call(channel, "/cargohold.v1.Admin/Status") == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    token = sign(Credential("admin", role_key(SECRET, "admin")), "/cargohold.v1.Admin/Status")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AdminStub(channel)
        await stub.Status(pb.StatusRequest(), metadata=[(METADATA_KEY, token)], timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.Status(pb.StatusRequest(), metadata=[(METADATA_KEY, token)], timeout=5)
        assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "replayed" in (again.value.details() or "")


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    tls = tmp_path / "tls"
    create_ca(tls)
    issue(tls, "node", "n1", ["127.0.0.1", "localhost"])
    for role in ROLES:
        issue(tls, role, role)
    # A certificate from the CA with no role in it, and one from another CA.
    issue(tls, "gateway", "norole")
    other = tmp_path / "other"
    create_ca(other)
    issue(other, "admin", "stranger")
    return tmp_path


def test_certificates_carry_the_role(ca: Path) -> None:
    tls = ca / "tls"
    assert san_uris((tls / "gateway.pem").read_bytes()) == ["cargohold:role/gateway"]
    assert (tls / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tls / "admin-key.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_ca(tls)


def tls_cfg(directory: Path, name: str) -> Config:
    cfg = Config()  # no secret: the certificate alone decides
    cfg.cluster.tls_ca = str(directory / "ca.pem")
    cfg.cluster.tls_cert = str(directory / f"{name}.pem")
    cfg.cluster.tls_key = str(directory / f"{name}-key.pem")
    return cfg


async def test_mtls_roles_come_from_certificates(serve: Serve, ca: Path) -> None:
    tls = ca / "tls"
    address = await serve(mtls_dir=tls)
    for role in ROLES:
        cfg = tls_cfg(tls, role)
        async with open_channel(address, cfg, channel_credentials_of(cfg)) as channel:
            for method in CALLS:
                if not method.endswith("/Command"):
                    assert await call(channel, method) == expected(role, method), (role, method)
            got = await call(
                channel, "/cargohold.v1.Metadata/Command", pb.MetadataRequest(op="member_join")
            )
            assert got == expected(role, "/cargohold.v1.Metadata/Command", "member_join")
            # A pack mixing an op every role may run with member_join: refused whole
            # unless the certificate's role may run member_join.
            got = await call(
                channel, "/cargohold.v1.Metadata/Commands", _pack("barrier", "member_join")
            )
            assert got == expected(role, "/cargohold.v1.Metadata/Command", "member_join")


async def test_mtls_refuses_strangers(serve: Serve, ca: Path) -> None:
    tls = ca / "tls"
    address = await serve(mtls_dir=tls)
    # A certificate of the cluster CA without a role: UNAUTHENTICATED.
    (tls / "norole.pem").write_bytes(_strip_role(tls, "norole"))
    cfg = tls_cfg(tls, "norole")
    async with open_channel(address, cfg, channel_credentials_of(cfg)) as channel:
        assert await call(channel, "/cargohold.v1.Admin/Status") == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    # No client certificate, or one from another CA: the TLS handshake itself fails, no
    # call reaches a service.
    no_cert = grpc.ssl_channel_credentials(root_certificates=(tls / "ca.pem").read_bytes())
    stranger = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=(ca / "other" / "stranger-key.pem").read_bytes(),
        certificate_chain=(ca / "other" / "stranger.pem").read_bytes(),
    )
    for creds in (no_cert, stranger):
        async with grpc.aio.secure_channel(address, creds) as channel:
            assert await call(channel, "/cargohold.v1.Admin/Status") == (
                grpc.StatusCode.UNAVAILABLE
            )


def channel_credentials_of(cfg: Config) -> grpc.ChannelCredentials:
    from cargohold.grpc_channels import channel_credentials

    creds = channel_credentials(cfg)
    assert creds is not None
    return creds


def _strip_role(tls: Path, name: str) -> bytes:
    """Re-issue `name` from the cluster CA with a SAN that names no role."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_key = serialization.load_pem_private_key((tls / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((tls / f"{name}-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # type: ignore[union-attr]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("norole")]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)
