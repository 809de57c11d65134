"""The vulnerability report (docs/supply-chain.md "Vulnerability reports"): a JSON document
stored as an OCI 1.1 referrer of the image it judges.

The report manifest: an OCI image manifest with `artifactType` REPORT_TYPE, the empty
config, one layer (mediaType REPORT_TYPE) holding the report JSON, `subject` the image
manifest, and annotations naming what it was matched from (ANNOTATION_DB: the database
index digest; ANNOTATION_SBOMS: the SBOM manifest digests, comma-separated) and its counts
(ANNOTATION_SUMMARY). Everything in it is a function of (image, SBOMs, database), so two
gateways matching the same image at once store the same bytes under the same digest.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cargohold.vulns.match import MatchResult
from cargohold.vulns.osv import RANK, SEVERITIES

REPORT_TYPE = "application/vnd.cargohold.vulnerability-report+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
ANNOTATION_DB = "dev.cargohold.vulndb.digest"
ANNOTATION_SBOMS = "dev.cargohold.sbom.digests"
ANNOTATION_SUMMARY = "dev.cargohold.vulnerabilities"
SCHEMA = 1


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(findings: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f["severity"]] += 1
    return counts


def build_report(
    repo: str,
    subject: str,
    sboms: list[str],
    db: dict[str, Any],
    result: MatchResult,
) -> dict[str, Any]:
    """The report document. `db`: {digest, generation, imported_at, source}."""
    findings = [f.to_json() for f in result.findings]
    return {
        "schemaVersion": SCHEMA,
        "mediaType": REPORT_TYPE,
        "repository": repo,
        "subject": subject,
        "sboms": sorted(sboms),
        "database": {
            "digest": db["digest"],
            "generation": db["generation"],
            "imported_at": _when(db["imported_at"]),
            "source": db.get("source", ""),
        },
        "packages": result.packages,
        "unordered_versions": result.unordered,
        "summary": summary(findings),
        "vulnerabilities": findings,
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def report_manifest(subject: dict[str, Any], report: bytes, doc: dict[str, Any]) -> bytes:
    """The referrer manifest holding `report` (its encoded document `doc`)."""
    counts = doc["summary"]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": REPORT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": sha256(EMPTY), "size": len(EMPTY)},
        "layers": [{"mediaType": REPORT_TYPE, "digest": sha256(report), "size": len(report)}],
        "subject": {
            "mediaType": subject["mediaType"],
            "digest": subject["digest"],
            "size": subject["size"],
        },
        "annotations": {
            "org.opencontainers.image.created": doc["database"]["imported_at"],
            ANNOTATION_DB: doc["database"]["digest"],
            ANNOTATION_SBOMS: ",".join(doc["sboms"]),
            ANNOTATION_SUMMARY: ",".join(f"{k}={counts[k]}" for k in SEVERITIES),
        },
    }
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def blocking(
    doc: dict[str, Any], block_severity: str, allowlist: frozenset[str]
) -> list[dict[str, Any]]:
    """The report's findings at or above `block_severity` that no allowlist entry (the
    advisory id or one of its aliases) excuses; [] when `block_severity` is "none"."""
    if block_severity == "none":
        return []
    floor = RANK[block_severity]
    return [
        f
        for f in doc.get("vulnerabilities", [])
        if RANK.get(f["severity"], 0) >= floor
        and f["id"] not in allowlist
        and not allowlist.intersection(f.get("aliases") or ())
    ]


def describe(findings: list[dict[str, Any]], most: int = 10) -> str:
    """`CVE-2024-1 (high, openssl 3.0.11-1), ...`: CVE ids first where an advisory has one."""
    seen: dict[str, str] = {}
    for f in findings:
        cves = [a for a in f.get("aliases") or () if a.startswith("CVE-")]
        name = cves[0] if cves and not f["id"].startswith("CVE-") else f["id"]
        seen.setdefault(name, f"{name} ({f['severity']}, {f['package']} {f['version']})")
    parts = list(seen.values())
    more = f" and {len(parts) - most} more" if len(parts) > most else ""
    return ", ".join(parts[:most]) + more
