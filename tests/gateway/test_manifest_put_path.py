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
    resp = await gw.put("/v2/acme/web/manifests/2", data=body, headers={"Content-Type": OCI})
    assert resp.status == 503
    assert "manifest_put" not in fake.ops("command")
    assert "2" not in fake.state.tags["acme/web"]


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
