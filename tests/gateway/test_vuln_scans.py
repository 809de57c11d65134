"""Reports of images (gateway/vulns/scans.py) against an in-memory stand-in for the cluster:
matched from the SBOM referrer, stored as a referrer with the database's digest, reused
within `vulndb_refresh_seconds`, matched again for a new database; read-only without a
store (the admin CLI)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cargohold.config import PolicyConfig
from cargohold.metadata_api import (
    BlobCommit,
    ManifestDelete,
    ManifestInfo,
    ManifestPut,
    VulnDbInfo,
)
from cargohold.vulns.osv import IndexBuilder, encode_index
from cargohold.vulns.report import ANNOTATION_DB, REPORT_TYPE, SBOM_TYPE
from gateway.vulns.scans import Scans

OCI = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index_blob(fixed: str) -> bytes:
    builder = IndexBuilder()
    builder.add(
        {
            "id": "CVE-2099-7",
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": "flask"},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                    ],
                }
            ],
            "database_specific": {"severity": "HIGH"},
        }
    )
    return encode_index(builder.index())


class FakeMeta:
    """The metadata facade's calls Scans makes, over dicts; `blobs` holds bytes by digest."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, dict[str, Any]] = {}  # digest -> {subject, type, notes}
        self.db: VulnDbInfo | None = None
        self.referrer_queries = 0
        self.deleted: list[str] = []

    def put_blob(self, data: bytes) -> str:
        self.blobs[sha(data)] = data
        return sha(data)

    def put_db(self, data: bytes, generation: int) -> None:
        digest = self.put_blob(data)
        self.db = VulnDbInfo(
            generation, digest, {"size": len(data), "chunks": [[digest, 0]]}, 1.0, "t", {}
        )

    async def vulndb_get(self) -> VulnDbInfo | None:
        return self.db

    async def referrers(self, repo: str, digest: str, artifact_type: str | None) -> list[Any]:
        self.referrer_queries += 1
        return [
            {"digest": d, "artifactType": m["type"], "annotations": m["notes"]}
            for d, m in sorted(self.manifests.items())
            if m["subject"] == digest and m["type"] == artifact_type
        ]

    async def manifest_get(self, repo: str, digest: str) -> ManifestInfo:
        data = self.blobs[digest]
        return ManifestInfo(
            digest, OCI, len(data), {"size": len(data), "chunks": [[digest, 0]]}, None, None, None
        )

    async def blob_get(self, repo: str, digest: str) -> Any:
        return {"size": len(self.blobs[digest]), "chunks": [[digest, 0]]}

    async def call(self, request: Any) -> None:
        if isinstance(request, ManifestPut):
            self.manifests[request.digest] = {
                "subject": request.subject,
                "type": request.artifact_type,
                "notes": request.annotations,
            }
        elif isinstance(request, ManifestDelete):
            self.deleted.append(request.digest)
            self.manifests.pop(request.digest)
        else:
            assert isinstance(request, BlobCommit)


async def test_reports_are_stored_reused_and_rematched_for_a_new_database() -> None:
    meta = FakeMeta()

    async def read_all(recipe: dict[str, Any]) -> bytes:
        return meta.blobs[recipe["chunks"][0][0]]

    async def store(data: bytes) -> dict[str, Any]:
        meta.blobs[sha(data)] = data
        return {"size": len(data), "chunks": [[sha(data), len(data)]]}

    image_body = b'{"schemaVersion":2,"image":true}'
    image = await FakeMeta.manifest_get(meta, "r", meta.put_blob(image_body))
    sbom_doc = json.dumps(
        {"components": [{"name": "Flask", "version": "2.0.0", "purl": "pkg:pypi/flask@2.0.0"}]}
    ).encode()
    sbom_manifest = json.dumps({"layers": [{"digest": meta.put_blob(sbom_doc)}]}).encode()
    sbom = meta.put_blob(sbom_manifest)
    meta.manifests[sbom] = {"subject": image.digest, "type": SBOM_TYPE, "notes": {}}
    meta.put_db(index_blob("2.1.0"), 1)
    cfg = PolicyConfig(vulndb_refresh_seconds=3600.0)
    scans = Scans(cfg, meta, read_all, store)  # type: ignore[arg-type]

    first = await scans.report("r", image)
    assert first is not None and first.digest is not None
    assert [v["id"] for v in first.doc["vulnerabilities"]] == ["CVE-2099-7"]
    assert meta.manifests[first.digest]["type"] == REPORT_TYPE
    assert meta.manifests[first.digest]["notes"][ANNOTATION_DB] == meta.db.digest  # type: ignore[union-attr]
    asked = meta.referrer_queries
    assert await scans.report("r", image) == first  # reused: no query
    assert meta.referrer_queries == asked

    # A new database (the version is fixed): matched again at once, the old report deleted.
    meta.put_db(index_blob("2.0.0"), 2)
    scans.database.invalidate()
    second = await scans.report("r", image)
    assert second is not None and second.doc["vulnerabilities"] == []
    assert meta.deleted == [first.digest] and second.digest in meta.manifests

    # Read-only (the CLI): matches, stores nothing; no SBOM: not scanned.
    readonly = Scans(cfg, meta, read_all, None)  # type: ignore[arg-type]
    meta.put_db(index_blob("9.0"), 3)
    third = await readonly.report("r", image)
    assert third is not None and third.digest is None and len(third.doc["vulnerabilities"]) == 1
    other = await FakeMeta.manifest_get(meta, "r", meta.put_blob(b'{"other":1}'))
    assert await readonly.report("r", other) is None
