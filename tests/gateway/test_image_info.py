"""What search reads of a config pushed through the gateway (gateway/image_info.py
`note_pushed_config`): a config uploaded in one body is parsed as it arrives, so the
manifest PUT naming it asks the nodes for neither its recipe nor its bytes; one uploaded
in pieces is read back as before; either way search finds the image by its labels and
platform. Over fake nodes and the real ClusterClient (tests/gateway/fakenodes.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, data_path

OCI = "application/vnd.oci.image.manifest.v1+json"
CONFIG = json.dumps(
    {"architecture": "riscv64", "os": "linux", "config": {"Labels": {"via": "upload"}}}
).encode()
LAYER = b"\x1f\x8b a layer's bytes"


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for value in data_path(3):
        yield value


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _upload(dp: DataPath, repo: str, data: bytes, patches: int = 1) -> str:
    """A docker-style push of `data`: POST, `patches` PATCHes, PUT."""
    resp = await dp.http.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    location = resp.headers["Location"]
    step = -(-len(data) // patches)
    for offset in range(0, len(data), step):
        resp = await dp.http.patch(location, data=data[offset : offset + step])
        assert resp.status == 202, await resp.text()
    resp = await dp.http.put(location, params={"digest": _sha(data)})
    assert resp.status == 201, await resp.text()
    return _sha(data)


def _manifest(layers: bool = True) -> bytes:
    """An OCI image manifest naming CONFIG and, with `layers`, LAYER."""
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": _sha(LAYER),
        "size": len(LAYER),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _sha(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [layer] if layers else [],
    }
    return json.dumps(manifest).encode()


async def _manifest_put(dp: DataPath, repo: str, tag: str) -> None:
    resp = await dp.http.put(
        f"/v2/{repo}/manifests/{tag}", data=_manifest(), headers={"Content-Type": OCI}
    )
    assert resp.status == 201, await resp.text()


async def _found(dp: DataPath, **params: str) -> list[str]:
    resp = await dp.http.get("/_cargohold/api/v1/search", params=params)
    assert resp.status == 200, await resp.text()
    return [f"{i['repository']}:{i['tag']}" for i in (await resp.json())["items"]]


async def test_a_config_pushed_in_one_body_is_not_read_back(dp: DataPath) -> None:
    await _upload(dp, "acme/web", CONFIG)
    await _upload(dp, "acme/web", LAYER)
    dp.nodes.state.queries.clear()
    gets = sum(node.gets for node in dp.nodes.nodes)
    await _manifest_put(dp, "acme/web", "1")
    assert "blob_get" not in dp.nodes.state.queries
    assert sum(node.gets for node in dp.nodes.nodes) == gets  # no chunk read either
    assert await _found(dp, label="via=upload") == ["acme/web:1"]
    assert await _found(dp, platform="linux/riscv64") == ["acme/web:1"]


async def test_a_config_pushed_in_pieces_is_read_back(dp: DataPath) -> None:
    """The first PATCH's bytes are not the whole config (their digest is not its digest):
    nothing asks for what was kept of them, and the manifest PUT reads the config."""
    await _upload(dp, "acme/web", CONFIG, patches=2)
    await _upload(dp, "acme/web", LAYER)
    dp.nodes.state.queries.clear()
    await _manifest_put(dp, "acme/web", "1")
    assert "blob_get" in dp.nodes.state.queries
    assert await _found(dp, label="via=upload") == ["acme/web:1"]


async def test_a_config_the_repository_may_not_use_is_still_refused(dp: DataPath) -> None:
    """Parsed when pushed to acme/web, the config is not linked to acme/db: the
    `manifest_put` apply refuses, whatever the gateway kept."""
    await _upload(dp, "acme/web", CONFIG)
    await _upload(dp, "acme/db", LAYER)
    resp = await dp.http.put(
        "/v2/acme/db/manifests/1", data=_manifest(layers=False), headers={"Content-Type": OCI}
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
