"""Search requests as the HTTP API and the web UI make them (docs/search.md).

`spec_from_query` turns query parameters into a checked `SearchSpec` (cargohold/search.py);
`pull_access` asks the gateway's auth policy which repositories the caller may pull, so the
node filters results by the same rules `/v2/` enforces; `run_search` does both and asks
the cluster.

How the access is computed: the policy decides by the longest namespace containing a
repository (gateway/auth/directory.py), so asking it once per namespace (for the repository
named like the namespace itself) and once for a name outside every namespace gives every
verdict the node needs. With `auth.mode = "none"` there is no filter.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from cargohold.errors import RequestInvalid
from cargohold.search import PullAccess, SearchPage, SearchSpec
from gateway.auth.scopes import repository
from gateway.auth.state import AUTH, AuthState
from gateway.context import context

_PULL = frozenset({"pull"})
# A repository name no namespace holds (namespaces are names, which start alphanumeric).
_OUTSIDE = "_"
_TIMES = ("pushed_after", "pushed_before", "pulled_after", "pulled_before")
_SIZES = ("min_size", "max_size")
_TEXTS = (
    "kind",
    "q",
    "tag",
    "namespace",
    "repository",
    "media_type",
    "artifact_type",
    "platform",
    "cursor",
)


def parse_time(key: str, raw: str) -> float:
    """Unix seconds, or an RFC 3339 / ISO 8601 time (a date alone is its midnight UTC)."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise RequestInvalid(f"{key} must be unix seconds or an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_size(key: str, raw: str) -> int:
    """Bytes, with an optional K/M/G/T (binary) suffix: `10M`."""
    text = raw.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        raise RequestInvalid(f"{key} must be bytes (e.g. 1048576 or 1M)") from None
    if value < 0:
        raise RequestInvalid(f"{key} must be >= 0")
    return int(value)


def spec_from_query(query: MultiMapping[str], default_n: int | None = None) -> SearchSpec:
    """A checked SearchSpec from query parameters (docs/search.md lists them)."""
    raw: dict[str, Any] = {}
    for key in _TEXTS:
        if query.get(key):
            raw[key] = query[key]
    for key in _TIMES:
        if query.get(key):
            raw[key] = parse_time(key, query[key])
    for key in _SIZES:
        if query.get(key):
            raw[key] = parse_size(key, query[key])
    raw["labels"] = [v for v in query.getall("label", []) if v]
    raw["annotations"] = [v for v in query.getall("annotation", []) if v]
    sort = query.get("sort") or "name"
    if sort.startswith("-"):
        raw["desc"], sort = True, sort[1:]
    raw["sort"] = sort
    order = query.get("order")
    if order:
        if order not in ("asc", "desc"):
            raise RequestInvalid("order must be asc or desc")
        raw["desc"] = order == "desc"
    n = query.get("n")
    if n:
        try:
            raw["n"] = int(n)
        except ValueError:
            raise RequestInvalid("n must be an integer") from None
    elif default_n is not None:
        raw["n"] = default_n
    return SearchSpec.from_json(raw)


async def pull_access(auth: AuthState | None, user: str | None) -> PullAccess | None:
    """What `user` (None: anonymous) may pull, as the node filters it (module docstring)."""
    if auth is None or auth.mode == "none":
        return None
    policy = auth.policy
    default = "pull" in await policy.granted(user, repository(_OUTSIDE, _PULL))
    namespaces: list[tuple[str, bool]] = []
    if auth.directory is not None:
        await auth.directory.refresh()
        for name in auth.directory.namespace_names():
            allowed = "pull" in await policy.granted(user, repository(name, _PULL))
            namespaces.append((name, allowed))
    return PullAccess(default, tuple(namespaces))


async def run_search(request: web.Request, user: str | None, spec: SearchSpec) -> SearchPage:
    """The page of results `user` may see."""
    access = await pull_access(request.app.get(AUTH), user)
    ctx = context(request)
    return await ctx.meta.search(replace(spec, access=access))
