"""The pass that records platforms and labels of manifests stored before search recorded
them (gateway/search_backfill.py), over the in-process FakeCluster (the real state machine):
an old image becomes findable by label and platform, an old index by platform, an artifact
is marked looked-at, an unreadable config is left for the next pass, and a second pass finds
nothing to do."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from gateway.context import CONTEXT
from gateway.search_backfill import InfoBackfill
from tests.gateway.fakecluster import FakeCluster
from tests.gateway.test_search_api import found, push_image, sha

INDEX = "application/vnd.oci.image.index.v1+json"
OCI = "application/vnd.oci.image.manifest.v1+json"


async def test_a_pass_records_what_old_pushes_lack(gw: TestClient, fake_cluster) -> None:
    fake: FakeCluster = fake_cluster
    web = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    db = await push_image(gw, fake, "acme/db", "1", "amd64", {"tier": "db"})
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": web,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64"},
                }
            ],
        }
    ).encode()
    resp = await gw.put("/v2/acme/web/manifests/all", data=index, headers={"Content-Type": INDEX})
    assert resp.status == 201, await resp.text()
    config = b'{"kind": "not an image"}'
    fake.link_blob("acme/web", sha(config), await fake.store_bytes(config))  # type: ignore[arg-type]
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI,
            "config": {
                "mediaType": "application/vnd.example.thing",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    resp = await gw.put(
        "/v2/acme/web/manifests/thing", data=artifact, headers={"Content-Type": OCI}
    )
    assert resp.status == 201, await resp.text()
    state = fake.state
    # As if pushed before search recorded `image_info`; acme/db's config is unreadable now.
    state.image_info.clear()
    state._search = None
    db_config = [d for d in state.links["acme/db"] if d not in (db,)]
    for digest in db_config:
        state.links["acme/db"].discard(digest)
    assert await found(gw, label="tier=web") == []
    assert await found(gw, platform="linux/arm64") == []

    backfill = InfoBackfill(gw.app[CONTEXT])
    counts = await backfill.run_pass()
    assert counts == {"looked_at": 4, "recorded": 3, "unread": 1}
    assert state.image_info[sha(artifact)] == "{}"  # an artifact: looked at, nothing to index
    assert await found(gw, label="tier=web") == ["acme/web:1"]
    assert await found(gw, platform="linux/arm64") == ["acme/web:1", "acme/web:all"]
    assert await found(gw, label="tier=db") == []
    # The unreadable one is looked at again by the next pass; nothing else is.
    for digest in db_config:
        state.links["acme/db"].add(digest)
    assert await backfill.run_pass() == {"looked_at": 1, "recorded": 1, "unread": 0}
    assert await found(gw, label="tier=db") == ["acme/db:1"]
    assert await backfill.run_pass() == {"looked_at": 0, "recorded": 0, "unread": 0}
