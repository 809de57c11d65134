"""The search contract (docs/search.md): what a search asks, checked, and what it answers.

`SearchSpec` is the `search` query of the metadata catalogue (cargohold/metadata_api.py
`Search` carries it to a node; node/metadata/search_index.py answers it). Its wire form is
a JSON object with the keys of `SearchSpec`; every value is checked here, so a node never
sees a malformed search and the gateway's HTTP parameters (gateway/search.py) share the
same rules. Refusals are `RequestInvalid` (400 with OCI error JSON).

Name patterns: a pattern with `*`, `?` or `[` is a glob (fnmatch, case-sensitive, the whole
name must match); any other is a substring. `access` is the caller's pull rights as the
gateway's auth policy decided them (`PullAccess`): the node filters with it and never
decides who may see what on its own.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from cargohold.errors import RequestInvalid

KINDS = ("tag", "repository")
SORTS = ("name", "pushed", "pulled", "size")
DEFAULT_N = 50
MAX_N = 1000
MAX_TERMS = 16  # labels + annotations in one search
MAX_PATTERN = 256
_GLOB = re.compile(r"[*?\[]")
_PLATFORM = re.compile(r"[a-z0-9_.-]{1,32}(/[a-z0-9_.-]{1,32}){1,2}")


@dataclass(frozen=True, slots=True)
class PullAccess:
    """Which repositories a caller may pull: the longest namespace that contains a repository
    decides (`namespaces`: (namespace, may pull)), `default` outside every namespace."""

    default: bool
    namespaces: tuple[tuple[str, bool], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default, "namespaces": [list(n) for n in self.namespaces]}

    @classmethod
    def from_json(cls, raw: Any) -> PullAccess:
        if not isinstance(raw, dict) or not isinstance(raw.get("default"), bool):
            raise RequestInvalid("access must be {default: bool, namespaces: [[str, bool]]}")
        out = []
        for row in raw.get("namespaces") or []:
            if (
                not isinstance(row, list)
                or len(row) != 2
                or not isinstance(row[0], str)
                or not isinstance(row[1], bool)
            ):
                raise RequestInvalid("access namespaces must be [name, bool] pairs")
            out.append((row[0], row[1]))
        return cls(raw["default"], tuple(sorted(out, key=lambda r: -len(r[0]))))

    def checker(self) -> Any:
        """A `may_pull(repo) -> bool`, memoised per repository for one search."""
        seen: dict[str, bool] = {}
        namespaces = sorted(self.namespaces, key=lambda r: -len(r[0]))

        def may_pull(repo: str) -> bool:
            known = seen.get(repo)
            if known is not None:
                return known
            verdict = self.default
            for name, allowed in namespaces:
                if repo == name or repo.startswith(name + "/"):
                    verdict = allowed
                    break
            seen[repo] = verdict
            return verdict

        return may_pull


def name_matcher(pattern: str | None) -> Any:
    """`match(name) -> bool` for a substring or glob pattern (module docstring); None: all."""
    if not pattern:
        return None
    if _GLOB.search(pattern):
        return re.compile(fnmatch.translate(pattern)).match
    return lambda name: pattern in name


def parse_term(raw: str, what: str) -> tuple[str, str | None]:
    """`key=value` (exact) or `key` (present with any value)."""
    key, sep, value = raw.partition("=")
    if not key or len(raw) > MAX_PATTERN:
        raise RequestInvalid(f"{what} must be key or key=value (at most {MAX_PATTERN} chars)")
    return key, value if sep else None


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """One search (docs/search.md lists every field and its meaning)."""

    kind: str = "tag"
    q: str | None = None
    tag: str | None = None
    namespace: str | None = None
    repository: str | None = None
    labels: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    media_type: str | None = None
    artifact_type: str | None = None
    platform: str | None = None
    pushed_after: float | None = None
    pushed_before: float | None = None
    pulled_after: float | None = None
    pulled_before: float | None = None
    min_size: int | None = None
    max_size: int | None = None
    sort: str = "name"
    desc: bool = False
    n: int = DEFAULT_N
    cursor: str | None = None
    access: PullAccess | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is None or value == ():
                continue
            if name == "access":
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_json(cls, raw: Any) -> SearchSpec:
        if not isinstance(raw, dict):
            raise RequestInvalid("search arguments must be a JSON object")
        unknown = set(raw) - set(cls.__slots__)
        if unknown:
            raise RequestInvalid(f"unknown search fields: {', '.join(sorted(unknown))}")
        kind = _choice(raw, "kind", KINDS, "tag")
        sort = _choice(raw, "sort", SORTS, "name")
        desc = raw.get("desc", False)
        if not isinstance(desc, bool):
            raise RequestInvalid("desc must be a boolean")
        n = raw.get("n", DEFAULT_N)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
            raise RequestInvalid(f"n must be an integer in 1..{MAX_N}")
        labels = _terms(raw, "labels")
        annotations = _terms(raw, "annotations")
        if len(labels) + len(annotations) > MAX_TERMS:
            raise RequestInvalid(f"at most {MAX_TERMS} label and annotation terms")
        platform = _text(raw, "platform")
        if platform is not None and not _PLATFORM.fullmatch(platform):
            raise RequestInvalid("platform must be os/arch or os/arch/variant")
        access = raw.get("access")
        spec = cls(
            kind=kind,
            q=_text(raw, "q"),
            tag=_text(raw, "tag"),
            namespace=(_text(raw, "namespace") or "").strip("/") or None,
            repository=_text(raw, "repository"),
            labels=labels,
            annotations=annotations,
            media_type=_text(raw, "media_type"),
            artifact_type=_text(raw, "artifact_type"),
            platform=platform,
            pushed_after=_time(raw, "pushed_after"),
            pushed_before=_time(raw, "pushed_before"),
            pulled_after=_time(raw, "pulled_after"),
            pulled_before=_time(raw, "pulled_before"),
            min_size=_size(raw, "min_size"),
            max_size=_size(raw, "max_size"),
            sort=sort,
            desc=desc,
            n=n,
            cursor=_text(raw, "cursor"),
            access=None if access is None else PullAccess.from_json(access),
        )
        if spec.cursor is not None:
            decode_cursor(spec.cursor)
        return spec


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise RequestInvalid(f"{key} must be one of {', '.join(allowed)}")
    return str(value)


def _text(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_PATTERN or "\0" in value:
        raise RequestInvalid(f"{key} must be a string of at most {MAX_PATTERN} chars")
    return value


def _terms(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    values = raw.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RequestInvalid(f"{key} must be a list of key or key=value strings")
    for value in values:
        parse_term(value, key)
    return tuple(dict.fromkeys(values))


def _time(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise RequestInvalid(f"{key} must be unix seconds >= 0")
    return float(value)


def _size(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RequestInvalid(f"{key} must be an integer >= 0")
    return value


def encode_cursor(key: str) -> str:
    """The opaque cursor of a page: its last item's position in the sort order."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RequestInvalid("cursor is not one this API returned") from None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """Results in sort order; `next`: the cursor of the following page (None: the last)."""

    items: list[dict[str, Any]]
    next: str | None
    scanned: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "next": self.next, "scanned": self.scanned}

    @classmethod
    def from_json(cls, raw: Any) -> SearchPage:
        return cls(list(raw.get("items") or []), raw.get("next"), int(raw.get("scanned", 0)))
