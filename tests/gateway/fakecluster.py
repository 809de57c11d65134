"""An in-memory stand-in for `gateway.cluster.ClusterClient` for the API-surface tests.

`FakeCluster` implements the part of the ClusterClient API and of the metadata catalogue
(protos/README.md) that the manifest, tag, catalog and referrers handlers use, with the
same errors, so handler logic is tested without processes or gRPC. (The data-path tests
use `fakenodes.py`, real gRPC servers with in-memory state.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import (
    BlobUnknown,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
)


@dataclass
class _Repo:
    blobs: set[str] = field(default_factory=set)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class FakeCluster:
    """An in-memory cluster: chunk store by sha256 and the metadata state machine."""

    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.repos: dict[str, _Repo] = {}
        self.referrers: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_next: Exception | None = None

    # -- test helpers ---------------------------------------------------------------------
    def link_blob(self, repo: str, digest: str) -> None:
        self.repos.setdefault(repo, _Repo()).blobs.add(digest)

    def ops(self, kind: str) -> list[str]:
        return [op for k, op, _ in self.calls if k == kind]

    # -- ClusterClient API ----------------------------------------------------------------
    async def close(self) -> None:
        return None

    async def store_bytes(self, data: bytes) -> dict[str, Any]:
        chunk = hashlib.sha256(data).hexdigest()
        self.chunks[chunk] = bytes(data)
        return {"size": len(data), "chunks": [[chunk, len(data)]] if data else []}

    async def read_all(self, recipe: dict[str, Any]) -> bytes:
        return b"".join(self.chunks[c] for c, _ in recipe["chunks"])

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append(("command", op, args))
        self._maybe_fail()
        return getattr(self, f"_cmd_{op}")(**args)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        self.calls.append(("query", op, args))
        self._maybe_fail()
        return getattr(self, f"_q_{op}")(**args)

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    # -- commands -------------------------------------------------------------------------
    def _cmd_manifest_put(
        self,
        repo: str,
        digest: str,
        media_type: str,
        recipe: dict[str, Any],
        blobs: list[str],
        manifests: list[str],
        subject: str | None,
        artifact_type: str | None,
        annotations: dict[str, str] | None,
        tag: str | None,
        now: float,
    ) -> None:
        state = self.repos.get(repo, _Repo())
        missing = [d for d in blobs if d not in state.blobs]
        missing += [d for d in manifests if d not in state.manifests]
        if missing:
            raise ManifestBlobUnknown(detail={"missing": missing})
        self.repos[repo] = state
        state.manifests[digest] = {
            "digest": digest,
            "media_type": media_type,
            "size": recipe["size"],
            "recipe": recipe,
            "subject": subject,
            "artifact_type": artifact_type,
            "annotations": annotations,
        }
        state.blobs.add(digest)
        if tag is not None:
            state.tags[tag] = digest
        if subject is not None:
            descriptor: dict[str, Any] = {
                "mediaType": media_type,
                "digest": digest,
                "size": recipe["size"],
            }
            if artifact_type:
                descriptor["artifactType"] = artifact_type
            if annotations:
                descriptor["annotations"] = annotations
            self.referrers.setdefault((repo, subject), {})[digest] = descriptor

    def _cmd_tag_delete(self, repo: str, tag: str) -> None:
        state = self.repos.get(repo)
        if state is None or tag not in state.tags:
            raise ManifestUnknown()
        del state.tags[tag]

    def _cmd_manifest_delete(self, repo: str, digest: str) -> None:
        state = self.repos.get(repo)
        if state is None or digest not in state.manifests:
            raise ManifestUnknown()
        record = state.manifests.pop(digest)
        state.tags = {t: d for t, d in state.tags.items() if d != digest}
        if record["subject"]:
            self.referrers.get((repo, record["subject"]), {}).pop(digest, None)

    # -- queries --------------------------------------------------------------------------
    def _q_tag_get(self, repo: str, tag: str) -> dict[str, Any]:
        state = self.repos.get(repo)
        if state is None:
            raise NameUnknown()
        if tag not in state.tags:
            raise ManifestUnknown()
        return state.manifests[state.tags[tag]]

    def _q_manifest_get(self, repo: str, digest: str) -> dict[str, Any]:
        state = self.repos.get(repo)
        if state is None or digest not in state.manifests:
            raise ManifestUnknown()
        return state.manifests[digest]

    def _q_blob_get(self, repo: str, digest: str) -> dict[str, Any]:
        state = self.repos.get(repo)
        if state is None or digest not in state.blobs:
            raise BlobUnknown()
        return {"size": 0, "chunks": []}

    @staticmethod
    def _page(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
        items = sorted(i for i in items if last is None or i.encode() > last.encode())
        if n is None:
            return items, False
        return items[:n], n > 0 and len(items) > n

    def _q_tags_list(self, repo: str, n: int | None, last: str | None) -> dict[str, Any]:
        state = self.repos.get(repo)
        if state is None:
            raise NameUnknown()
        tags, more = self._page(list(state.tags), n, last)
        return {"tags": tags, "more": more}

    def _q_catalog(self, n: int | None, last: str | None) -> dict[str, Any]:
        repos, more = self._page(list(self.repos), n, last)
        return {"repositories": repos, "more": more}

    def _q_referrers(self, repo: str, digest: str, artifact_type: str | None) -> dict[str, Any]:
        found = list(self.referrers.get((repo, digest), {}).values())
        if artifact_type is not None:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return {"manifests": found}
