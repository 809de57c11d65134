"""The vulnerability policy and database pointer in the replicated state (`vuln_policy_put`,
`vulndb_put`, `vulndb_get`, `artifacts_list`): validation, snapshots, and GC holding the
current database's blob."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from cargohold.errors import DigestInvalid, NotFound, RequestInvalid
from node.metadata.state import MetadataState

SBOM = "application/vnd.cyclonedx+json"


def _blob(data: bytes) -> tuple[str, dict[str, Any]]:
    h = hashlib.sha256(data).hexdigest()
    return "sha256:" + h, {"size": len(data), "chunks": [[h, len(data)]]}


def _state() -> MetadataState:
    st = MetadataState()
    st.apply("namespace_put", {"name": "prod", "visibility": "private"})
    return st


def test_the_policy_is_validated_listed_and_removed_when_back_to_defaults() -> None:
    st = _state()
    put = {"namespace": "prod", "block_severity": "high", "allowlist": ["CVE-2024-1"]}
    with pytest.raises(NotFound):
        st.apply("vuln_policy_put", {**put, "namespace": "other"})
    for bad in ({"block_severity": "severe"}, {"unscanned": "maybe"}, {"allowlist": ["no spaces"]}):
        with pytest.raises(RequestInvalid):
            st.apply("vuln_policy_put", {**put, **bad})
    st.apply("vuln_policy_put", {**put, "unscanned": "deny"})
    assert st.query("trust_list", {}) == [
        {
            "namespace": "prod",
            "keys": {},
            "require_signature": False,
            "block_severity": "high",
            "allowlist": ["CVE-2024-1"],
            "unscanned": "deny",
        }
    ]
    copy = MetadataState()
    copy.load(st.dump())
    assert copy.query("trust_list", {}) == st.query("trust_list", {})
    st.apply("vuln_policy_put", {"namespace": "prod", "block_severity": "none"})
    assert st.query("trust_list", {}) == []
    assert "vuln_policy" not in st.snapshot() or not st.snapshot()["vuln_policy"]


def test_the_database_pointer_generations_and_snapshots() -> None:
    st = _state()
    assert st.query("vulndb_get", {}) is None
    d1, r1 = _blob(b"index one")
    d2, r2 = _blob(b"index two")
    put = {"now": 10.0, "source": "Debian.zip", "stats": {"advisories": 3}}
    assert st.apply("vulndb_put", {"digest": d1, "recipe": r1, **put}) == {"generation": 1}
    # A retry (or the same database again) changes nothing.
    assert st.apply("vulndb_put", {"digest": d1, "recipe": r1, **put}) == {"generation": 1}
    assert st.apply("vulndb_put", {"digest": d2, "recipe": r2, **put}) == {"generation": 2}
    got = st.query("vulndb_get", {})
    assert got == {
        "generation": 2,
        "digest": d2,
        "recipe": r2,
        "imported_at": 10.0,
        "source": "Debian.zip",
        "stats": {"advisories": 3},
    }
    copy = MetadataState()
    copy.load(st.dump())
    assert copy.query("vulndb_get", {}) == got
    assert copy.blob_bytes == st.blob_bytes == len(b"index one") + len(b"index two")
    # GC prunes the replaced index, never the current one (neither is linked anywhere).
    assert st.apply("gc_prune", {"blobs": [d1, d2]}) == {"pruned": 1}
    assert st.query("vulndb_get", {})["digest"] == d2
    with pytest.raises(DigestInvalid):
        st.apply("vulndb_put", {"digest": "sha256:nope", "recipe": r1, **put})


def test_artifacts_list_names_the_sboms_and_their_subjects() -> None:
    st = _state()
    repo = "prod/app"
    config, config_recipe = _blob(b"{}")
    st.apply("blob_commit", {"repo": repo, "digest": config, "recipe": config_recipe, "now": 1.0})
    image = b'{"schemaVersion":2,"image":1}'
    image_digest, image_recipe = _blob(image)
    st.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": image_digest,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "recipe": image_recipe,
            "blobs": [config],
        },
    )
    sbom = b'{"schemaVersion":2,"sbom":1}'
    sbom_digest, sbom_recipe = _blob(sbom)
    st.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": sbom_digest,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "recipe": sbom_recipe,
            "blobs": [config],
            "subject": image_digest,
            "artifact_type": SBOM,
        },
    )
    listed = st.query("artifacts_list", {"repo": repo, "artifact_type": SBOM})
    assert listed == {"artifacts": [[sbom_digest, image_digest, {}]]}
    other = st.query("artifacts_list", {"repo": repo, "artifact_type": "x/y"})
    assert other == {"artifacts": []}
    assert st.query("artifacts_list", {"repo": "none", "artifact_type": SBOM}) == other
