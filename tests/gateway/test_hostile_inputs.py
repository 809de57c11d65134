"""Malformed and hostile requests get a 4xx OCI error, never a 500 or a half-done commit.

One test per reproduction of issue 10 that the in-process gateway can show: deeply
nested and big-integer manifests, huge range numbers, names/tags/digests with a trailing
newline, a subject digest that could not be echoed in `OCI-Subject`; plus the `?tag=`
push of distribution-spec v1.1. Connection-level cases (bad request lines, HTTP/0.9)
need the real server and live in test_connection.py.
"""

from __future__ import annotations

import pytest
from test_manifests import REPO, codes, encode, image, link_all, put, sha

from cargohold.config import Config


async def test_deeply_nested_manifest_is_manifest_invalid(gw, fake_cluster) -> None:
    body = b"[" * 30_000 + b"]" * 30_000  # the issue used 100,000 of each: the same failure
    resp = await put(gw, "v1", body)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]
    assert fake_cluster.ops("command") == []


async def test_nesting_below_the_decoder_limit_is_refused_by_the_config_limit(
    gw, fake_cluster, gateway_cfg: Config
) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    nested: list = []
    for _ in range(gateway_cfg.gateway.max_manifest_depth):
        nested = [nested]
    doc["x"] = nested
    resp = await put(gw, "v1", encode(doc))
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]
    doc["x"] = [[1]]
    assert (await put(gw, "v1", encode(doc))).status == 201


@pytest.mark.parametrize(
    "number",
    [b"1" * 5000, b"-" + b"9" * 5000, b"9" * 40, b"1e99999"],
    ids=["5000 digits", "negative 5000 digits", "2**132", "1e99999"],
)
async def test_big_numbers_in_a_manifest_are_manifest_invalid(gw, fake_cluster, number) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc).replace(b'"size": 6', b'"size": ' + number, 1)
    assert body != encode(doc)
    resp = await put(gw, "v1", body)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]
    assert fake_cluster.ops("command") == []


async def test_a_big_integer_outside_descriptors_is_not_a_500(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)[:-1] + b', "x": ' + b"7" * 5000 + b"}"
    resp = await put(gw, "v1", body)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]


async def test_tag_with_a_trailing_newline_is_tag_invalid(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    resp = await gw.put(
        f"/v2/{REPO}/manifests/latest%0A",
        data=encode(doc),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 400
    assert await codes(resp) == ["TAG_INVALID"]
    assert fake_cluster.ops("command") == []


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/ok/repo/blobs/sha256:" + "a" * 64 + "%0A", "DIGEST_INVALID"),
        # Not a digest (it does not end where a digest must), so read as a bad tag.
        ("/v2/ok/repo/manifests/sha256:" + "a" * 64 + "%0A", "TAG_INVALID"),
    ],
)
async def test_digests_with_a_trailing_newline_are_refused(gw, path: str, code: str) -> None:
    resp = await gw.get(path)
    assert resp.status == 400
    assert await codes(resp) == [code]


async def test_a_name_with_a_newline_matches_no_route(gw) -> None:
    resp = await gw.get("/v2/ok/repo%0A/tags/list")
    assert resp.status == 404
    assert await codes(resp) == ["NOT_FOUND"]


async def test_subject_digest_with_a_newline_is_refused_before_commit(gw, fake_cluster) -> None:
    doc = image(subject={"mediaType": "x/y", "digest": sha(b"s") + "\n", "size": 1})
    link_all(fake_cluster, doc)
    resp = await put(gw, "v1", encode(doc))
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]
    assert fake_cluster.ops("command") == []


@pytest.mark.parametrize("n", ["9" * 5000, "1" * 19, "\u0661"])
async def test_page_size_numbers_are_bounded(gw, n: str) -> None:
    resp = await gw.get("/v2/_catalog", params={"n": n})
    assert resp.status == 400
    assert await codes(resp) == ["PAGINATION_NUMBER_INVALID"]


# -- ?tag= (distribution-spec v1.1) ---------------------------------------------------
async def test_put_by_digest_with_tags_creates_them_and_sends_oci_tag(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)
    digest = sha(body)
    resp = await gw.put(
        f"/v2/{REPO}/manifests/{digest}?tag=a&tag=b",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 201
    assert resp.headers.getall("OCI-Tag") == ["a", "b"]
    for tag in ("a", "b"):
        got = await gw.get(f"/v2/{REPO}/manifests/{tag}")
        assert got.status == 200
        assert await got.read() == body
    tags = await (await gw.get(f"/v2/{REPO}/tags/list")).json()
    assert sorted(tags["tags"]) == ["a", "b"]


async def test_put_with_an_invalid_query_tag_commits_nothing(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)
    resp = await gw.put(
        f"/v2/{REPO}/manifests/{sha(body)}?tag=good&tag=bad%0A",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 400
    assert await codes(resp) == ["TAG_INVALID"]
    assert fake_cluster.ops("command") == []


async def test_put_without_query_tags_sends_no_oci_tag(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    resp = await put(gw, "v1", encode(doc))
    assert resp.status == 201
    assert "OCI-Tag" not in resp.headers
