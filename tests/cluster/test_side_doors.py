"""Issue 9's reproductions against a real cluster: an attacker on the cluster network calls
the nodes' gRPC ports directly. Every attack is refused (UNAUTHENTICATED without cluster
credentials, PERMISSION_DENIED with a gateway credential where a gateway may not act), and
afterwards the registry's content and membership are unchanged: every pushed image is
pulled back and byte-compared, the member list is the same.

One private cluster (R=3 on 3 nodes, `gateway.verify_reads = sha256`, small chunks) serves
the module; the content-defense tests plant bad copies with a node credential (what a
compromised node could do) and check that no byte escapes unverified.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import xxhash

from cargohold_cli.devcluster import LocalCluster, free_port, to_toml
from cluster.chunkcheck import image_chunks, node_chunk
from cluster.images import ImageSpec, random_image
from cluster.registry_client import RegistryClient
from cluster.roles import trigger_role
from cluster.verify import verify_images
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

pytestmark = pytest.mark.cluster

CHUNK = 256 * 1024
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        tmp_path_factory.mktemp("side-doors"),
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={"gateway": {"verify_reads": "sha256"}, "node": {"scrub_interval": 3600.0}},
    )
    try:
        local.start(timeout=90)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def pushed(lab: LocalCluster) -> list[ImageSpec]:
    """The victims' images, pushed once through the gateway."""
    rng = random.Random(9)
    specs = [random_image(rng, f"victim/app{k}", CHUNK) for k in range(3)]
    asyncio.run(_push(lab.gateway_url, specs))
    return specs


async def _push(base: str, specs: list[ImageSpec]) -> None:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session)
        for spec in specs:
            for k, (_, digest, data) in enumerate(spec.blobs()):
                await client.push_blob(base, spec.repo, digest, data, monolithic=k % 2 == 0)
            await client.put_manifest(base, spec.repo, spec.tag, spec.manifest())


def anonymous(lab: LocalCluster, i: int) -> grpc.Channel:
    return grpc.insecure_channel(lab.node_grpc(i))


def refused(rpc: Callable[..., Any], request: Any) -> grpc.StatusCode:
    """The status code `rpc(request)` was refused with (fails the test if it succeeded)."""
    with pytest.raises(grpc.RpcError) as err:
        rpc(request, timeout=10)
    return err.value.code()


def command(op: str, args: dict[str, Any]) -> pb.MetadataRequest:
    return pb.MetadataRequest(op=op, args=json.dumps(args).encode())


def unchanged(lab: LocalCluster, specs: list[ImageSpec], members: list[dict[str, Any]]) -> None:
    """Every image pulls back byte-identical; the member list is what it was."""
    verify_images(lab.gateway_urls, specs)
    assert lab.members() == members


# -- 1. content swap -------------------------------------------------------------------------
def test_content_swap_is_refused(lab: LocalCluster, pushed: list[ImageSpec]) -> None:
    members = lab.members()
    victim = pushed[0]
    chunk_ids = [bytes.fromhex(c) for c in image_chunks(lab, [victim])]
    evil = os.urandom(CHUNK)
    for i in range(lab.node_count):
        with anonymous(lab, i) as channel:
            chunks = pb_grpc.ChunksStub(channel)
            assert refused(chunks.Delete, pb.DeleteChunksRequest(ids=chunk_ids)) == (
                UNAUTHENTICATED
            )
            for cid in chunk_ids:
                put = pb.PutChunkRequest(id=cid, data=evil, checksum=xxhash.xxh3_128_digest(evil))
                assert refused(chunks.Put, put) == UNAUTHENTICATED
        with lab.channel(i, "gateway") as channel:
            chunks = pb_grpc.ChunksStub(channel)
            assert refused(chunks.Delete, pb.DeleteChunksRequest(ids=chunk_ids)) == DENIED
    unchanged(lab, pushed, members)
    for i in range(lab.node_count):
        progress = trigger_role(lab, i, "scrub")
        assert progress is not None and progress["corrupt_found"] == 0


def test_swapped_copies_never_escape_and_scrub_heals_them(
    lab: LocalCluster, pushed: list[ImageSpec]
) -> None:
    """Defense in depth: bytes swapped in under a chunk id with a valid xxh3 checksum (a
    compromised node credential can write them) are caught by the gateway's sha256 read
    check, and scrub's sha256 re-check quarantines them and re-fetches good copies."""
    victim = pushed[1]
    layer = victim.blobs()[2][2]
    cid = hashlib.sha256(layer[:CHUNK]).digest()
    good = layer[:CHUNK]
    evil = os.urandom(len(good))
    for i in (0, 1):  # two of the three replicas
        with lab.channel(i, "node") as channel:
            chunks = pb_grpc.ChunksStub(channel)
            chunks.Delete(pb.DeleteChunksRequest(ids=[cid]), timeout=10)
            chunks.Put(
                pb.PutChunkRequest(id=cid, data=evil, checksum=xxhash.xxh3_128_digest(evil)),
                timeout=10,
            )
        assert node_chunk(lab, i, cid) == evil  # planted: the xxh3 check alone passes it
    verify_images(lab.gateway_urls, [victim], settle=10)  # the third replica serves
    for i in (0, 1):
        progress = trigger_role(lab, i, "scrub")
        assert progress is not None and progress["corrupt_found"] >= 1
        assert node_chunk(lab, i, cid) == good
    verify_images(lab.gateway_urls, pushed)


# -- 2. digest squatting ------------------------------------------------------------------------
def test_digest_squatting_is_refused(lab: LocalCluster, pushed: list[ImageSpec]) -> None:
    members = lab.members()
    content = os.urandom(CHUNK + 1000)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    evil = os.urandom(len(content))
    evil_id = hashlib.sha256(evil).digest()
    recipe = {"size": len(evil), "chunks": [[evil_id.hex(), len(evil)]]}
    for i in range(lab.node_count):
        with anonymous(lab, i) as channel:
            put = pb.PutChunkRequest(id=evil_id, data=evil, checksum=xxhash.xxh3_128_digest(evil))
            chunks = pb_grpc.ChunksStub(channel)
            assert refused(chunks.Put, put) == UNAUTHENTICATED
            metadata = pb_grpc.MetadataStub(channel)
            squat = command(
                "blob_commit",
                {
                    "repo": "attacker/x",
                    "digest": digest,
                    "recipe": recipe,
                    "upload": None,
                    "now": 1,
                },
            )
            assert refused(metadata.Command, squat) == (UNAUTHENTICATED)
    # The victim's later push and every pull get the victim's bytes.
    spec = ImageSpec("victim/squat", "v1", 77, (CHUNK + 1000,))
    asyncio.run(_push(lab.gateway_url, [spec]))
    unchanged(lab, [*pushed, spec], members)


# -- 3. node re-pointing --------------------------------------------------------------------------
def test_node_repointing_and_removal_are_refused(
    lab: LocalCluster, pushed: list[ImageSpec]
) -> None:
    members = lab.members()
    join = command("member_join", {"id": "n1", "grpc": "127.0.0.1:1", "raft": "127.0.0.1:2"})
    drain = command("member_set_state", {"id": "n1", "state": "draining"})
    for i in range(lab.node_count):
        for channel, code in (
            (anonymous(lab, i), UNAUTHENTICATED),
            (lab.channel(i, "gateway"), DENIED),
        ):
            with channel:
                metadata = pb_grpc.MetadataStub(channel)
                admin = pb_grpc.AdminStub(channel)
                assert refused(metadata.Command, join) == code
                assert refused(metadata.Command, drain) == code
                for rpc, request in (
                    (admin.RemoveMember, pb.MemberRequest(id="n1", force=True)),
                    (admin.SetMemberState, pb.MemberRequest(id="n1", state="draining")),
                    (
                        admin.AddMember,
                        pb.MemberRequest(id="n9", grpc="127.0.0.1:1", raft="127.0.0.1:2"),
                    ),
                    (admin.Trigger, pb.TriggerRequest(role="repair")),
                ):
                    assert refused(rpc, request) == code
    # The next pushes still land on the real nodes.
    spec = ImageSpec("victim/after-repoint", "v1", 78, (2 * CHUNK + 5,))
    asyncio.run(_push(lab.gateway_url, [spec]))
    unchanged(lab, [*pushed, spec], members)


# -- 4. cross-repository reads and deletes -------------------------------------------------
def test_cross_repository_links_and_deletes_are_refused(
    lab: LocalCluster, pushed: list[ImageSpec]
) -> None:
    members = lab.members()
    victim = pushed[2]
    _, layer_digest, layer = victim.blobs()[1]
    recipe = {"size": len(layer), "chunks": [[hashlib.sha256(layer).hexdigest(), len(layer)]]}
    attacks = [
        command(
            "blob_commit",
            {"repo": "attacker/x", "digest": layer_digest, "recipe": recipe, "upload": None},
        ),
        command("blob_mount", {"repo": "attacker/x", "digest": layer_digest, "from": victim.repo}),
        command("tag_delete", {"repo": victim.repo, "tag": victim.tag}),
        command("manifest_delete", {"repo": victim.repo, "digest": victim.digest}),
        command("blob_unlink", {"repo": victim.repo, "digest": layer_digest}),
    ]
    for i in range(lab.node_count):
        with anonymous(lab, i) as channel:
            metadata = pb_grpc.MetadataStub(channel)
            for attack in attacks:
                assert refused(metadata.Command, attack) == UNAUTHENTICATED
            query = pb.MetadataRequest(
                op="blob_get",
                args=json.dumps({"repo": victim.repo, "digest": layer_digest}).encode(),
            )
            assert refused(metadata.Query, query) == UNAUTHENTICATED
    unchanged(lab, pushed, members)


# -- 5. secrets ---------------------------------------------------------------------------------
def test_secrets_are_private_and_required(lab: LocalCluster, tmp_path: Path) -> None:
    base = lab.base_dir
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE((base / "config").stat().st_mode) == 0o700
    for path in [base / "cluster.toml", *(base / "config").glob("*.toml")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Gateways and the admin CLI hold their role credential, never the cluster secret.
    for name in ("gateway-1.toml", "admin.toml"):
        assert lab.layout.secret not in (base / "config" / name).read_text()
    # A node or gateway without a secret refuses to start, naming the setting.
    for role, section in (
        ("node", {"data_dir": str(tmp_path / "n"), "grpc_listen": f"127.0.0.1:{free_port()}"}),
        ("gateway", {"listen": f"127.0.0.1:{free_port()}", "nodes": lab.node_grpc_addresses}),
    ):
        config = tmp_path / f"{role}.toml"
        config.write_text(to_toml({role: section}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
        done = subprocess.run(
            [sys.executable, "-m", "cargohold_cli", role, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 2, done.stderr
        assert "cluster.secret" in done.stderr
    # The admin CLI: refused without credentials, served with the dev admin config.
    argv = [sys.executable, "-m", "cargohold_cli", "admin"]
    status = ["status", "--json", "--nodes", lab.node_grpc(0)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    done = subprocess.run([*argv, *status], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "cluster.secret" in done.stderr
    with_config = [*argv, "--config", str(base / "config" / "admin.toml"), *status]
    done = subprocess.run(with_config, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["leader"] in {"n1", "n2", "n3"}


def test_a_conflicting_recipe_is_verified_never_silently_replaced(
    lab: LocalCluster, pushed: list[ImageSpec]
) -> None:
    """Defense in depth for reproduction 2: the first recipe of a digest stays. A push of
    the same bytes cut differently is verified against the recorded recipe and linked; a
    squatted digest (planted with a gateway credential, what a compromised gateway could
    do) makes the victim's push fail instead of answering 201 over someone else's bytes."""
    content = os.urandom(CHUNK + 3000)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    asyncio.run(_chunked_push(lab.gateway_url, "victim/split", digest, content, piece=100_000))
    asyncio.run(_chunked_push(lab.gateway_url, "victim/whole", digest, content, piece=None))
    for repo in ("victim/split", "victim/whole"):
        assert asyncio.run(_get(lab.gateway_url, repo, digest)) == (200, content)

    squatted = os.urandom(CHUNK)
    squatted_digest = "sha256:" + hashlib.sha256(squatted).hexdigest()
    evil = os.urandom(len(squatted))
    evil_id = hashlib.sha256(evil).digest()
    with lab.channel(0, "gateway") as channel:
        pb_grpc.ChunksStub(channel).Put(
            pb.PutChunkRequest(id=evil_id, data=evil, checksum=xxhash.xxh3_128_digest(evil)),
            timeout=10,
        )
        pb_grpc.MetadataStub(channel).Command(
            command(
                "blob_commit",
                {
                    "repo": "attacker/squat",
                    "digest": squatted_digest,
                    "recipe": {"size": len(evil), "chunks": [[evil_id.hex(), len(evil)]]},
                    "upload": None,
                    "now": 1,
                },
            ),
            timeout=10,
        )
    with pytest.raises(AssertionError, match="500"):
        asyncio.run(
            _chunked_push(lab.gateway_url, "victim/squat2", squatted_digest, squatted, None)
        )
    assert asyncio.run(_get(lab.gateway_url, "victim/squat2", squatted_digest))[0] == 404
    verify_images(lab.gateway_urls, pushed)


async def _chunked_push(base: str, repo: str, digest: str, data: bytes, piece: int | None) -> None:
    """POST, PATCHes of `piece` bytes (None: one PATCH), PUT ?digest=."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        step = piece or len(data)
        for start in range(0, len(data), step):
            url = location if location.startswith("http") else base + location
            end = min(len(data), start + step)
            headers = {
                "Content-Range": f"{start}-{end - 1}",
                "Content-Type": "application/octet-stream",
            }
            async with session.patch(url, data=data[start:end], headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                location = resp.headers["Location"]
        url = location if location.startswith("http") else base + location
        sep = "&" if "?" in url else "?"
        async with session.put(f"{url}{sep}digest={digest}") as resp:
            assert resp.status == 201, f"{resp.status} {await resp.text()}"


async def _get(base: str, repo: str, digest: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
            return resp.status, await resp.read()


def test_a_mutual_tls_cluster(tmp_path: Path) -> None:
    """The mTLS path end to end: a cluster whose nodes demand client certificates of the
    cluster CA (made by cargohold/certs.py), every process presenting its role's. Pushes
    and pulls work; plaintext and certificate-less callers never reach a service; a gateway
    certificate cannot delete chunks or change membership."""
    local = LocalCluster(tmp_path / "mtls", nodes=3, gateways=1, chunk_size=CHUNK, mtls=True)
    try:
        local.start(timeout=90)
        spec = ImageSpec("victim/mtls", "v1", 79, (CHUNK + 7,))
        asyncio.run(_push(local.gateway_url, [spec]))
        verify_images(local.gateway_urls, [spec])
        members = local.members()
        with anonymous(local, 0) as channel:
            code = refused(pb_grpc.AdminStub(channel).Status, pb.StatusRequest())
            assert code == grpc.StatusCode.UNAVAILABLE  # no TLS: no call reaches a service
        tls = local.base_dir / "tls"
        no_cert = grpc.ssl_channel_credentials(root_certificates=(tls / "ca.pem").read_bytes())
        with grpc.secure_channel(local.node_grpc(0), no_cert) as channel:
            code = refused(pb_grpc.AdminStub(channel).Status, pb.StatusRequest())
            assert code == grpc.StatusCode.UNAVAILABLE  # the handshake demands a certificate
        cid = hashlib.sha256(spec.blobs()[1][2][:CHUNK]).digest()
        with local.channel(0, "gateway") as channel:
            chunks = pb_grpc.ChunksStub(channel)
            assert refused(chunks.Delete, pb.DeleteChunksRequest(ids=[cid])) == DENIED
            admin = pb_grpc.AdminStub(channel)
            assert refused(admin.RemoveMember, pb.MemberRequest(id="n1", force=True)) == DENIED
        assert local.members() == members
        verify_images(local.gateway_urls, [spec])
    finally:
        local.stop()
