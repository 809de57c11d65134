"""Digests, names and tags, placement: the shared domain rules."""

from __future__ import annotations

import hashlib

import pytest

from cargohold.digests import chunk_id_of, digest_of, is_digest, parse_digest
from cargohold.errors import DigestInvalid, NameInvalid, TagInvalid
from cargohold.names import validate_name, validate_tag
from cargohold.placement import rank_nodes, replicas_for


def test_parse_digest_accepts_sha256_and_sha512() -> None:
    assert parse_digest("sha256:" + "a" * 64) == ("sha256", "a" * 64)
    assert parse_digest("sha512:" + "0" * 128)[0] == "sha512"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "sha512:" + "a" * 64,
        "latest",
    ],
)
def test_parse_digest_rejects(bad: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(bad)


def test_is_digest_tells_tags_from_digests() -> None:
    assert is_digest("sha256:" + "a" * 64)
    assert is_digest("sha256:bad")  # digest-shaped: must then fail DIGEST_INVALID, not be a tag
    assert not is_digest("latest") and not is_digest("v1.2.3")


def test_digest_and_chunk_ids() -> None:
    assert digest_of(b"x") == "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert chunk_id_of(b"x") == hashlib.sha256(b"x").digest()


@pytest.mark.parametrize("name", ["a", "library/busybox", "a.b_c__d--e/f0", "x/y/z"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a//b", "-a", "a-", "a/", "a" * 256, "a__-b", "a:b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)


def test_tags() -> None:
    assert validate_tag("v1.0_rc-1") and validate_tag("_x") and validate_tag("a" * 128)
    for bad in ["", ".a", "-a", "a" * 129, "a/b", "a:b"]:
        with pytest.raises(TagInvalid):
            validate_tag(bad)


def test_placement_is_deterministic_and_stable() -> None:
    nodes = ["n1", "n2", "n3", "n4"]
    cid = chunk_id_of(b"chunk")
    assert replicas_for(cid, nodes, 3) == replicas_for(cid, list(reversed(nodes)), 3)
    assert len(replicas_for(cid, nodes[:2], 3)) == 2
    # Removing a node that is not a replica does not move the chunk (rendezvous property).
    owners = replicas_for(cid, nodes, 2)
    other = next(n for n in nodes if n not in owners)
    assert replicas_for(cid, [n for n in nodes if n != other], 2) == owners


def test_placement_spreads_load() -> None:
    counts = {n: 0 for n in ["n1", "n2", "n3"]}
    for i in range(3000):
        counts[rank_nodes(chunk_id_of(str(i).encode()), counts)[0]] += 1
    assert min(counts.values()) > 800
