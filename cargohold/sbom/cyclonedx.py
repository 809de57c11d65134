"""The CycloneDX 1.5 document and the OCI referrer manifest that carries it.

Both are deterministic (no timestamp; the serial number is a UUID derived from the image
digest; components sorted by purl; compact JSON with sorted keys), so scanning the same
image twice stores the same blobs and the same referrer: a retried scan never leaves a
second SBOM. The layout is the contract of docs/supply-chain.md.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from cargohold.sbom.packages import Package

SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
SCANNER_NAME = "cargohold-scanner"
# Bumped when the scanner finds more or writes differently (the SBOM's bytes change).
SCANNER_VERSION = "1"
_NAMESPACE = uuid.UUID("6c9f0b7e-57a1-4b59-9a8e-3b8f0d1c2a11")


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def document(
    repo: str, image_digest: str, packages: Iterable[Package], os_release: dict[str, str]
) -> bytes:
    """The CycloneDX JSON of one image manifest."""
    components = []
    for package in packages:
        props = [
            ("cargohold:package-type", package.kind),
            *package.properties,
            ("cargohold:location", package.location),
        ]
        components.append(
            {
                "type": "library",
                "bom-ref": package.purl,
                "name": package.name,
                "version": package.version,
                "purl": package.purl,
                "properties": [{"name": k, "value": v} for k, v in props],
            }
        )
    metadata: dict[str, Any] = {
        "tools": {
            "components": [
                {"type": "application", "name": SCANNER_NAME, "version": SCANNER_VERSION}
            ]
        },
        "component": {
            "type": "container",
            "name": repo,
            "version": image_digest,
            "bom-ref": image_digest,
        },
    }
    release = [
        {"name": f"cargohold:os-release:{key}", "value": os_release[key]}
        for key in ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME")
        if key in os_release
    ]
    if release:
        metadata["properties"] = release
    return _dumps(
        {
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "serialNumber": f"urn:uuid:{uuid.uuid5(_NAMESPACE, image_digest)}",
            "metadata": metadata,
            "components": components,
        }
    )


def referrer_manifest(
    subject_media_type: str, subject_digest: str, subject_size: int, sbom: bytes, count: int
) -> bytes:
    """The OCI 1.1 image manifest whose `subject` is the scanned image manifest."""
    return _dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM_MEDIA_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": sha256(EMPTY_CONFIG),
                "size": len(EMPTY_CONFIG),
            },
            "layers": [{"mediaType": SBOM_MEDIA_TYPE, "digest": sha256(sbom), "size": len(sbom)}],
            "subject": {
                "mediaType": subject_media_type,
                "digest": subject_digest,
                "size": subject_size,
            },
            "annotations": {
                "dev.cargohold.sbom.scanner": f"{SCANNER_NAME}-{SCANNER_VERSION}",
                "dev.cargohold.sbom.components": str(count),
            },
        }
    )
