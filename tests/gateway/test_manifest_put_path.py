"""What a manifest PUT asks of the cluster before its one `manifest_put` command
(gateway/manifests.py, gateway/image_info.py), over the in-process FakeCluster (the real
state machine): no linearizable query precedes the command; the config's recipe is read
from a node's applied state, with the linearizable read as the fallback when that node
does not know the blob yet; a config read once is not read again (gateway/config_infos.py);
and the command alone still decides what must be linearizable (a config the repository may
not use is refused whatever the gateway read or cached)."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from cargohold.errors import BlobUnknown, Unavailable
from gateway.config_infos import ConfigInfos
from gateway.manifests import MANIFEST_CACHE
from tests.gateway.fakecluster import FakeCluster
from tests.gateway.test_search_api import found, push_image, sha

OCI = "application/vnd.oci.image.manifest.v1+json"


def _manifest_of(fake: FakeCluster, digest: str) -> bytes:
    record = fake.state.query("manifest_get", {"repo": "acme/web", "digest": digest})
    return b"".join(fake.chunks[c] for c, _ in record["recipe"]["chunks"])


def _before_command(fake: FakeCluster) -> list[tuple[str, bool]]:
    """(op, linearizable) of the queries made before the first manifest_put command."""
    first = next(i for i, (_, op, _) in enumerate(fake.calls) if op == "manifest_put")
    queries = sum(1 for kind, _, _ in fake.calls[:first] if kind == "query")
    return fake.query_modes[:queries]


async def test_a_tag_put_reads_nothing_linearizable_before_its_command(
    gw: TestClient, fake_cluster
) -> None:
    fake: FakeCluster = fake_cluster
    await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    assert _before_command(fake) == [("blob_get", False)]
    assert fake.ops("command") == ["manifest_put"]
    assert await found(gw, label="tier=web") == ["acme/web:1"]


async def test_a_config_read_once_is_not_read_again(gw: TestClient, fake_cluster) -> None:
    fake: FakeCluster = fake_cluster
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    body = _manifest_of(fake, digest)
    fake.calls.clear()
    fake.query_modes.clear()
    resp = await gw.put("/v2/acme/web/manifests/2", data=body, headers={"Content-Type": OCI})
    assert resp.status == 201, await resp.text()
    # No query at all: the config's info came from the gateway's cache.
    assert fake.query_modes == []
    assert fake.ops("command") == ["manifest_put"]
    assert sorted(await found(gw, label="tier=web")) == ["acme/web:1", "acme/web:2"]


async def test_a_node_behind_falls_back_to_the_linearizable_read(
    gw: TestClient, fake_cluster
) -> None:
    fake: FakeCluster = fake_cluster
    fake.stale_reads["blob_get"] = BlobUnknown("not applied here yet")
    await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    assert _before_command(fake) == [("blob_get", False), ("blob_get", True)]
    assert await found(gw, label="tier=web") == ["acme/web:1"]


async def test_the_command_refuses_a_config_the_repository_may_not_use(
    gw: TestClient, fake_cluster
) -> None:
    """The cache knows the config (pushed to acme/web) but acme/db has no link to it: the
    `manifest_put` apply refuses, as it did when a barrier read came first."""
    fake: FakeCluster = fake_cluster
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    body = _manifest_of(fake, digest)
    layer = b"layer of acme/web:1"  # push_image's layer, linked; its config not
    fake.link_blob("acme/db", sha(layer), await fake.store_bytes(layer))  # type: ignore[arg-type]
    resp = await gw.put("/v2/acme/db/manifests/1", data=body, headers={"Content-Type": OCI})
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["message"] == "missing=" + json.loads(body)["config"]["digest"]
    assert "acme/db" not in fake.state.tags


async def test_a_failed_chunk_write_fails_the_put_before_any_command(
    gw: TestClient, fake_cluster
) -> None:
    fake: FakeCluster = fake_cluster
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    body = _manifest_of(fake, digest)
    fake.calls.clear()

    async def refuse(data: bytes) -> dict[str, object]:
        raise Unavailable("write quorum not reachable")

    fake.store_bytes = refuse  # type: ignore[method-assign]
    # A body this gateway does not hold (else it writes nothing: the tests below).
    gw.server.app[MANIFEST_CACHE].discard(digest)
    resp = await gw.put("/v2/acme/web/manifests/2", data=body, headers={"Content-Type": OCI})
    assert resp.status == 503
    assert "manifest_put" not in fake.ops("command")
    assert "2" not in fake.state.tags["acme/web"]


def _flags(fake: FakeCluster) -> list[tuple[str | None, bool | None]]:
    """(tag, reuse_stored) of each manifest_put command sent, in order."""
    return [
        (args.get("tag"), args.get("reuse_stored"))
        for kind, op, args in fake.calls
        if (kind, op) == ("command", "manifest_put")
    ]


async def test_a_manifest_put_again_writes_no_chunks(gw: TestClient, fake_cluster) -> None:
    """Stored through this gateway: the PUT under new tags (and by digest) writes nothing
    and flags its commands; the state accepts, since the recipe is recorded as sent."""
    fake: FakeCluster = fake_cluster
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    assert _flags(fake) == [("1", None)]
    body = _manifest_of(fake, digest)
    fake.calls.clear()
    stored = fake.stored_bytes
    resp = await gw.put(
        "/v2/acme/web/manifests/2?tag=3&tag=4", data=body, headers={"Content-Type": OCI}
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers.getall("OCI-Tag") == ["3", "4"]
    resp = await gw.put(
        f"/v2/acme/web/manifests/{digest}", data=body, headers={"Content-Type": OCI}
    )
    assert resp.status == 201, await resp.text()
    assert fake.stored_bytes == stored
    assert _flags(fake) == [("2", True), ("3", True), ("4", True), (None, True)]
    assert fake.state.tags["acme/web"] == {t: digest for t in ("1", "2", "3", "4")}
    for tag in ("2", "4"):
        resp = await gw.get(f"/v2/acme/web/manifests/{tag}", headers={"Accept": OCI})
        assert await resp.read() == body


async def test_a_refused_reuse_writes_the_chunks_and_commits_again(
    gw: TestClient, fake_cluster
) -> None:
    """Deleted (through another gateway) and collected since this gateway cached the body:
    the flagged command is refused, the chunks are written and the tags committed."""
    fake: FakeCluster = fake_cluster
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    body = _manifest_of(fake, digest)
    fake.delete_manifest("acme/web", digest)
    fake.state.apply("gc_prune", {"blobs": [digest]})
    assert digest not in fake.state.blobs
    fake.chunks.clear()  # the sweep took its chunks
    fake.calls.clear()
    stored = fake.stored_bytes
    resp = await gw.put("/v2/acme/web/manifests/2?tag=3", data=body, headers={"Content-Type": OCI})
    assert resp.status == 201, await resp.text()
    assert fake.stored_bytes == stored + 1
    # Refused once, then unflagged for this tag and the next.
    assert _flags(fake) == [("2", True), ("2", None), ("3", None)]
    assert fake.state.tags["acme/web"] == {"2": digest, "3": digest}
    gw.server.app[MANIFEST_CACHE].discard(digest)  # read it from the (fake) nodes
    resp = await gw.get("/v2/acme/web/manifests/3", headers={"Accept": OCI})
    assert resp.status == 200 and await resp.read() == body
    assert sha(body) == digest


async def test_reuse_can_be_turned_off(gw: TestClient, fake_cluster, gateway_cfg) -> None:
    fake: FakeCluster = fake_cluster
    gateway_cfg.gateway.reuse_stored_manifests = False
    digest = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    body = _manifest_of(fake, digest)
    stored = fake.stored_bytes
    resp = await gw.put("/v2/acme/web/manifests/2", data=body, headers={"Content-Type": OCI})
    assert resp.status == 201, await resp.text()
    assert fake.stored_bytes == stored + 1
    assert _flags(fake)[-1] == ("2", None)


def test_config_infos_is_a_bounded_lru() -> None:
    infos = ConfigInfos(2)
    infos.put(sha(b"a"), {"platforms": ["linux/amd64"]})
    infos.put(sha(b"b"), None)  # not an image config: an answer too
    assert infos.lookup(sha(b"b")) == (True, None)
    assert infos.lookup(sha(b"a")) == (True, {"platforms": ["linux/amd64"]})
    infos.put(sha(b"c"), {})  # evicts b, the least recently used
    assert infos.lookup(sha(b"b")) == (False, None)
    assert len(infos) == 2
    off = ConfigInfos(0)
    off.put(sha(b"a"), {})
    assert off.lookup(sha(b"a")) == (False, None)
