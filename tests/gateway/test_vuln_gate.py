"""The vulnerability pull policy (gateway/vulns/gate.py) decided against a stand-in for the
reports: what it refuses, what it names, and what stays pullable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cargohold.errors import ScanFailed, Unavailable, VulnerabilityPolicy
from cargohold.metadata_api import ManifestInfo
from gateway.vulns.gate import VulnGate
from gateway.vulns.scans import Report

IMAGE = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "x",
            "size": 1,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "y", "size": 1}
        ],
    }
).encode()
INDEX = json.dumps({"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "a" * 64}]}).encode()
SBOM = json.dumps(
    {
        "schemaVersion": 2,
        "artifactType": "application/vnd.cyclonedx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "x", "size": 2},
        "layers": [{"mediaType": "application/vnd.cyclonedx+json", "digest": "y", "size": 1}],
    }
).encode()
RECORD = ManifestInfo(
    "sha256:" + "1" * 64,
    "application/vnd.oci.image.manifest.v1+json",
    1,
    {"size": 1, "chunks": []},
    None,
    None,
    None,
)


def finding(ident: str, severity: str, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "id": ident,
        "aliases": list(aliases),
        "severity": severity,
        "package": "p",
        "version": "1",
    }


class FakeScans:
    def __init__(self, report: Report | Exception | None) -> None:
        self.answer = report
        self.asked = 0

    async def report(self, repo: str, image: ManifestInfo) -> Report | None:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


REPORT = Report(
    "sha256:" + "9" * 64,
    {
        "vulnerabilities": [
            finding("DSA-1", "critical", ("CVE-2024-1",)),
            finding("GHSA-x", "medium", ("CVE-2024-2",)),
            finding("CVE-2024-3", "low"),
        ]
    },
)


async def check(
    scans: Any,
    body: bytes = IMAGE,
    block: str = "high",
    allow: frozenset[str] = frozenset(),
    unscanned: str = "allow",
) -> None:
    await VulnGate(scans).check("prod", block, allow, unscanned, "prod/app", RECORD, body)


async def test_a_finding_at_or_above_the_threshold_refuses_naming_cve_ids() -> None:
    with pytest.raises(VulnerabilityPolicy) as refused:
        await check(FakeScans(REPORT), block="high")
    err = refused.value
    assert (err.status, err.code) == (403, "DENIED")
    assert err.message == (
        "pull refused by the vulnerability policy of namespace prod: "
        "vulnerable at or above high: CVE-2024-1 (critical, p 1)"
    )
    assert err.detail["vulnerabilities"] == ["DSA-1"] and err.detail["report"] == REPORT.digest
    with pytest.raises(VulnerabilityPolicy) as refused:
        await check(FakeScans(REPORT), block="low")
    assert "CVE-2024-1" in refused.value.message and "CVE-2024-2" in refused.value.message
    assert "CVE-2024-3 (low" in refused.value.message


async def test_the_allowlist_excuses_by_id_or_alias_and_none_is_off() -> None:
    await check(FakeScans(REPORT), block="medium", allow=frozenset({"CVE-2024-1", "GHSA-x"}))
    await check(FakeScans(REPORT), block="high", allow=frozenset({"DSA-1"}))
    scans = FakeScans(REPORT)
    await check(scans, block="none")
    assert scans.asked == 0  # no policy: the report is not even read


async def test_artifacts_and_indexes_stay_pullable() -> None:
    scans = FakeScans(REPORT)
    await check(scans, body=SBOM, block="low", unscanned="deny")
    await check(scans, body=INDEX, block="low", unscanned="deny")
    await check(scans, body=b"not json", block="low", unscanned="deny")
    assert scans.asked == 0


async def test_not_scanned_follows_the_rule() -> None:
    await check(FakeScans(None), block="high", unscanned="allow")
    with pytest.raises(VulnerabilityPolicy, match="not scanned"):
        await check(FakeScans(None), block="none", unscanned="deny")
    # An SBOM that cannot be read counts as not scanned ...
    with pytest.raises(VulnerabilityPolicy, match="not scanned"):
        await check(FakeScans(ScanFailed("not JSON")), unscanned="deny")
    await check(FakeScans(ScanFailed("not JSON")), unscanned="allow")
    # ... but a cluster that cannot answer is a 503, never a silent allow.
    with pytest.raises(Unavailable):
        await check(FakeScans(Unavailable("no leader")), unscanned="allow")
