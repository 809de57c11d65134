"""Copying images between two registries (sides.py), what a replication rule does for
each tag it copies.

`Copier.copy_tag` copies a tag's manifest with everything under it, children before
parents, so the target never holds a manifest whose content is missing:

- an index: every child manifest (all platforms), each with its own content;
- an image manifest: its config and layers, each one only if the target lacks it
  (HEAD first), mounted from another target repository where this copier already put
  it, else streamed from the source (one PUT, or PATCH chunks for big blobs);
- referrers (signatures, SBOMs, attestations) of every manifest copied, found through
  the referrers API or the OCI referrers tag schema (`sha256-<hex>`), and cosign's
  `sha256-<hex>.sig|.att|.sbom` tags; a target without the referrers API gets the
  referrers tag schema's index, so its clients find them too; referrers of referrers
  up to `replication.referrer_depth`.

Manifests keep their bytes, so their digests are identical at the target. A manifest
the target already has is not copied again, but its referrers are looked at again (a
signature may be added later).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cargohold.config import Config
from cargohold.digests import digest_of
from cargohold.errors import ManifestUnknown
from cargohold.replication import COSIGN_SUFFIXES
from gateway.manifest_format import parse_manifest
from gateway.mirror.referrers import fallback_tag
from gateway.replication.sides import INDEX_MEDIA_TYPE, Manifest, Registry


@dataclass
class Stats:
    """What one run (or one event) copied."""

    tags: int = 0
    manifests_copied: int = 0
    manifests_present: int = 0
    blobs_copied: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    referrers: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: Stats) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


class Copier:
    """One copy session from `src` to `dst` (remembers what it did, for mounts)."""

    def __init__(self, cfg: Config, src: Registry, dst: Registry) -> None:
        self.cfg = cfg
        self.r = cfg.replication
        self.src = src
        self.dst = dst
        self.stats = Stats()
        self._manifests_done: set[tuple[str, str]] = set()
        self._blobs_done: set[tuple[str, str]] = set()
        self._homes: dict[str, str] = {}  # blob digest -> a target repo this copier put it in

    async def copy_tag(self, src_repo: str, dst_repo: str, tag: str) -> str:
        """Copy `tag` with everything under it; answers its digest."""
        manifest = await self.src.manifest(src_repo, tag)
        if manifest is None:
            raise ManifestUnknown(detail={"name": src_repo, "tag": tag})
        await self.copy_manifest(src_repo, dst_repo, manifest, 0)
        target = await self.dst.manifest(dst_repo, tag)
        if target is None or target.digest != manifest.digest:
            await self.dst.put_manifest(dst_repo, tag, manifest)
        self.stats.tags += 1
        return manifest.digest

    async def copy_manifest(
        self, src_repo: str, dst_repo: str, manifest: Manifest, depth: int
    ) -> None:
        key = (dst_repo, manifest.digest)
        if key in self._manifests_done:
            return
        self._manifests_done.add(key)
        if await self.dst.has_manifest(dst_repo, manifest.digest):
            self.stats.manifests_present += 1
        else:
            parsed = parse_manifest(
                manifest.body, manifest.media_type or None, self.cfg.gateway.max_manifest_depth
            )
            for child in parsed.manifests:
                found = await self.src.manifest(src_repo, child)
                if found is None:
                    raise ManifestUnknown(detail={"name": src_repo, "digest": child})
                await self.copy_manifest(src_repo, dst_repo, found, depth)
            for blob in parsed.blobs:
                await self.copy_blob(src_repo, dst_repo, blob)
            await self.dst.put_manifest(dst_repo, manifest.digest, manifest)
            self.stats.manifests_copied += 1
        if depth < self.r.referrer_depth:
            await self.copy_referrers(src_repo, dst_repo, manifest.digest, depth + 1)

    async def copy_referrers(self, src_repo: str, dst_repo: str, subject: str, depth: int) -> None:
        """The referrers of `subject` (already at the target), and cosign's tags of it."""
        found = (await self.src.referrers(src_repo, subject) or [])[: self.r.max_referrers]
        copied: list[dict[str, Any]] = []
        for descriptor in found:
            referrer = await self.src.manifest(src_repo, descriptor["digest"])
            if referrer is None:  # deleted since it was listed
                continue
            await self.copy_manifest(src_repo, dst_repo, referrer, depth)
            copied.append(descriptor)
            self.stats.referrers += 1
        if copied and not await self.dst.has_referrers_api(dst_repo, subject):
            await self._fallback_index(dst_repo, subject, copied)
        for suffix in COSIGN_SUFFIXES:
            tag = fallback_tag(subject) + suffix
            signature = await self.src.manifest(src_repo, tag)
            if signature is None:
                continue
            await self.copy_manifest(src_repo, dst_repo, signature, depth)
            target = await self.dst.manifest(dst_repo, tag)
            if target is None or target.digest != signature.digest:
                await self.dst.put_manifest(dst_repo, tag, signature)
            self.stats.referrers += 1

    async def _fallback_index(
        self, dst_repo: str, subject: str, descriptors: list[dict[str, Any]]
    ) -> None:
        """Add `descriptors` to the target's referrers tag schema index of `subject`."""
        tag = fallback_tag(subject)
        current = await self.dst.manifest(dst_repo, tag)
        listed: list[dict[str, Any]] = []
        if current is not None:
            doc = json.loads(current.body)
            listed = [d for d in doc.get("manifests") or [] if isinstance(d, dict)]
        have = {d.get("digest") for d in listed}
        missing = [d for d in descriptors if d["digest"] not in have]
        if not missing:
            return
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": listed + missing},
            separators=(",", ":"),
        ).encode()
        await self.dst.put_manifest(
            dst_repo, tag, Manifest(digest_of(body, "sha256"), body, INDEX_MEDIA_TYPE)
        )

    async def copy_blob(self, src_repo: str, dst_repo: str, digest: str) -> None:
        key = (dst_repo, digest)
        if key in self._blobs_done:
            return
        if await self.dst.has_blob(dst_repo, digest):
            self.stats.blobs_present += 1
        else:
            home = self._homes.get(digest)
            if (
                home is not None
                and home != dst_repo
                and await self.dst.mount(dst_repo, digest, home)
            ):
                self.stats.blobs_mounted += 1
            else:
                async with self.src.blob(src_repo, digest) as (size, stream):
                    sent = await self.dst.put_blob(dst_repo, digest, size, stream)
                self.stats.blobs_copied += 1
                self.stats.bytes_copied += sent
        self._blobs_done.add(key)
        self._homes.setdefault(digest, dst_repo)
