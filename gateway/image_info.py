"""What search indexes of a pushed manifest beyond its record (`manifest_put` `info`).

An image manifest's platform (`os/architecture[/variant]`) and config labels live in its
config blob, so at manifest PUT the gateway reads that blob (when it is an image config of
at most `gateway.search_config_max_bytes`) and sends them with the command; an index's
platforms are its `manifests[].platform` entries. Anything that cannot be read or parsed
leaves `info` out: the push never fails for it (search then lacks those fields for that
manifest). The config's recipe is looked up without a Raft barrier (`_config_bytes` says
why that is safe) and what a config yields is kept by its digest (gateway/config_infos.py),
so a manifest pushed again under another tag costs no config read at all; a config pushed
through this gateway (in one request body) is parsed as it arrives (`note_pushed_config`),
so the manifest PUT that follows costs no config read either. Values are cut
to the contract's bounds (cargohold/metadata_api.py `image_info`).
Manifests stored before this existed get theirs from gateway/search_backfill.py, through
`stored_manifest_info`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cargohold.errors import RegistryError, Unavailable
from cargohold.log import log_event
from cargohold.metadata_api import (
    MAX_INFO_JSON,
    MAX_INFO_LABEL,
    MAX_INFO_LABELS,
    MAX_INFO_PLATFORMS,
    Metadata,
)
from gateway.context import GatewayContext
from gateway.manifest_format import IMAGE_TYPES, INDEX_TYPES

logger = logging.getLogger("cargohold.gateway")

CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


def platform_of(doc: Any) -> str | None:
    """`os/arch[/variant]` of a config or a descriptor's `platform` object, lower case."""
    if not isinstance(doc, dict):
        return None
    os_, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return None
    parts = [os_, arch] + ([variant] if isinstance(variant, str) and variant else [])
    text = "/".join(p.lower() for p in parts)
    return text if len(text) <= 100 else None


def bounded(platforms: list[str], labels: dict[str, Any]) -> dict[str, Any] | None:
    """An `info` within the contract's bounds: long labels and extra entries are dropped."""
    kept: dict[str, str] = {}
    for key in sorted(labels):
        value = labels[key]
        if len(kept) == MAX_INFO_LABELS:
            break
        if isinstance(value, str) and 0 < len(key) <= MAX_INFO_LABEL:
            if len(value) <= MAX_INFO_LABEL:
                kept[key] = value
    info: dict[str, Any] = {}
    if platforms:
        info["platforms"] = sorted(set(platforms))[:MAX_INFO_PLATFORMS]
    while kept and len(json.dumps({**info, "labels": kept})) > MAX_INFO_JSON:
        kept.pop(next(reversed(kept)))
    if kept:
        info["labels"] = kept
    return info or None


def config_info(data: bytes) -> dict[str, Any] | None:
    """Platform and labels of an image config blob; None when it is not one."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    platform = platform_of(doc)
    config = doc.get("config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    return bounded([platform] if platform else [], labels if isinstance(labels, dict) else {})


def index_info(doc: dict[str, Any]) -> dict[str, Any] | None:
    platforms = [
        p
        for d in doc.get("manifests") or []
        if isinstance(d, dict) and (p := platform_of(d.get("platform")))
    ]
    return bounded(platforms, {})


async def manifest_info(
    ctx: GatewayContext, repo: str, body: bytes, media_type: str
) -> dict[str, Any] | None:
    """The `info` of a manifest being pushed (module docstring); None when there is none."""
    try:
        digest = _config_digest(ctx, body, media_type)
        if not isinstance(digest, str):
            return digest
        known, info = ctx.config_infos.lookup(digest)
        if not known:
            info = config_info(await _config_bytes(ctx, repo, digest))
            ctx.config_infos.put(digest, info)
        return info
    except RegistryError as exc:
        # A missing config is refused by manifest_put itself (MANIFEST_BLOB_UNKNOWN).
        log_event(logger, "search.config_unread", logging.DEBUG, repo=repo, error=exc.message)
        return None


def note_pushed_config(ctx: GatewayContext, chunk_id: bytes, pieces: list[memoryview]) -> None:
    """An upload body's first chunk, `chunk_id` being the sha256 of exactly these bytes
    (gateway/chunking.py `ingest`): when it may be an image config (JSON naming an
    architecture, at most `gateway.search_config_max_bytes`), what search reads of it is
    kept under that digest now, as a manifest PUT naming it would keep it after reading it
    back (two round trips fewer, a lookup and a chunk read). Whatever becomes of the upload
    the entry is right: it is keyed by the digest of the bytes it was read from, and
    whether a repository may use that blob is still the `manifest_put` apply's to decide."""
    if not pieces or pieces[0][:1] != b"{":
        return
    if sum(len(p) for p in pieces) > ctx.cfg.gateway.search_config_max_bytes:
        return
    data = b"".join(pieces)
    if b'"architecture"' not in data:
        return
    ctx.config_infos.put("sha256:" + chunk_id.hex(), config_info(data))


async def stored_manifest_info(
    ctx: GatewayContext, repo: str, body: bytes, media_type: str
) -> dict[str, Any] | None:
    """The `info` of a manifest whose body parses (None: nothing to index); the
    RegistryError of reading its config blob when that fails. The config is read through
    a linearizable lookup, whose link check is the only one (no command re-checks it)."""
    digest = _config_digest(ctx, body, media_type)
    if not isinstance(digest, str):
        return digest
    recipe = await ctx.meta.blob_get(repo, digest)
    return config_info(await ctx.cluster.read_all(dict(recipe)))


def _config_digest(
    ctx: GatewayContext, body: bytes, media_type: str
) -> str | dict[str, Any] | None:
    """The digest of the config blob to read; else the `info` itself (an index's, or None:
    nothing to index)."""
    if media_type not in IMAGE_TYPES and media_type not in INDEX_TYPES:
        return None
    doc = json.loads(body)
    if not isinstance(doc, dict):
        return None
    if media_type in INDEX_TYPES:
        return index_info(doc)
    config = doc.get("config")
    if not isinstance(config, dict):
        return None
    size = config.get("size")
    if config.get("mediaType") not in CONFIG_TYPES or not isinstance(size, int):
        return None
    digest = config.get("digest")
    if size > ctx.cfg.gateway.search_config_max_bytes or not isinstance(digest, str):
        return None
    return digest


async def _config_bytes(ctx: GatewayContext, repo: str, digest: str) -> bytes:
    """The config blob's bytes, its recipe read without a Raft barrier first.

    The `manifest_put` this feeds checks, in its apply, that the repository may use the
    config, so a barrier here would only order a read whose answer the command decides
    anyway. A recipe is a way to read bytes of a known sha256 (the chunks are verified as
    read), so a node's applied state, even one behind, serves: a node that does not know
    the blob yet, or a recipe whose chunks are gone, falls back to the linearizable read.
    """
    local = Metadata(ctx.meta.transport, linearizable=False)
    try:
        return await ctx.cluster.read_all(dict(await local.blob_get(repo, digest)))
    except Unavailable:
        raise
    except RegistryError:
        pass
    return await ctx.cluster.read_all(dict(await ctx.meta.blob_get(repo, digest)))
