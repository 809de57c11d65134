"""`SearchIndex`: the search query's index of tags, derived from the metadata state.

Never a second source of truth: every row is computed from `MetadataState` (tags, manifest
records, times, `image_info`, blob sizes) and nothing of it is snapshotted. A node builds
it in the background after a start or a snapshot load, in slices that hold the state's lock
briefly (node/metadata/search_build.py: `building`, `add_tags`, `finish`); a bare state
builds it whole at its first search. From its creation on, the state marks what its
commands change (`touch(repo, tag)` where a tag is set or dropped, `touch_digest(repo,
digest)` where a pull dates a manifest): a search first recomputes the marked rows, so an
applied command is visible to the next search on that node. A ready index lets at most
`_PENDING_LIMIT` marks wait: past that, the state has it recompute two after each command
(`settle`).

Layout: every row (one per tag) has a row id, a small integer (a removed row's id is
reused), and its fields are columns indexed by it, so a row costs a slot per column and no
object of its own:

    columns   repo tag digest kind info_json annotations_json
              (lists of references to the state's own strings and shared tuples; kind is
              (media_type, artifact_type, platforms), one tuple per distinct kind)
              size (array 'q'), pushed pulled (array 'd')
    orders    name   SortedIds by repo NUL tag        walked for sort=name, namespace ranges,
                                                      a repository's rows, (repo, tag) -> id
              pushed SortedIds by time NUL repo NUL tag (fixed-width times and sizes sort
              pulled SortedIds by time NUL repo NUL tag  as text)
              size   SortedIds by size NUL repo NUL tag
              digest SortedIds by digest NUL repo NUL tag   which rows a pull re-dates
    postings  {term: SortedIds of row ids}            m/a NUL media or artifact type, p NUL
                                                      os/arch (and os/arch/variant), l|n NUL
                                                      key(=value) for config labels and
                                                      manifest annotations
    repo_rows {repo: rows}                            name patterns are matched per repository

An order holds 4 bytes per row (node/metadata/sorted_ids.py) and computes a row's order key
(the string a cursor holds) from the columns when it bisects, instead of storing it. A
search intersects the postings its exact filters name (smallest first), with the rows of the
repositories whose names match its pattern and the rows in its size and time ranges when
those are narrow (at most `_SORTED_CANDIDATES` rows). When that leaves few candidates it
sorts them; otherwise it walks the order from the cursor and checks each row, stopping after
`n` matches or `max_scan` rows (then the page may be short, with a `next` cursor). The cursor
is the last row's order key, so paging is stable while rows come and go. Repository results
group tag rows by repository: sorted by name they walk the name order; sorted by time or
size they walk that order and place a repository at its first matching tag (its newest,
latest or largest descending; oldest, earliest or smallest ascending), then fold its
matching tags into the item.

Rows keep the state's own strings (repository, tag, digest, the `image_info` and annotation
JSON) and parse labels only to show them; posting terms are interned. Memory per tag
(docs/metadata.md, "Memory per manifest"): 109 bytes for one-tag images without labels,
fixed by tests/node/test_metadata_memory.py; about 184 with a platform and three labels
each (bench/search_latency.py prints it for its corpus).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterable, Iterator
from sys import intern
from typing import Any, NamedTuple, Protocol

from cargohold.errors import RequestInvalid
from cargohold.search import (
    PullAccess,
    SearchPage,
    SearchSpec,
    decode_cursor,
    encode_cursor,
    name_matcher,
    parse_term,
)
from node.metadata.sorted_ids import SortedIds

SEP = "\0"
_SORTED_CANDIDATES = 4096  # at most this many candidates: sort them instead of walking
DEFAULT_MAX_SCAN = 200_000
_LAST = "\U0010ffff"  # above every character of a name
# Marks (rows to recompute) a ready index lets wait for the next search; past it, each new
# mark recomputes two (`SearchIndex.settle`).
_PENDING_LIMIT = 1024


# A row's media type, artifact type and platforms: one column (8 bytes a row) instead of
# three, the tuple shared by every row of that kind.
Kind = tuple[str, str | None, tuple[str, ...]]


class Row(NamedTuple):
    """One row's fields, made from the columns when a result shows it."""

    repo: str
    tag: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    pushed: float
    pulled: float
    platforms: tuple[str, ...]
    # The state's own strings (image_info, the record's annotations), parsed when shown.
    info_json: str | None
    annotations_json: str | None

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = _info(self.info_json).get("labels") or {}
        return labels

    @property
    def annotations(self) -> dict[str, str]:
        return json.loads(self.annotations_json) if self.annotations_json else {}


class StateView(Protocol):
    """What the index reads of node/metadata/state.py's `MetadataState`."""

    tags: dict[str, dict[str, str]]
    manifests: dict[str, dict[str, Any]]
    blobs: dict[str, Any]
    tag_pushed: dict[str, dict[str, float]]
    pushed: dict[str, dict[str, float]]
    pulled: dict[str, dict[str, float]]
    image_info: dict[str, str]


def _time_key(t: float) -> str:
    return f"{t:017.6f}"


def _size_key(size: int) -> str:
    return f"{size:020d}"


class SearchIndex:
    """The derived tag index of one `MetadataState` (module docstring)."""

    def __init__(
        self, state: StateView, max_scan: int = DEFAULT_MAX_SCAN, building: bool = False
    ) -> None:
        """The whole index at once (the caller holds the state still meanwhile), or, with
        `building`, an empty one that `add_tags` fills and `finish` completes."""
        self._state = state
        self.max_scan = max_scan
        # The columns (module docstring); a free row has repo None.
        self._repo: list[str | None] = []
        self._tag: list[str | None] = []
        self._digest: list[str | None] = []
        self._kind: list[Kind | None] = []
        self._info: list[str | None] = []
        self._annotations: list[str | None] = []
        self._size = array("q")
        self._pushed = array("d")
        self._pulled = array("d")
        self._free: list[int] = []
        self._count = 0
        self._keys_of: dict[str, Callable[[int], str]] = {
            "name": self._name_key,
            "pushed": self._pushed_key,
            "pulled": self._pulled_key,
            "size": self._size_key,
            "digest": self._digest_key,
        }
        self._orders = {name: SortedIds(key) for name, key in self._keys_of.items()}
        self._postings: dict[str, SortedIds] = {}
        self._repo_rows: dict[str, int] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_digests: set[tuple[str, str]] = set()
        # Built in bulk: the orders are sorted once (at `finish`), not grown row by row.
        self._bulk = True
        self.ready = False
        if not building:
            for repo, tags in state.tags.items():
                self.add_tags(repo, tags)
            self.finish()
            self.ready = True

    def __len__(self) -> int:
        return self._count

    def discard(self) -> None:
        """Let go of every row: the state has dropped this index (a snapshot load, a new
        build). The orders' keys are this index's bound methods, a reference cycle, and once
        the heap is frozen (raft.py `_freeze_heap`) the collector never frees a cycle; so
        the columns, orders and postings (and the state's strings they hold) are dropped
        here by reference counting, whoever still holds the index (a builder between slices,
        which then sees it is no longer the state's). Measured: three loads of a 200,000-image
        snapshot, each followed by a search, grew RssAnon by 62 MiB a load before
        (docs/metadata.md)."""
        self._repo, self._tag, self._digest = [], [], []
        self._kind, self._info, self._annotations = [], [], []
        self._size, self._pushed, self._pulled = array("q"), array("d"), array("d")
        self._free, self._count = [], 0
        self._orders = {name: SortedIds(key) for name, key in self._keys_of.items()}
        self._postings, self._repo_rows = {}, {}
        self._dirty, self._dirty_digests = set(), set()
        self.ready = False

    # -- order keys (what a cursor holds), computed from the columns ------------------------
    def _name_key(self, row: int) -> str:
        return f"{self._repo[row]}{SEP}{self._tag[row]}"

    def _pushed_key(self, row: int) -> str:
        return f"{self._pushed[row]:017.6f}{SEP}{self._repo[row]}{SEP}{self._tag[row]}"

    def _pulled_key(self, row: int) -> str:
        return f"{self._pulled[row]:017.6f}{SEP}{self._repo[row]}{SEP}{self._tag[row]}"

    def _size_key(self, row: int) -> str:
        return f"{self._size[row]:020d}{SEP}{self._repo[row]}{SEP}{self._tag[row]}"

    def _digest_key(self, row: int) -> str:
        return f"{self._digest[row]}{SEP}{self._repo[row]}{SEP}{self._tag[row]}"

    def order_key(self, sort: str, row: int) -> str:
        """The row's key in the order `sort` (name, pushed, pulled, size)."""
        return self._keys_of[sort](row)

    def row(self, row: int) -> Row:
        repo, tag, digest, kind = (
            self._repo[row],
            self._tag[row],
            self._digest[row],
            self._kind[row],
        )
        assert repo is not None and tag is not None and digest is not None and kind is not None
        media, artifact, platforms = kind
        return Row(
            repo,
            tag,
            digest,
            media,
            artifact,
            self._size[row],
            self._pushed[row],
            self._pulled[row],
            platforms,
            self._info[row],
            self._annotations[row],
        )

    # -- building (node/metadata/search_build.py drives it in slices) -----------------------
    def add_tags(self, repo: str, tags: Iterable[str]) -> int:
        """Add the rows of these tags of `repo` that the state holds now; how many were
        added. The caller holds the state's lock. Rows changed afterwards were touched
        (`touch`) and are recomputed by the `sync` after `finish`; a tag gone meanwhile adds
        none, one added meanwhile was touched. A tag given twice in one build keeps one row
        (`finish` drops the other)."""
        assert self._bulk, "add_tags after finish"
        present = self._state.tags.get(repo)
        if not present:
            return 0
        added = 0
        for tag in tags:
            if tag in present:
                self._add(repo, tag)
                added += 1
        return added

    def finish(self) -> None:
        """Sort the orders of the rows added so far. Needs no lock: until `ready` is set
        (by the caller, after a `sync` under the lock) only this index's builder reads them,
        and the commands applied meanwhile only mark rows dirty."""
        assert self._bulk, "finish twice"
        named = sorted(
            (self._name_key(row), row) for row, repo in enumerate(self._repo) if repo is not None
        )
        kept: list[int] = []
        last = None
        for name, row in named:
            if name == last:
                self._remove(row)  # added twice: one row per tag
            else:
                kept.append(row)
                last = name
        del named
        self._orders["name"] = SortedIds(self._name_key, kept, ordered=True)
        for name in ("pushed", "pulled", "size", "digest"):
            key = self._keys_of[name]
            self._orders[name] = SortedIds(key, sorted(kept, key=key), ordered=True)
        self._bulk = False

    # -- upkeep ------------------------------------------------------------------------------
    def touch(self, repo: str, tag: str) -> None:
        """The tag was set, moved or dropped: recompute its row at the next search."""
        self._dirty.add((repo, tag))

    def touch_digest(self, repo: str, digest: str) -> None:
        """The manifest's pull time changed: recompute the rows of its tags."""
        self._dirty_digests.add((repo, digest))

    def pending(self) -> int:
        """How many marks wait for a recompute."""
        return len(self._dirty) + len(self._dirty_digests)

    def settle(self) -> None:
        """Past `_PENDING_LIMIT` marks on a ready index, recompute two marks (O(log n)
        each). The state calls it after every command it applied (never inside one: a row
        is recomputed from a state that no command is halfway through), so on a node that
        nobody searches the marks (a tuple and a set slot each, ~100 bytes) stay bounded
        instead of growing with every push, and so does the next search's `sync`."""
        if not self.ready or self.pending() <= _PENDING_LIMIT:
            return
        for _ in range(2):
            if self._dirty_digests:
                self._dirty.update(self._digest_marks(*self._dirty_digests.pop()))
            elif self._dirty:
                self._recompute(*self._dirty.pop())

    def sync(self) -> None:
        """Recompute the rows touched since the last sync (after `finish` only)."""
        for repo, digest in self._dirty_digests:
            self._dirty.update(self._digest_marks(repo, digest))
        self._dirty_digests.clear()
        for repo, tag in self._dirty:
            self._recompute(repo, tag)
        self._dirty.clear()

    def _digest_marks(self, repo: str, digest: str) -> Iterator[tuple[str, str]]:
        """(repo, tag) of the rows of `digest` in `repo` (a pull re-dates them)."""
        for row in self._orders["digest"].walk(digest + SEP + repo + SEP):
            tag = self._tag[row]
            if self._digest[row] != digest or self._repo[row] != repo or tag is None:
                return
            yield repo, tag

    def _recompute(self, repo: str, tag: str) -> None:
        old = self._orders["name"].get(repo + SEP + tag)
        if old is not None:
            self._remove(old)
        if tag in self._state.tags.get(repo, ()):
            self._add(repo, tag)

    def _add(self, repo: str, tag: str) -> None:
        st = self._state
        digest = st.tags[repo][tag]
        present = st.manifests.get(repo, {})
        record = present[digest]
        blobs = st.blobs
        seen: set[str] = set()
        size = record.size
        platforms: set[str] = set()
        info_json = st.image_info.get(digest)
        info = _info(info_json)
        platforms.update(info.get("platforms", ()))
        for blob in record.blobs:
            if blob not in seen:
                seen.add(blob)
                recipe = blobs.get(blob)
                size += recipe.size if recipe is not None else 0
        for child in record.children:
            child_record = present.get(child)
            if child_record is None:
                continue
            size += child_record.size
            if not info:
                platforms.update(_info(st.image_info.get(child)).get("platforms", ()))
            for blob in child_record.blobs:
                if blob not in seen:
                    seen.add(blob)
                    recipe = blobs.get(blob)
                    size += recipe.size if recipe is not None else 0
        pushed = st.tag_pushed.get(repo, {}).get(tag) or st.pushed.get(repo, {}).get(digest)
        kind = _shared_kind(record.media_type, record.artifact_type, tuple(sorted(platforms)))
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._repo)
            for column in self._lists():
                column.append(None)
            self._size.append(0)
            self._pushed.append(0.0)
            self._pulled.append(0.0)
        self._repo[row] = repo
        self._tag[row] = tag
        self._digest[row] = digest
        self._kind[row] = kind
        self._info[row] = info_json
        self._annotations[row] = record.annotations_json
        self._size[row] = size
        self._pushed[row] = pushed or 0.0
        self._pulled[row] = st.pulled.get(repo, {}).get(digest, 0.0)
        self._count += 1
        if not self._bulk:
            for order in self._orders.values():
                order.add(row)
        for term in self._terms(row):
            posting = self._postings.get(term)
            if posting is None:
                posting = self._postings[term] = SortedIds()
            posting.add(row)
        self._repo_rows[repo] = self._repo_rows.get(repo, 0) + 1

    def _lists(self) -> tuple[list[Any], ...]:
        return (
            self._repo,
            self._tag,
            self._digest,
            self._kind,
            self._info,
            self._annotations,
        )

    def _remove(self, row: int) -> None:
        if not self._bulk:
            for order in self._orders.values():
                order.discard(row)
        for term in self._terms(row):
            posting = self._postings.get(term)
            if posting is not None:
                posting.discard(row)
                if not posting:
                    del self._postings[term]
        repo = self._repo[row]
        assert repo is not None
        left = self._repo_rows[repo] - 1
        if left:
            self._repo_rows[repo] = left
        else:
            del self._repo_rows[repo]
        for column in self._lists():
            column[row] = None
        self._free.append(row)
        self._count -= 1

    def _terms(self, row: int) -> Iterator[str]:
        """The posting terms of a row, interned (rows sharing a label share its term)."""
        kind = self._kind[row]
        assert kind is not None
        media, artifact, platforms = kind
        yield intern("m" + SEP + media)
        if artifact:
            yield intern("a" + SEP + artifact)
        for platform in platforms:
            yield intern("p" + SEP + platform)
            os_arch = "/".join(platform.split("/")[:2])
            if os_arch != platform:
                yield intern("p" + SEP + os_arch)
        info_json, annotations_json = self._info[row], self._annotations[row]
        labels = _info(info_json).get("labels") or {}
        annotations = json.loads(annotations_json) if annotations_json else {}
        for prefix, values in (("l", labels), ("n", annotations)):
            for k, v in values.items():
                if not isinstance(v, str):
                    continue
                yield intern(prefix + SEP + k)
                yield intern(prefix + SEP + k + "=" + v)

    def _repo_ids(self, repo: str) -> Iterator[int]:
        """The rows of `repo`, in name order."""
        for row in self._orders["name"].walk(repo + SEP):
            if self._repo[row] != repo:
                return
            yield row

    # -- queries -----------------------------------------------------------------------------
    def search(self, spec: SearchSpec) -> SearchPage:
        self.sync()
        check = _Filter(spec, self)
        candidates = self._candidates(spec)
        if spec.kind == "repository":
            return self._repositories(spec, check, candidates)
        after = decode_cursor(spec.cursor) if spec.cursor else None
        items: list[dict[str, Any]] = []
        last: int | None = None
        scanned = 0
        more = False
        for row in self._keys(spec, candidates, after):
            scanned += 1
            if check(row):
                if len(items) == spec.n:
                    more = True
                    break
                items.append(tag_item(self.row(row)))
                last = row
            if scanned >= self.max_scan:
                more, last = True, row
                break
        cursor = (
            encode_cursor(self.order_key(spec.sort, last)) if more and last is not None else None
        )
        return SearchPage(items, cursor, scanned)

    def _candidates(self, spec: SearchSpec) -> set[int] | None:
        """The rows the exact filters allow (None: no such filter, or too many to list)."""
        terms: list[str] = []
        if spec.media_type:
            terms.append("m" + SEP + spec.media_type)
        if spec.artifact_type:
            terms.append("a" + SEP + spec.artifact_type)
        if spec.platform:
            terms.append("p" + SEP + spec.platform)
        for raw in spec.labels:
            terms.append("l" + SEP + raw)
        for raw in spec.annotations:
            terms.append("n" + SEP + raw)
        sets: list[SortedIds | set[int]] = [self._postings.get(t) or set() for t in terms]
        # A name pattern is matched against repository names (far fewer than tags); ranges
        # of size and time are read off their orders. Each is used only when it is narrow.
        for narrowed in (
            self._by_repository_name(spec),
            self._in_range("size", spec.min_size, spec.max_size, _size_key),
            self._in_range("pushed", spec.pushed_after, spec.pushed_before, _time_key),
            self._in_range("pulled", spec.pulled_after, spec.pulled_before, _time_key),
        ):
            if narrowed is not None:
                sets.append(narrowed)
        if not sets:
            return None
        sets.sort(key=len)
        first = sets[0]
        out = set(first) if isinstance(first, set) else first.to_set()
        for other in sets[1:]:
            if isinstance(other, set):
                out &= other
            elif len(out) * 16 < len(other):
                out = {row for row in out if row in other}
            else:
                out &= other.to_set()
        return out

    def _by_repository_name(self, spec: SearchSpec) -> set[int] | None:
        match = name_matcher(spec.q)
        if match is None:
            return None
        repos = [r for r in self._repo_rows if match(r)]
        if sum(self._repo_rows[r] for r in repos) > _SORTED_CANDIDATES:
            return None
        out: set[int] = set()
        for repo in repos:
            out.update(self._repo_ids(repo))
        return out

    def _in_range(
        self, order: str, lo: float | None, hi: float | None, fmt: Callable[[Any], str]
    ) -> set[int] | None:
        if lo is None and hi is None:
            return None
        start = fmt(lo) if lo is not None else None
        stop = fmt(hi) if hi is not None else None
        key = self._keys_of[order]
        out: set[int] = set()
        # walk() starts after its argument: step back to include `lo` itself.
        walk = self._orders[order].walk(fmt_before(start) if start is not None else None)
        for row in walk:
            if stop is not None and key(row) >= stop:
                break
            out.add(row)
            if len(out) > _SORTED_CANDIDATES:
                return None
        return out

    def _keys(
        self, spec: SearchSpec, candidates: set[int] | None, after: str | None
    ) -> Iterator[int]:
        """The rows in the requested order, after the cursor."""
        sort, desc = spec.sort, spec.desc
        if candidates is not None and len(candidates) <= _SORTED_CANDIDATES:
            key = self._keys_of[sort]
            ordered = sorted((key(row), row) for row in candidates)
            if desc:
                ordered.reverse()
            for order_key, row in ordered:
                if after is not None and (order_key >= after if desc else order_key <= after):
                    continue
                yield row
            return
        order = self._orders[sort]
        start = after
        stop: str | None = None
        if sort == "name" and (spec.repository or spec.namespace):
            if spec.repository:
                low, high = spec.repository + SEP, spec.repository + SEP + _LAST
            else:
                assert spec.namespace is not None
                low, high = spec.namespace + SEP, spec.namespace + "0"  # "/" + 1 == "0"
            if desc:
                start = high if after is None or after > high else after
                stop = low
            else:
                start = low if after is None or after < low else after
                stop = high
        for row in order.walk(start, desc, stop):
            if candidates is not None and row not in candidates:
                continue
            yield row

    def _repositories(
        self, spec: SearchSpec, check: _Filter, candidates: set[int] | None
    ) -> SearchPage:
        """Repositories with at least one matching tag, with their matching tags' figures."""
        after = decode_cursor(spec.cursor) if spec.cursor else None
        groups: dict[str, dict[str, Any]] = {}
        scanned = 0
        if spec.sort == "name":
            # Walk tags in name order; a repository is complete once the walk leaves it.
            by_name = SearchSpec(
                kind="tag",
                namespace=spec.namespace,
                repository=spec.repository,
                sort="name",
                desc=spec.desc,
                n=spec.n,
            )
            cursor = None
            if after is not None:
                cursor = after + ("" if spec.desc else SEP + _LAST)
            items: list[dict[str, Any]] = []
            more = False
            for row in self._keys(by_name, candidates, cursor):
                scanned += 1
                if self._repo[row] not in groups and len(groups) == spec.n and check(row):
                    more = True
                    break
                if check(row):
                    self._fold(groups, row)
                if scanned >= self.max_scan:
                    more = True
                    break
            items = list(groups.values())
            last = items[-1]["repository"] if items else None
            return SearchPage(items, encode_cursor(last) if more and last else None, scanned)
        # Sorted by time or size: walk the tag order; a repository takes the place of its
        # first matching tag in that walk (descending: its newest push, latest pull, largest
        # image; ascending: its oldest, earliest, smallest). After a cursor, a repository with
        # a matching tag before the cursor was on an earlier page and is skipped.
        walk_spec = SearchSpec(
            kind="tag",
            namespace=spec.namespace,
            repository=spec.repository,
            sort=spec.sort,
            desc=spec.desc,
            n=spec.n,
        )
        seen: set[str] = set()
        picked: list[tuple[int, str]] = []
        more = False
        for row in self._keys(walk_spec, candidates, after):
            scanned += 1
            if scanned >= self.max_scan:
                more = True
                break
            repo = self._repo[row]
            assert repo is not None
            if repo in seen or not check(row):
                continue
            seen.add(repo)
            if after is not None and self._matches_before(repo, spec, check, candidates, after):
                continue
            if len(picked) == spec.n:
                more = True
                break
            picked.append((row, repo))
        items = []
        for _, repo in picked:
            group: dict[str, dict[str, Any]] = {}
            for row in self._repo_ids(repo):
                if check(row) and (candidates is None or row in candidates):
                    self._fold(group, row)
            items.append(group[repo])
        cursor = (
            encode_cursor(self.order_key(spec.sort, picked[-1][0])) if more and picked else None
        )
        return SearchPage(items, cursor, scanned)

    def _matches_before(
        self,
        repo: str,
        spec: SearchSpec,
        check: _Filter,
        candidates: set[int] | None,
        cursor: str,
    ) -> bool:
        """Has `repo` a matching tag at or before `cursor` in the walk's order?"""
        key = self._keys_of[spec.sort]
        for row in self._repo_ids(repo):
            if not check(row) or (candidates is not None and row not in candidates):
                continue
            order_key = key(row)
            if (order_key >= cursor) if spec.desc else (order_key <= cursor):
                return True
        return False

    def _fold(self, groups: dict[str, dict[str, Any]], row: int) -> None:
        repo = self._repo[row]
        assert repo is not None
        group = groups.get(repo)
        if group is None:
            group = groups[repo] = {
                "repository": repo,
                "tags": 0,
                "size": 0,
                "pushed": None,
                "pulled": None,
                "platforms": [],
            }
        group["tags"] += 1
        group["size"] = max(group["size"], self._size[row])
        pushed, pulled = self._pushed[row], self._pulled[row]
        if pushed and (group["pushed"] is None or pushed > group["pushed"]):
            group["pushed"] = pushed
        if pulled and (group["pulled"] is None or pulled > group["pulled"]):
            group["pulled"] = pulled
        kind = self._kind[row]
        assert kind is not None
        for platform in kind[2]:
            if platform not in group["platforms"]:
                group["platforms"].append(platform)


def fmt_before(text: str) -> str:
    """A key just before every order key that starts with `text` (they continue with NUL)."""
    return text[:-1] + chr(ord(text[-1]) - 1) + _LAST


def tag_item(row: Row) -> dict[str, Any]:
    """A tag result as the API answers it (docs/search.md)."""
    item: dict[str, Any] = {
        "repository": row.repo,
        "tag": row.tag,
        "digest": row.digest,
        "media_type": row.media_type,
        "artifact_type": row.artifact_type,
        "size": row.size,
        "pushed": row.pushed or None,
        "pulled": row.pulled or None,
        "platforms": list(row.platforms),
        "labels": row.labels,
        "annotations": row.annotations,
    }
    return item


_KINDS: dict[Kind, Kind] = {}


def _shared_kind(media_type: str, artifact_type: str | None, platforms: tuple[str, ...]) -> Kind:
    """One tuple object per distinct kind (a handful in any registry; past 4,096 distinct
    ones, a row keeps its own)."""
    kind = (media_type, artifact_type, platforms)
    if len(_KINDS) > 4096:
        return kind
    return _KINDS.setdefault(kind, kind)


def _info(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    value: dict[str, Any] = json.loads(raw)
    return value


class _Filter:
    """The row checks a search needs beyond its postings (names, times, sizes, access),
    reading the index's columns by row id."""

    def __init__(self, spec: SearchSpec, index: SearchIndex) -> None:
        for raw in (*spec.labels, *spec.annotations):
            parse_term(raw, "term")
        repos, tags = index._repo, index._tag
        checks: list[Callable[[int], bool]] = []
        repo_match = name_matcher(spec.q)
        if repo_match is not None:
            checks.append(lambda row: bool(repo_match(repos[row])))
        tag_match = name_matcher(spec.tag)
        if tag_match is not None:
            checks.append(lambda row: bool(tag_match(tags[row])))
        repository = spec.repository
        if repository:
            checks.append(lambda row: repos[row] == repository)
        ns = spec.namespace
        if ns:
            prefix = ns + "/"
            checks.append(lambda row: repos[row] == ns or str(repos[row]).startswith(prefix))
        for lo, hi, column in (
            (spec.pushed_after, spec.pushed_before, index._pushed),
            (spec.pulled_after, spec.pulled_before, index._pulled),
        ):
            if lo is not None or hi is not None:
                checks.append(_between(column, lo, hi, when=True))
        if spec.min_size is not None or spec.max_size is not None:
            if (
                spec.min_size is not None
                and spec.max_size is not None
                and spec.min_size > spec.max_size
            ):
                raise RequestInvalid("min_size is larger than max_size")
            checks.append(_between(index._size, spec.min_size, spec.max_size, when=False))
        access: PullAccess | None = spec.access
        if access is not None:
            may_pull = access.checker()
            checks.append(lambda row: bool(may_pull(str(repos[row]))))
        self._checks = checks

    def __call__(self, row: int) -> bool:
        return all(check(row) for check in self._checks)


def _between(
    column: array[Any], lo: float | None, hi: float | None, when: bool
) -> Callable[[int], bool]:
    """A range check on a column; `when`: a time column, where 0 is "never" and matches no
    range."""

    def check(row: int) -> bool:
        value = column[row]
        if when and not value:
            return False  # never pushed-with-a-time / never pulled: no time to compare
        return (lo is None or value >= lo) and (hi is None or value < hi)

    return check
