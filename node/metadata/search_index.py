"""`SearchIndex`: the search query's index of tags, derived from the metadata state.

Never a second source of truth: every row is computed from `MetadataState` (tags, manifest
records, times, `image_info`, blob sizes) and nothing of it is snapshotted. A node builds
it in the background after a start or a snapshot load, in slices that hold the state's lock
briefly (node/metadata/search_build.py: `building`, `add_tags`, `finish`); a bare state
builds it whole at its first search. From its creation on, the state marks what its
commands change (`touch(repo, tag)` where a tag is set or dropped, `touch_digest(repo,
digest)` where a pull dates a manifest): a search first recomputes the marked rows, so an
applied command is visible to the next search on that node.

Layout (one row per tag; `key` = repo NUL tag, which sorts like (repo, tag)):

    rows      {key: Row}                      what a result shows and the filters read
    orders    name   SortedNames(key)         walked for sort=name and namespace ranges
              pushed SortedNames(time NUL key)  fixed-width times and sizes sort as text
              pulled SortedNames(time NUL key)
              size   SortedNames(size NUL key)
    postings  {term: {key, ...}}              m/a NUL media or artifact type, p NUL os/arch
                                              (and os/arch/variant), l|n NUL key(=value) for
                                              config labels and manifest annotations
    tags_of   {(repo, digest): {tag, ...}}    which rows a pull re-dates
    repo_rows {repo: rows}                    name patterns are matched per repository

A search intersects the postings its exact filters name (smallest first), with the rows of
the repositories whose names match its pattern and the rows in its size and time ranges
when those are narrow (at most `_SORTED_CANDIDATES` rows). When that leaves
few candidates it sorts them; otherwise it walks the order from the cursor and checks each
row, stopping after `n` matches or `max_scan` rows (then the page may be short, with a
`next` cursor). The cursor is the last row's order key, so paging is stable while rows come
and go. Repository results group tag rows by repository: sorted by name they walk the name
order; sorted by time or size they walk that order and place a repository at its first
matching tag (its newest, latest or largest descending; oldest, earliest or smallest
ascending), then fold its matching tags into the item.

Rows keep the state's own strings (repository, tag, digest, the `image_info` and annotation
JSON) and parse labels only to show them; posting terms are interned. Memory per tag:
bench/search_latency.py prints it (bench/README.md).
"""

from __future__ import annotations

import json
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
from node.metadata.sorted_names import SortedNames

SEP = "\0"
_SORTED_CANDIDATES = 4096  # at most this many candidates: sort them instead of walking
DEFAULT_MAX_SCAN = 200_000


class Row(NamedTuple):
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
        self._rows: dict[str, Row] = {}
        self._orders = {name: SortedNames() for name in ("name", "pushed", "pulled", "size")}
        self._postings: dict[str, set[str]] = {}
        # One tag (the usual case) is kept as itself: a set per manifest would cost 216 B.
        self._tags_of: dict[tuple[str, str], str | set[str]] = {}
        self._repo_rows: dict[str, int] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_digests: set[tuple[str, str]] = set()
        # Built in bulk: each order sorted once (at `finish`), not grown one key at a time.
        self._bulk: dict[str, list[str]] | None = {name: [] for name in self._orders}
        self.ready = False
        if not building:
            for repo, tags in state.tags.items():
                self.add_tags(repo, tags)
            self.finish()
            self.ready = True

    def __len__(self) -> int:
        return len(self._rows)

    # -- building (node/metadata/search_build.py drives it in slices) -----------------------
    def add_tags(self, repo: str, tags: Iterable[str]) -> int:
        """Add the rows of these tags of `repo` that the state holds now; how many were
        added. The caller holds the state's lock. Rows changed afterwards were touched
        (`touch`) and are recomputed by the `sync` after `finish`; a tag gone meanwhile adds
        none, one added meanwhile was touched."""
        assert self._bulk is not None, "add_tags after finish"
        present = self._state.tags.get(repo)
        if not present:
            return 0
        added = 0
        for tag in tags:
            key = repo + SEP + tag
            if tag in present and key not in self._rows:
                self._add(repo, tag, key, self._bulk)
                added += 1
        return added

    def finish(self) -> None:
        """Sort the orders of the rows added so far. Needs no lock: until `ready` is set
        (by the caller, after a `sync` under the lock) only this index's builder reads them,
        and the commands applied meanwhile only mark rows dirty."""
        assert self._bulk is not None, "finish twice"
        self._orders = {name: SortedNames(keys) for name, keys in self._bulk.items()}
        self._bulk = None

    # -- upkeep ------------------------------------------------------------------------------
    def touch(self, repo: str, tag: str) -> None:
        """The tag was set, moved or dropped: recompute its row at the next search."""
        self._dirty.add((repo, tag))

    def touch_digest(self, repo: str, digest: str) -> None:
        """The manifest's pull time changed: recompute the rows of its tags."""
        self._dirty_digests.add((repo, digest))

    def sync(self) -> None:
        """Recompute the rows touched since the last sync (after `finish` only)."""
        for repo, digest in self._dirty_digests:
            tags = self._tags_of.get((repo, digest), ())
            for tag in (tags,) if isinstance(tags, str) else tags:
                self._dirty.add((repo, tag))
        self._dirty_digests.clear()
        for repo, tag in self._dirty:
            key = repo + SEP + tag
            old = self._rows.get(key)
            if old is not None:
                self._remove(key, old)
            if tag in self._state.tags.get(repo, ()):
                self._add(repo, tag, key)
        self._dirty.clear()

    def _row(self, repo: str, tag: str) -> Row:
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
        return Row(
            repo,
            tag,
            digest,
            record.media_type,
            record.artifact_type,
            size,
            pushed or 0.0,
            st.pulled.get(repo, {}).get(digest, 0.0),
            _shared(tuple(sorted(platforms))),
            info_json,
            record.annotations_json,
        )

    def _add(self, repo: str, tag: str, key: str, bulk: dict[str, list[str]] | None = None) -> None:
        row = self._rows[key] = self._row(repo, tag)
        keys = {
            "name": key,
            "pushed": _time_key(row.pushed) + SEP + key,
            "pulled": _time_key(row.pulled) + SEP + key,
            "size": _size_key(row.size) + SEP + key,
        }
        for name, order_key in keys.items():
            if bulk is not None:
                bulk[name].append(order_key)
            else:
                self._orders[name].add(order_key)
        for term in _terms(row):
            self._postings.setdefault(term, set()).add(key)
        held = self._tags_of.get((repo, row.digest))
        if held is None:
            self._tags_of[(repo, row.digest)] = tag
        elif isinstance(held, str):
            self._tags_of[(repo, row.digest)] = {held, tag}
        else:
            held.add(tag)
        self._repo_rows[repo] = self._repo_rows.get(repo, 0) + 1

    def _remove(self, key: str, row: Row) -> None:
        del self._rows[key]
        self._orders["name"].discard(key)
        self._orders["pushed"].discard(_time_key(row.pushed) + SEP + key)
        self._orders["pulled"].discard(_time_key(row.pulled) + SEP + key)
        self._orders["size"].discard(_size_key(row.size) + SEP + key)
        for term in _terms(row):
            keys = self._postings.get(term)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._postings[term]
        left = self._repo_rows[row.repo] - 1
        if left:
            self._repo_rows[row.repo] = left
        else:
            del self._repo_rows[row.repo]
        pair = (row.repo, row.digest)
        held = self._tags_of.get(pair)
        if isinstance(held, str):
            if held == row.tag:
                del self._tags_of[pair]
        elif held is not None:
            held.discard(row.tag)
            if not held:
                del self._tags_of[pair]

    # -- queries -----------------------------------------------------------------------------
    def order_key(self, sort: str, key: str) -> str:
        row = self._rows[key]
        if sort == "name":
            return key
        if sort == "size":
            return _size_key(row.size) + SEP + key
        return _time_key(row.pushed if sort == "pushed" else row.pulled) + SEP + key

    def search(self, spec: SearchSpec) -> SearchPage:
        self.sync()
        check = _Filter(spec)
        candidates = self._candidates(spec)
        if spec.kind == "repository":
            return self._repositories(spec, check, candidates)
        after = decode_cursor(spec.cursor) if spec.cursor else None
        items: list[dict[str, Any]] = []
        last: str | None = None
        scanned = 0
        more = False
        for order_key, key in self._keys(spec, candidates, after):
            scanned += 1
            row = self._rows[key]
            if check(row):
                if len(items) == spec.n:
                    more = True
                    break
                items.append(tag_item(row))
                last = order_key
            if scanned >= self.max_scan:
                more, last = True, order_key
                break
        return SearchPage(items, encode_cursor(last) if more and last else None, scanned)

    def _candidates(self, spec: SearchSpec) -> set[str] | None:
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
        sets = [self._postings.get(t, set()) for t in terms]
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
        out = set(sets[0])
        for other in sets[1:]:
            out &= other
        return out

    def _by_repository_name(self, spec: SearchSpec) -> set[str] | None:
        match = name_matcher(spec.q)
        if match is None:
            return None
        repos = [r for r in self._repo_rows if match(r)]
        if sum(self._repo_rows[r] for r in repos) > _SORTED_CANDIDATES:
            return None
        out: set[str] = set()
        for repo in repos:
            for key in self._orders["name"].walk(repo + SEP):
                if not key.startswith(repo + SEP):
                    break
                out.add(key)
        return out

    def _in_range(
        self, order: str, lo: float | None, hi: float | None, fmt: Callable[[Any], str]
    ) -> set[str] | None:
        if lo is None and hi is None:
            return None
        start = fmt(lo) if lo is not None else None
        stop = fmt(hi) if hi is not None else None
        out: set[str] = set()
        # walk() starts after its argument: step back to include `lo` itself.
        walk = self._orders[order].walk(fmt_before(start) if start is not None else None)
        for order_key in walk:
            if stop is not None and order_key >= stop:
                break
            out.add(order_key.split(SEP, 1)[1])
            if len(out) > _SORTED_CANDIDATES:
                return None
        return out

    def _keys(
        self, spec: SearchSpec, candidates: set[str] | None, after: str | None
    ) -> Iterator[tuple[str, str]]:
        """(order key, row key) in the requested order, after the cursor."""
        sort, desc = spec.sort, spec.desc
        if candidates is not None and len(candidates) <= _SORTED_CANDIDATES:
            ordered = sorted((self.order_key(sort, k), k) for k in candidates)
            if desc:
                ordered.reverse()
            for order_key, key in ordered:
                if after is not None and (order_key >= after if desc else order_key <= after):
                    continue
                yield order_key, key
            return
        order = self._orders[sort]
        start = after
        stop: str | None = None
        if sort == "name" and (spec.repository or spec.namespace):
            if spec.repository:
                low, high = spec.repository + SEP, spec.repository + SEP + "\U0010ffff"
            else:
                assert spec.namespace is not None
                low, high = spec.namespace + SEP, spec.namespace + "0"  # "/" + 1 == "0"
            if desc:
                start = high if after is None or after > high else after
                stop = low
            else:
                start = low if after is None or after < low else after
                stop = high
        for order_key in order.walk(start, desc):
            if stop is not None and (order_key < stop if desc else order_key > stop):
                return
            key = order_key if sort == "name" else order_key.split(SEP, 1)[1]
            if candidates is not None and key not in candidates:
                continue
            yield order_key, key

    def _repositories(
        self, spec: SearchSpec, check: _Filter, candidates: set[str] | None
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
                cursor = after + ("" if spec.desc else SEP + "\U0010ffff")
            items: list[dict[str, Any]] = []
            more = False
            for _, key in self._keys(by_name, candidates, cursor):
                scanned += 1
                row = self._rows[key]
                if row.repo not in groups and len(groups) == spec.n and check(row):
                    more = True
                    break
                if check(row):
                    _fold(groups, row)
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
        picked: list[tuple[str, str]] = []
        more = False
        for order_key, key in self._keys(walk_spec, candidates, after):
            scanned += 1
            if scanned >= self.max_scan:
                more = True
                break
            row = self._rows[key]
            if row.repo in seen or not check(row):
                continue
            seen.add(row.repo)
            if after is not None and self._matches_before(row.repo, spec, check, candidates, after):
                continue
            if len(picked) == spec.n:
                more = True
                break
            picked.append((order_key, row.repo))
        items = []
        for _, repo in picked:
            group: dict[str, dict[str, Any]] = {}
            for key in self._orders["name"].walk(repo + SEP):
                if not key.startswith(repo + SEP):
                    break
                row = self._rows[key]
                if check(row) and (candidates is None or key in candidates):
                    _fold(group, row)
            items.append(group[repo])
        cursor = encode_cursor(picked[-1][0]) if more and picked else None
        return SearchPage(items, cursor, scanned)

    def _matches_before(
        self,
        repo: str,
        spec: SearchSpec,
        check: _Filter,
        candidates: set[str] | None,
        cursor: str,
    ) -> bool:
        """Has `repo` a matching tag at or before `cursor` in the walk's order?"""
        for key in self._orders["name"].walk(repo + SEP):
            if not key.startswith(repo + SEP):
                return False
            row = self._rows[key]
            if not check(row) or (candidates is not None and key not in candidates):
                continue
            order_key = self.order_key(spec.sort, key)
            if (order_key >= cursor) if spec.desc else (order_key <= cursor):
                return True
        return False


def fmt_before(text: str) -> str:
    """A key just before every order key that starts with `text` (they continue with NUL)."""
    return text[:-1] + chr(ord(text[-1]) - 1) + "\U0010ffff"


def _fold(groups: dict[str, dict[str, Any]], row: Row) -> None:
    group = groups.get(row.repo)
    if group is None:
        group = groups[row.repo] = {
            "repository": row.repo,
            "tags": 0,
            "size": 0,
            "pushed": None,
            "pulled": None,
            "platforms": [],
        }
    group["tags"] += 1
    group["size"] = max(group["size"], row.size)
    if row.pushed and (group["pushed"] is None or row.pushed > group["pushed"]):
        group["pushed"] = row.pushed
    if row.pulled and (group["pulled"] is None or row.pulled > group["pulled"]):
        group["pulled"] = row.pulled
    for platform in row.platforms:
        if platform not in group["platforms"]:
            group["platforms"].append(platform)


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


def _terms(row: Row) -> Iterator[str]:
    """The posting terms of a row, interned (rows sharing a label share its term string)."""
    yield intern("m" + SEP + row.media_type)
    if row.artifact_type:
        yield intern("a" + SEP + row.artifact_type)
    for platform in row.platforms:
        yield intern("p" + SEP + platform)
        os_arch = "/".join(platform.split("/")[:2])
        if os_arch != platform:
            yield intern("p" + SEP + os_arch)
    for prefix, values in (("l", row.labels), ("n", row.annotations)):
        for k, v in values.items():
            if not isinstance(v, str):
                continue
            yield intern(prefix + SEP + k)
            yield intern(prefix + SEP + k + "=" + v)


_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared(platforms: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct platform list (a handful in any registry)."""
    if len(_TUPLES) > 4096:
        return platforms
    return _TUPLES.setdefault(platforms, platforms)


def _info(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    value: dict[str, Any] = json.loads(raw)
    return value


class _Filter:
    """The row checks a search needs beyond its postings (names, times, sizes, access)."""

    def __init__(self, spec: SearchSpec) -> None:
        for raw in (*spec.labels, *spec.annotations):
            parse_term(raw, "term")
        checks: list[Callable[[Row], bool]] = []
        repo_match = name_matcher(spec.q)
        if repo_match is not None:
            checks.append(lambda row: bool(repo_match(row.repo)))
        tag_match = name_matcher(spec.tag)
        if tag_match is not None:
            checks.append(lambda row: bool(tag_match(row.tag)))
        repository = spec.repository
        if repository:
            checks.append(lambda row: row.repo == repository)
        ns = spec.namespace
        if ns:
            prefix = ns + "/"
            checks.append(lambda row: row.repo == ns or row.repo.startswith(prefix))
        for lo, hi, attr in (
            (spec.pushed_after, spec.pushed_before, "pushed"),
            (spec.pulled_after, spec.pulled_before, "pulled"),
        ):
            if lo is not None or hi is not None:
                checks.append(_between(attr, lo, hi))
        if spec.min_size is not None or spec.max_size is not None:
            if (
                spec.min_size is not None
                and spec.max_size is not None
                and spec.min_size > spec.max_size
            ):
                raise RequestInvalid("min_size is larger than max_size")
            checks.append(_between("size", spec.min_size, spec.max_size))
        access: PullAccess | None = spec.access
        if access is not None:
            may_pull = access.checker()
            checks.append(lambda row: bool(may_pull(row.repo)))
        self._checks = checks

    def __call__(self, row: Row) -> bool:
        return all(check(row) for check in self._checks)


def _between(attr: str, lo: float | None, hi: float | None) -> Callable[[Row], bool]:
    def check(row: Row) -> bool:
        value = getattr(row, attr)
        if attr != "size" and not value:
            return False  # never pushed-with-a-time / never pulled: no time to compare
        return (lo is None or value >= lo) and (hi is None or value < hi)

    return check
