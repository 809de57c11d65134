"""One scan: an image manifest in, its SBOM referrer stored, the referrer's digest out.

1. The manifest record and bytes (`manifest_get`, verified against the digest).
2. Each filesystem layer in order (`blob_get` of the repository, so a scan reads only what
   a pull of that repository could): refused over `scanner.max_layer_bytes` before any
   byte is read, else streamed (`stream.LayerStream`) into `cargohold.sbom.layers.read_layer`
   in a worker thread and merged with the whiteouts applied.
3. The packages (`cargohold.sbom.packages`) into a CycloneDX document and its referrer
   manifest (`cargohold.sbom.cyclonedx`, deterministic: a retry stores the same bytes).
4. Stored like a push through the API would: the empty config and the document as blobs
   (`blob_commit`), the manifest (`manifest_put`, untagged, `subject` = the image), so the
   referrers API lists it at once and quotas count it.

`ScanError` (a layer that is not a tar, a limit) is final; anything else is transient.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cargohold import metadata_api as api
from cargohold.config import ScannerConfig
from cargohold.digests import digest_of
from cargohold.errors import ScanError
from cargohold.sbom import cyclonedx
from cargohold.sbom.layers import FileSystem, Limits, read_layer
from cargohold.sbom.packages import packages_of
from gateway.context import GatewayContext
from gateway.manifest_format import is_filesystem_layer
from gateway.scanner.layer_cache import LayerCache
from gateway.scanner.stream import LayerStream


@dataclass(frozen=True)
class ScanResult:
    sbom: str  # the referrer manifest's digest
    components: int
    layers: int
    layer_bytes: int


def limits_of(cfg: ScannerConfig) -> Limits:
    return Limits(
        max_unpacked_bytes=cfg.max_unpacked_bytes,
        max_file_bytes=cfg.max_file_bytes,
        max_kept_bytes=cfg.max_kept_bytes,
    )


def _layers(doc: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    out = []
    for d in doc.get("layers") or []:
        if d.get("urls") or not is_filesystem_layer(str(d.get("mediaType", ""))):
            continue  # foreign layers are not stored; artifacts have no filesystem
        if int(d.get("size", 0)) > max_bytes:
            raise ScanError(
                f"layer {d.get('digest')} is {d.get('size')} bytes, over "
                f"scanner.max_layer_bytes ({max_bytes})"
            )
        out.append(d)
    return out


async def _read_into(
    ctx: GatewayContext,
    fs: FileSystem,
    digest: str,
    recipe: api.Recipe,
    limits: Limits,
    cache: LayerCache | None,
) -> int:
    """Merge one layer into `fs`; the layer bytes read (0 when the cache had it)."""
    cached = cache.get(digest) if cache is not None else None
    if cached is not None:
        fs.apply(cached)
        return 0
    pieces = ctx.cluster.read_range(dict(recipe), 0, int(recipe["size"]))
    stream = LayerStream(asyncio.get_running_loop(), pieces, ctx.cfg.scanner.read_rate_bytes)
    try:
        layer = await asyncio.to_thread(read_layer, stream, limits)
    finally:
        await stream.close()
    if cache is not None:
        cache.put(digest, layer)
    fs.apply(layer)
    return stream.count


async def _store_blob(ctx: GatewayContext, repo: str, data: bytes, now: float) -> str:
    digest = digest_of(data, "sha256")
    recipe = await ctx.cluster.store_bytes(data)
    await ctx.meta.blob_commit(
        api.BlobCommit(
            repo, digest, api.Recipe(size=recipe["size"], chunks=recipe["chunks"]), None, now
        )
    )
    return digest


async def scan_image(
    ctx: GatewayContext,
    repo: str,
    digest: str,
    pause: Callable[[], Awaitable[None]] | None = None,
    cache: LayerCache | None = None,
) -> ScanResult:
    """Scan `repo@digest` and store its SBOM referrer (see the module docstring);
    `pause` is awaited before each layer (the worker's yield to pushes)."""
    cfg = ctx.cfg.scanner
    record = await ctx.meta.manifest_get(repo, digest)
    body = await ctx.cluster.read_all(dict(record.recipe))
    if digest_of(body, "sha256") != digest:
        raise ScanError(f"stored manifest does not match {digest}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise ScanError("the manifest is not JSON") from None
    layers = _layers(doc if isinstance(doc, dict) else {}, cfg.max_layer_bytes)
    fs = FileSystem()
    limits = limits_of(cfg)
    read = 0
    for descriptor in layers:
        if pause is not None:
            await pause()
        layer_digest = str(descriptor["digest"])
        # The blob must be readable in this repository even when the cache knows it.
        recipe = await ctx.meta.blob_get(repo, layer_digest)
        read += await _read_into(ctx, fs, layer_digest, recipe, limits, cache)
    packages, release = await asyncio.to_thread(packages_of, fs.files)
    sbom = cyclonedx.document(repo, digest, packages, release)
    manifest = cyclonedx.referrer_manifest(
        record.media_type, digest, record.size, sbom, len(packages)
    )
    now = time.time()
    config_digest = await _store_blob(ctx, repo, cyclonedx.EMPTY_CONFIG, now)
    sbom_digest = await _store_blob(ctx, repo, sbom, now)
    manifest_digest = digest_of(manifest, "sha256")
    stored = await ctx.cluster.store_bytes(manifest)
    actor: api.Actor | None = None
    if ctx.cfg.audit.enabled:
        actor = {
            "time": now,
            "actor": "scanner",
            "actor_kind": "system",
            "client": "",
            "user_agent": f"{cyclonedx.SCANNER_NAME}/{cyclonedx.SCANNER_VERSION}",
        }
    await ctx.meta.manifest_put(
        api.ManifestPut(
            repo=repo,
            digest=manifest_digest,
            media_type=cyclonedx.OCI_MANIFEST,
            recipe=api.Recipe(size=stored["size"], chunks=stored["chunks"]),
            blobs=(config_digest, sbom_digest),
            subject=digest,
            artifact_type=cyclonedx.SBOM_MEDIA_TYPE,
            annotations=json.loads(manifest)["annotations"],
            now=now,
            audit=actor,
        )
    )
    return ScanResult(manifest_digest, len(packages), len(layers), read)
