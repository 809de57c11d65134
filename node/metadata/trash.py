"""The trash of the metadata state: deleted manifests and tags kept restorable for
`lifecycle.trash_retention_seconds` (docs/operations.md "The trash").

Two containers, part of the replicated state (node/metadata/state.py owns the rest)::

    manifests  {repo: {digest: TrashedManifest(manifest, deleted_at)}}
                   a manifest removed by `manifest_delete` with `trash`: the full record,
                   so its recipe, blobs, children and subject come back on a restore
    tags       {repo: {tag: TrashedTag(digest, deleted_at)}}
                   a tag removed by `tag_delete` with `trash`, or with its manifest by
                   `manifest_delete` with `trash` (the tags that pointed at it)

What is here is invisible to the registry API (it is not in `manifests`, `tags` or
`referrers` any more), but the blobs a trashed manifest needs are still "held":
`held_blobs` lists them, garbage collection neither forgets their recipes (`gc_prune`
skips them) nor sweeps their chunks (node/gc.py marks them), so a restore always finds
them. A trashed manifest and the live manifests of its repository are disjoint: pushing
the same digest again takes it out of the trash (its tags stay there, restorable).
`trash_purge` forgets entries older than the retention; only then can GC reclaim.

This module decides and validates; `MetadataState` applies (it owns the counters, links
and referrers a restore touches). Nothing here reads a clock or a config: `now`,
`older_than` and the immutable rules come in the commands, so every node agrees.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from typing import Any, NamedTuple

from cargohold import metadata_api as api
from cargohold.errors import (
    BlobUnknown,
    ManifestBlobUnknown,
    ManifestUnknown,
    TagImmutable,
    TrashConflict,
)
from cargohold.lifecycle_rules import rule_for_tag
from node.metadata.records import Manifest


class TrashedManifest(NamedTuple):
    manifest: Manifest
    deleted_at: float


class TrashedTag(NamedTuple):
    digest: str
    deleted_at: float


TrashedManifests = dict[str, dict[str, TrashedManifest]]
TrashedTags = dict[str, dict[str, TrashedTag]]


class RestorePlan(NamedTuple):
    """What a validated `trash_restore` puts back: `digest` (the manifest the tags point
    at), the manifests to re-insert (it and its trashed index children; empty when it is
    live) and the tags to point at it again."""

    digest: str
    manifests: list[tuple[str, Manifest]]
    tags: list[str]


def held_blobs(manifests: TrashedManifests) -> set[str]:
    """Digests whose recipes the trash needs: each trashed manifest's own bytes and blobs."""
    held: set[str] = set()
    for entries in manifests.values():
        for digest, trashed in entries.items():
            held.add(digest)
            held.update(trashed.manifest.blobs)
    return held


class Trash:
    """The two trash containers and the rules for putting in, taking out and purging."""

    def __init__(
        self, manifests: TrashedManifests | None = None, tags: TrashedTags | None = None
    ) -> None:
        self.manifests: TrashedManifests = manifests or {}
        self.tags: TrashedTags = tags or {}

    def copy(self) -> tuple[TrashedManifests, TrashedTags]:
        """Copies of the containers (records shared), for a state snapshot."""
        return (
            {repo: entries.copy() for repo, entries in self.manifests.items()},
            {repo: entries.copy() for repo, entries in self.tags.items()},
        )

    def __len__(self) -> int:
        return sum(map(len, self.manifests.values())) + sum(map(len, self.tags.values()))

    # -- putting in -------------------------------------------------------------------------
    def put_manifest(
        self, repo: str, digest: str, record: Manifest, tags: list[str], now: float
    ) -> None:
        self.manifests.setdefault(repo, {})[digest] = TrashedManifest(record, now)
        for tag in tags:
            self.put_tag(repo, tag, digest, now)

    def put_tag(self, repo: str, tag: str, digest: str, now: float) -> None:
        # A tag deleted twice is restorable to where it pointed last.
        self.tags.setdefault(repo, {})[tag] = TrashedTag(digest, now)

    def pushed(self, repo: str, digest: str, tag: str | None) -> None:
        """`digest` is live in `repo` again (a push): out of the trash; a trashed `tag`
        pointing at it is redundant now. Its other trashed tags stay restorable."""
        _drop(self.manifests, repo, digest)
        if tag is not None:
            entry = self.tags.get(repo, {}).get(tag)
            if entry is not None and entry.digest == digest:
                _drop(self.tags, repo, tag)

    # -- taking out ---------------------------------------------------------------------------
    def plan_restore(
        self,
        req: api.TrashRestore,
        live: dict[str, Manifest],
        live_tags: dict[str, str],
        blobs: Container[str],
    ) -> RestorePlan:
        """Validate a restore against the repository's live manifests and tags and the
        recorded blobs; raises (nothing changed) or answers what to put back."""
        repo = req.repo
        trashed = self.manifests.get(repo, {})
        trashed_tags = self.tags.get(repo, {})
        if req.tag is not None:
            entry = trashed_tags.get(req.tag)
            if entry is None:
                raise ManifestUnknown(f"tag {req.tag} of {repo} is not in the trash")
            digest, tags = entry.digest, [req.tag]
        else:
            assert req.digest is not None
            digest = req.digest
            tags = sorted(t for t, e in trashed_tags.items() if e.digest == digest)
            if digest not in trashed and not tags:
                raise ManifestUnknown(f"manifest {digest} of {repo} is not in the trash")
        records: list[tuple[str, Manifest]] = []
        if digest not in live:
            if digest not in trashed:
                raise ManifestUnknown(
                    f"manifest {digest} of {repo} is no longer in the trash (purged or "
                    f"deleted outright): tag {tags[0]} cannot be restored",
                    detail={"digest": digest},
                )
            # An index comes back with its trashed children (and theirs): never half.
            wanted, seen = [digest], set()
            while wanted:
                d = wanted.pop()
                if d in seen or d in live:
                    continue
                child = trashed.get(d)
                if child is None:
                    raise ManifestBlobUnknown(
                        f"index {digest}: child {d} is neither in {repo} nor in its trash",
                        detail={"missing": [d]},
                    )
                seen.add(d)
                records.append((d, child.manifest))
                wanted.extend(child.manifest.children)
        missing = sorted({b for _, m in records for b in m.blobs if b not in blobs})
        if missing:
            # Cannot happen before a purge (held_blobs); said plainly if it ever does.
            raise BlobUnknown(
                f"blobs of {digest} were reclaimed: {','.join(missing[:4])}",
                detail={"missing": missing},
            )
        for tag in tags:
            current = live_tags.get(tag)
            if current is None or current == digest:
                continue
            if not req.force:
                raise TrashConflict(
                    f"tag {tag} of {repo} now points to {current}: restore with force to "
                    f"move it back to {digest}",
                    detail={"tag": tag, "current": current, "digest": digest},
                )
            rule = rule_for_tag(req.immutable, tag)
            if rule is not None:
                raise TagImmutable(
                    f"tag {tag} of {repo} is immutable (rule {rule})",
                    detail={"repository": repo, "tag": tag, "rule": rule},
                )
        return RestorePlan(digest, records, tags)

    def take(self, repo: str, plan: RestorePlan) -> None:
        """Remove what `plan` restored from the trash."""
        for digest, _ in plan.manifests:
            _drop(self.manifests, repo, digest)
        for tag in plan.tags:
            _drop(self.tags, repo, tag)

    # -- purging --------------------------------------------------------------------------------
    def purge(self, cutoff: float, repo: str | None = None) -> dict[str, int]:
        """Forget entries put in at or before `cutoff`; answers how many per repository
        (only repositories that lost some, in name order)."""
        purged: dict[str, int] = {}
        for container in (self.manifests, self.tags):
            repos = [repo] if repo is not None else list(container)
            for name in repos:
                entries: dict[str, Any] = container.get(name, {})
                old = [key for key, entry in entries.items() if entry.deleted_at <= cutoff]
                for key in old:
                    del entries[key]
                if old:
                    purged[name] = purged.get(name, 0) + len(old)
                if name in container and not entries:
                    del container[name]
        return dict(sorted(purged.items()))

    # -- listing ----------------------------------------------------------------------------------
    def entries(self, repo: str | None = None) -> list[api.TrashEntry]:
        out: list[api.TrashEntry] = []
        repos = sorted(self.manifests.keys() | self.tags.keys())
        for name in repos if repo is None else [repo]:
            for digest, trashed in sorted(self.manifests.get(name, {}).items()):
                m = trashed.manifest
                out.append(
                    api.TrashEntry(
                        name, "manifest", digest, None, m.media_type, m.size, trashed.deleted_at
                    )
                )
            for tag, entry in sorted(self.tags.get(name, {}).items()):
                out.append(
                    api.TrashEntry(name, "tag", entry.digest, tag, None, None, entry.deleted_at)
                )
        return out


def _drop(container: dict[str, dict[str, Any]], repo: str, key: str) -> None:
    entries = container.get(repo)
    if entries is None or key not in entries:
        return
    del entries[key]
    if not entries:
        del container[repo]


# -- snapshot rows ----------------------------------------------------------------------------
def manifest_rows(manifests: TrashedManifests) -> Iterator[tuple[str, str, Manifest, float]]:
    """(repo, digest, manifest record, deleted_at); the caller turns the record into a row."""
    for repo, entries in manifests.items():
        for digest, trashed in entries.items():
            yield repo, digest, trashed.manifest, trashed.deleted_at


def tag_rows(tags: TrashedTags) -> Iterator[tuple[str, str, str, float]]:
    for repo, entries in tags.items():
        for tag, entry in entries.items():
            yield repo, tag, entry.digest, entry.deleted_at
