"""Storage quotas per namespace, kept by the metadata state (node/metadata/state.py;
docs/operations.md "Quotas").

A quota namespace is a repository-name prefix: `team` holds `team` and `team/...`. Its
usage is the sum of the sizes of the distinct digests linked in at least one of its
repositories (layers, configs and manifest bytes alike): a blob linked into several
repositories of the namespace counts once, a blob shared with another namespace counts
in each. Nested namespaces are counted independently and a push must fit every one that
holds its repository.

`QuotaBook` keeps, per namespace with a quota, how many of its repositories link each
digest and the byte total, updated by every link and unlink (O(depth of the repository
name) per change, no scan). Only the limits are snapshotted; the counts are rebuilt from
the links when a snapshot loads or a quota is first set on a namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from cargohold.errors import QuotaExceeded
from cargohold.quotas import exceeded, in_namespace


class QuotaBook:
    """Limits (snapshotted) and deduplicated usage (derived) of the quota namespaces."""

    def __init__(self) -> None:
        self.limits: dict[str, int] = {}
        self._refs: dict[str, dict[str, int]] = {}  # namespace -> {digest: linking repos}
        self.used: dict[str, int] = {}

    # -- lookups ---------------------------------------------------------------------------
    def covering(self, repo: str) -> list[str]:
        """The quota namespaces holding `repo` (each prefix of its name ending at a `/`)."""
        limits = self.limits
        if not limits:
            return []
        out = [repo] if repo in limits else []
        i = repo.find("/")
        while i != -1:
            if repo[:i] in limits:
                out.append(repo[:i])
            i = repo.find("/", i + 1)
        return out

    def holds(self, namespace: str, digest: str) -> bool:
        return digest in self._refs.get(namespace, ())

    def refuse(self, namespace: str, adding: int) -> QuotaExceeded:
        return exceeded(namespace, self.used.get(namespace, 0), self.limits[namespace], adding)

    def check_link(self, repo: str, digest: str, size: int) -> None:
        """QuotaExceeded if linking `digest` (`size` bytes) into `repo` would take one of its
        namespaces past its limit (a digest the namespace already holds adds nothing)."""
        for ns in self.covering(repo):
            if not self.holds(ns, digest) and self.used.get(ns, 0) + size > self.limits[ns]:
                raise self.refuse(ns, size)

    def check_room(self, repo: str, size: int) -> None:
        """QuotaExceeded if `size` more bytes (an upload session, digest not known yet) do not
        fit in one of `repo`'s namespaces."""
        for ns in self.covering(repo):
            if self.used.get(ns, 0) + size > self.limits[ns]:
                raise self.refuse(ns, size)

    # -- changes (called by the state after it validated) ------------------------------------
    def linked(self, repo: str, digest: str, size: int) -> None:
        """`digest` was newly linked into `repo`."""
        for ns in self.covering(repo):
            refs = self._refs[ns]
            count = refs.get(digest, 0)
            refs[digest] = count + 1
            if count == 0:
                self.used[ns] += size

    def unlinked(self, repo: str, digest: str, size: int) -> None:
        """`digest` was unlinked from `repo` (it was linked there)."""
        for ns in self.covering(repo):
            refs = self._refs[ns]
            count = refs.get(digest, 0)
            if count <= 1:
                refs.pop(digest, None)
                self.used[ns] -= size if count == 1 else 0
            else:
                refs[digest] = count - 1

    def set_limit(
        self,
        namespace: str,
        limit: int | None,
        links: Mapping[str, Iterable[str]],
        size_of: Callable[[str], int],
    ) -> None:
        """Set (or, with None, remove) a limit; a new namespace's usage is counted once here."""
        if limit is None:
            self.limits.pop(namespace, None)
            self._refs.pop(namespace, None)
            self.used.pop(namespace, None)
            return
        known = namespace in self.limits
        self.limits[namespace] = limit
        if not known:
            self._count(namespace, links, size_of)

    def rebuild(
        self,
        limits: Mapping[str, int],
        links: Mapping[str, Iterable[str]],
        size_of: Callable[[str], int],
    ) -> None:
        """Install snapshotted limits and count every namespace's usage from the links."""
        self.limits = dict(limits)
        self._refs, self.used = {}, {}
        for ns in self.limits:
            self._count(ns, links, size_of)

    def _count(
        self, namespace: str, links: Mapping[str, Iterable[str]], size_of: Callable[[str], int]
    ) -> None:
        refs: dict[str, int] = {}
        for repo, digests in links.items():
            if in_namespace(repo, namespace):
                for digest in digests:
                    refs[digest] = refs.get(digest, 0) + 1
        self._refs[namespace] = refs
        self.used[namespace] = sum(size_of(d) for d in refs)

    def listing(self) -> list[tuple[str, int, int, int]]:
        """(namespace, limit, used bytes, distinct blobs) by namespace."""
        return [
            (ns, limit, self.used.get(ns, 0), len(self._refs.get(ns, ())))
            for ns, limit in sorted(self.limits.items())
        ]
