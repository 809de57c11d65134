"""The vulnerability pull policy of a namespace (docs/supply-chain.md "Pull policy"):
`block_severity`, the allowlist and the rule for images not scanned.

`VulnGate.check` decides for one pulled manifest, after the signature policy
(gateway/signatures/policy.py calls it):
- what a runtime cannot run (`cosign.is_runnable`: signatures, SBOMs, reports, other
  artifacts) stays pullable, so tools can inspect why an image was refused;
- an image index passes: SBOMs describe the platform images, each judged when pulled
  (every client fetches the platform manifest after the index);
- an image without a report (no SBOM referrer, no database imported, or its SBOM could not
  be read) is "not scanned": refused when the namespace says `unscanned = deny`;
- otherwise its report for the current database (gateway/vulns/scans.py, matched now if
  missing) is read, and the findings at or above `block_severity` whose advisory id and
  aliases are all off the allowlist refuse it: 403 DENIED naming them (CVE ids first).
"""

from __future__ import annotations

import json
import logging

from cargohold.errors import RegistryError, ScanFailed, Unavailable, VulnerabilityPolicy
from cargohold.log import log_event
from cargohold.metadata_api import ManifestInfo
from cargohold.vulns.report import blocking, describe
from gateway.signatures import cosign
from gateway.vulns.scans import Report, Scans

logger = logging.getLogger("cargohold.gateway.vulns")


class VulnGate:
    def __init__(self, scans: Scans) -> None:
        self.scans = scans

    async def check(
        self,
        namespace: str,
        block_severity: str,
        allowlist: frozenset[str],
        unscanned: str,
        repo: str,
        record: ManifestInfo,
        body: bytes,
    ) -> None:
        """Return when the vulnerability policy lets `record` be pulled; VulnerabilityPolicy
        (403 DENIED) otherwise."""
        if block_severity == "none" and unscanned == "allow":
            return
        try:
            manifest = json.loads(body)
        except (ValueError, RecursionError):
            return
        if not isinstance(manifest, dict) or not cosign.is_runnable(manifest):
            return
        if "manifests" in manifest:
            return
        report: Report | None
        try:
            report = await self.scans.report(repo, record)
        except Unavailable:
            raise
        except (ScanFailed, RegistryError) as exc:
            log_event(
                logger,
                "vulns.report_failed",
                logging.WARNING,
                repo=repo,
                digest=record.digest,
                error=str(exc)[:200],
            )
            report = None
        detail: dict[str, object] = {"namespace": namespace, "digest": record.digest}
        if report is None:
            if unscanned == "deny":
                reason = "not scanned (no SBOM, or no vulnerability database imported)"
                self._refuse(namespace, record, reason, detail)
            return
        found = blocking(report.doc, block_severity, allowlist)
        if found:
            detail["vulnerabilities"] = sorted({f["id"] for f in found})
            detail["report"] = report.digest
            self._refuse(
                namespace,
                record,
                f"vulnerable at or above {block_severity}: {describe(found)}",
                detail,
            )

    @staticmethod
    def _refuse(
        namespace: str, record: ManifestInfo, reason: str, detail: dict[str, object]
    ) -> None:
        detail["reason"] = reason
        log_event(
            logger,
            "policy.refused",
            logging.INFO,
            namespace=namespace,
            digest=record.digest,
            reason=reason,
        )
        raise VulnerabilityPolicy(
            f"pull refused by the vulnerability policy of namespace {namespace}: {reason}",
            detail=detail,
        )
