"""Parsing and validating pushed manifests: what a `PUT /manifests/` body references.

Pure functions, no I/O. `parse_manifest(body, content_type)` accepts the four schema-2
formats clients push:

- OCI image manifest (`application/vnd.oci.image.manifest.v1+json`), including artifacts
  (`artifactType`, `subject`, `layers: []`, the empty descriptor as config) and bodies
  without a `mediaType` field (the `Content-Type` header, or the body's shape, decides);
- OCI image index (`application/vnd.oci.image.index.v1+json`);
- Docker image manifest v2 schema 2 and Docker manifest list.

The media type stored (and echoed on every GET) is the body's `mediaType`, else the
request's `Content-Type` (parameters dropped), else the type the shape implies. A body
`mediaType` that contradicts a specific `Content-Type` is `MANIFEST_INVALID`; a generic
`Content-Type` (`application/json`, `application/octet-stream`, none) never contradicts.
Docker schema 1 and unknown manifest types are refused (`MANIFEST_INVALID`).

What a manifest references (the `manifest_put` command's arguments):
- `blobs`: config + layers, except layers with `urls` (foreign, non-distributable);
- `manifests`: an index's children;
- `subject`: recorded for the referrers API but never required to exist;
- `artifact_type`: `artifactType`, else the config's media type (the referrers rule).

Hostile bodies are `MANIFEST_INVALID` too, never a crash: JSON nested deeper than
`max_depth` (`gateway.max_manifest_depth`; the decoder itself stops near 1,000 levels),
integers Python refuses to convert (4,300+ digits), descriptor sizes outside 0..2**63-1,
and digests with anything after them (a trailing newline would later break the
`OCI-Subject` header after the commit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cargohold.digests import parse_digest
from cargohold.errors import DigestInvalid, ManifestInvalid
from cargohold.metadata_api import ManifestPut, Recipe

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES
# Descriptor sizes are int64 in the image-spec.
_MAX_SIZE = 2**63 - 1
DEFAULT_MAX_DEPTH = 32
# Content-Types that say nothing about the manifest format.
_GENERIC_TYPES = ("", "application/json", "application/octet-stream", "text/plain")


# Config media types of container images (the SBOM scanner scans only these).
IMAGE_CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


def is_filesystem_layer(media_type: str) -> bool:
    """A layer that is a (compressed) tar of files: OCI `...layer.v1.tar[+gzip|+zstd]`
    (non-distributable too) and Docker `...rootfs.diff.tar.gzip` (foreign too)."""
    return ".tar" in media_type or media_type.endswith("/tar")


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    # An image manifest with at least one filesystem layer (not an artifact, a signature
    # or a referrer): what the SBOM scanner scans.
    scannable: bool = False


def put_command(
    repo: str,
    digest: str,
    media_type: str,
    recipe: dict[str, Any],
    parsed: ParsedManifest,
    tag: str | None,
    manifests: Iterable[str] | None = None,
    **extra: Any,
) -> ManifestPut:
    """The `manifest_put` storing a parsed manifest whose bytes are stored as `recipe`:
    what it names comes from `parsed` (its child `manifests` narrowed where only some are
    stored, as the mirror does); `extra` are the caller's own fields (immutable rules,
    audit actor, search info, scan)."""
    return ManifestPut(
        repo=repo,
        digest=digest,
        media_type=media_type,
        recipe=Recipe(size=recipe["size"], chunks=recipe["chunks"]),
        blobs=tuple(parsed.blobs),
        manifests=tuple(parsed.manifests if manifests is None else manifests),
        subject=parsed.subject,
        artifact_type=parsed.artifact_type,
        annotations=parsed.annotations,
        tag=tag,
        now=time.time(),
        **extra,
    )


def base_media_type(content_type: str | None) -> str:
    """`type/subtype` of a Content-Type header, parameters and case of the type dropped."""
    return (content_type or "").split(";", 1)[0].strip()


def _invalid(reason: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid(f"manifest invalid: {reason}", detail={"reason": reason, **detail})


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType missing")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest missing")
    try:
        parse_digest(digest)
    except DigestInvalid:
        raise _invalid(f"{where}.digest invalid", digest=digest) from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
        raise _invalid(f"{where}.size invalid")
    urls = value.get("urls")
    if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise _invalid(f"{where}.urls invalid")
    _annotations(value.get("annotations"), f"{where}.annotations")
    return value


def _descriptors(value: Any, where: str, required: bool = True) -> list[dict[str, Any]]:
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{where} is not a list")
    return [_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must map strings to strings")
    return value


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(f"{key} must be a non-empty string")
    return value


def _decide_media_type(doc: dict[str, Any], content_type: str | None) -> str:
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    header_type = base_media_type(content_type)
    if header_type in _GENERIC_TYPES:
        header_type = ""
    if body_type and header_type and body_type != header_type:
        raise _invalid(
            "Content-Type does not match the manifest mediaType",
            content_type=header_type,
            media_type=body_type,
        )
    media_type = body_type or header_type
    if not media_type:
        # No type anywhere: an OCI manifest or index told apart by its shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1:
        raise _invalid("docker schema 1 manifests are not supported", media_type=media_type)
    if media_type not in MANIFEST_TYPES:
        raise _invalid("unsupported manifest media type", media_type=media_type)
    if media_type in (DOCKER_MANIFEST, DOCKER_LIST) and body_type != media_type:
        raise _invalid("docker manifests must carry their mediaType", media_type=media_type)
    return media_type


def _depth(doc: Any) -> int:
    """How deeply arrays and objects nest in a decoded document (iterative, no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, list):
            items = value
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((item, level + 1) for item in items if isinstance(item, (dict, list)))
    return deepest


def parse_manifest(
    body: bytes, content_type: str | None, max_depth: int = DEFAULT_MAX_DEPTH
) -> ParsedManifest:
    """Validate a pushed manifest and collect what it references; MANIFEST_INVALID if bad."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _invalid("JSON nested too deeply", max_depth=max_depth) from None
    except (UnicodeDecodeError, ValueError) as exc:
        # ValueError covers JSONDecodeError and integers past Python's digit limit.
        raise _invalid("body is not JSON", error=str(exc)[:200]) from None
    if _depth(doc) > max_depth:
        raise _invalid("JSON nested too deeply", max_depth=max_depth)
    if not isinstance(doc, dict):
        raise _invalid("body is not a JSON object")
    if doc.get("schemaVersion") != 2 or isinstance(doc.get("schemaVersion"), bool):
        raise _invalid("schemaVersion must be 2")
    media_type = _decide_media_type(doc, content_type)
    parsed = ParsedManifest(
        media_type=media_type,
        artifact_type=_optional_str(doc, "artifactType"),
        annotations=_annotations(doc.get("annotations"), "annotations"),
    )
    if "subject" in doc and doc["subject"] is not None:
        parsed.subject = _descriptor(doc["subject"], "subject")["digest"]
    if media_type in IMAGE_TYPES:
        config = _descriptor(doc.get("config"), "config")
        layers = _descriptors(doc.get("layers"), "layers", required=media_type == DOCKER_MANIFEST)
        parsed.blobs = _unique(
            [config["digest"]] + [d["digest"] for d in layers if not d.get("urls")]
        )
        if parsed.artifact_type is None:
            parsed.artifact_type = config["mediaType"]
        parsed.scannable = (
            parsed.subject is None
            and parsed.artifact_type in IMAGE_CONFIG_TYPES
            and any(is_filesystem_layer(str(d["mediaType"])) for d in layers)
        )
    else:
        children = _descriptors(doc.get("manifests"), "manifests")
        parsed.manifests = _unique([d["digest"] for d in children])
    return parsed


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
