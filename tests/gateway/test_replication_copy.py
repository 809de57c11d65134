"""gateway/replication/copy.py and sides.py's RemoteRegistry between two in-memory
registries (tests/gateway/fakeregistry.py): a multi-arch image with a referrer and a
cosign signature arrives with identical digests, HEAD first, mounted where it can be,
chunked when big, through a token-protected target; a corrupt blob is refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from fakeregistry import MANIFEST, FakeRegistry, image, index, referrer, remote_side

from cargohold.config import Config
from gateway.mirror.referrers import fallback_tag
from gateway.mirror.upstream import UpstreamFailed
from gateway.replication.copy import Copier
from gateway.replication.sides import RemoteRegistry

_OPEN: list[RemoteRegistry] = []


def remote(cfg: Config, reg: FakeRegistry) -> RemoteRegistry:
    side = remote_side(cfg, reg)
    _OPEN.append(side)
    return side


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeRegistry, FakeRegistry]]:
    src = await FakeRegistry(referrers_api=True).start()
    dst = await FakeRegistry(referrers_api=False, token=True).start()
    yield src, dst
    while _OPEN:
        await _OPEN.pop().close()
    await src.close()
    await dst.close()


def signed_index(reg: FakeRegistry, repo: str) -> tuple[str, str, str]:
    """An index of two images, an SBOM referrer of it and a cosign-style signature tag;
    (index digest, referrer digest, signature digest)."""
    children = [image(reg, repo, "amd64"), image(reg, repo, "arm64")]
    top = index(reg, repo, children, "v1")
    size = len(reg.manifests[repo][top][0])
    sbom = referrer(reg, repo, top, size)
    sig_body, sig = image(reg, repo, "signature", layers=1)
    reg.tags[repo][fallback_tag(top) + ".sig"] = sig
    assert json.loads(sig_body)["mediaType"] == MANIFEST
    return top, sbom, sig


async def test_a_signed_multi_arch_image_arrives_with_identical_digests(
    pair: tuple[FakeRegistry, FakeRegistry],
) -> None:
    src, dst = pair
    cfg = Config()
    top, sbom, sig = signed_index(src, "app")
    copier = Copier(cfg, remote(cfg, src), remote(cfg, dst))
    assert await copier.copy_tag("app", "mirror/app", "v1") == top
    assert dst.tags["mirror/app"]["v1"] == top
    for digest, (body, media_type) in src.manifests["app"].items():
        assert dst.manifests["mirror/app"][digest] == (body, media_type)  # every one, same bytes
    assert dst.blobs["mirror/app"] == src.blobs["app"]
    assert dst.tags["mirror/app"][fallback_tag(top) + ".sig"] == sig
    # The target has no referrers API: the referrers tag schema's index lists the SBOM.
    fallback = dst.manifests["mirror/app"][dst.tags["mirror/app"][fallback_tag(top)]][0]
    assert [d["digest"] for d in json.loads(fallback)["manifests"]] == [sbom]
    assert set(dst.token_scopes) == {"repository:mirror/app:pull,push"}
    # 2 images of 3 blobs, the SBOM's 2, the signature's 2.
    assert copier.stats.manifests_copied == 5 and copier.stats.blobs_copied == 10

    # Again: nothing is uploaded (HEAD first), the tag stays.
    uploads = dst.calls["POST uploads"]
    again = Copier(cfg, remote(cfg, src), remote(cfg, dst))
    await again.copy_tag("app", "mirror/app", "v1")
    assert dst.calls["POST uploads"] == uploads
    assert again.stats.manifests_copied == 0 and again.stats.manifests_present >= 1


async def test_blobs_are_mounted_across_repositories_and_chunked_when_big(
    pair: tuple[FakeRegistry, FakeRegistry],
) -> None:
    src, dst = pair
    cfg = Config()
    cfg.replication.upload_chunk_bytes = 1024  # two PATCHes per layer
    body, digest = image(src, "one", "chunked")  # layers of 1500 bytes
    src.tags.setdefault("one", {})["v1"] = digest
    src.blobs["two"] = dict(src.blobs["one"])
    src.put_manifest("two", body, MANIFEST, "v1")
    copier = Copier(cfg, remote(cfg, src), remote(cfg, dst))
    await copier.copy_tag("one", "one", "v1")
    assert dst.calls["PATCH uploads"] >= 2
    await copier.copy_tag("two", "two", "v1")
    assert copier.stats.blobs_mounted == 3 and dst.calls["mounted"] == 3
    assert dst.blobs["two"] == src.blobs["two"]


async def test_referrers_are_found_through_the_tag_schema_of_a_source_without_the_api(
    pair: tuple[FakeRegistry, FakeRegistry],
) -> None:
    _, old = pair  # no referrers API: what the first test wrote there is the source now
    src = await FakeRegistry(referrers_api=True).start()
    target = await FakeRegistry(referrers_api=True).start()
    try:
        cfg = Config()
        top, sbom, sig = signed_index(src, "app")
        await Copier(cfg, remote(cfg, src), remote(cfg, old)).copy_tag("app", "app", "v1")
        await Copier(cfg, remote(cfg, old), remote(cfg, target)).copy_tag("app", "back", "v1")
        assert {top, sbom, sig} <= set(target.manifests["back"])
        assert target.tags["back"]["v1"] == top
        # A target with the API gets no tag-schema index of its own.
        assert fallback_tag(top) not in target.tags["back"]
    finally:
        await src.close()
        await target.close()


async def test_a_corrupt_source_blob_is_refused_and_no_manifest_lands(
    pair: tuple[FakeRegistry, FakeRegistry],
) -> None:
    src, dst = pair
    cfg = Config()
    body, digest = image(src, "app", "bad")
    src.tags.setdefault("app", {})["v1"] = digest
    layer = json.loads(body)["layers"][0]["digest"]
    src.blobs["app"][layer] = b"flipped" + src.blobs["app"][layer][7:]
    with pytest.raises(UpstreamFailed):
        await Copier(cfg, remote(cfg, src), remote(cfg, dst)).copy_tag("app", "app", "v1")
    assert layer not in dst.blobs.get("app", {})
    assert not dst.manifests.get("app")
