"""`GET audit`: the activity log, filtered and paged (cluster admins only).

Query parameters: `repo` (a repository, or a prefix ending in `/`), `actor`, `action`,
`since` / `until` (unix seconds), `after` (the seq to continue after; 0 = from the oldest
retained record) and `n` (records per page, default 100, at most 1000). The answer:
`{"records": [record, ...], "next": seq or null, "head": {"seq", "hash"}}`; while `next`
is not null, ask again with `after=next`. A page scans at most `_SCAN` records, so a
narrow filter over a long log may answer fewer than `n` records (even none) with a `next`.

Sealed segments are read through the gateway's chunk reads (`cluster.read_all`) and
decoded in a worker thread; the in-memory records come from `audit_tail`. Records are the
JSON form of cargohold/audit.py `decode` (with `seq`, `prev` and `hash`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from cargohold.audit import decode, matches, segment_lines
from cargohold.errors import RequestInvalid
from gateway.admin_api import identity
from gateway.admin_api.body import answer
from gateway.context import context

_DEFAULT_N = 100
_MAX_N = 1000
_SCAN = 50_000


def _number(request: web.Request, key: str, default: float | None = None) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise RequestInvalid(f"{key!r} must be a number") from None


def _decode_after(data: bytes, after: int) -> list[dict[str, Any]]:
    out = []
    for line in segment_lines(data):
        record = decode(line)
        if record["seq"] > after:
            out.append(record)
    return out


async def list_audit(request: web.Request) -> web.StreamResponse:
    identity.require_cluster_admin(await identity.caller(request))
    return answer(await audit_page(request))


async def audit_page(request: web.Request) -> dict[str, Any]:
    """One page of the activity log as the query parameters ask (the module docstring);
    the caller checked that it may read it (the web UI's activity page too)."""
    ctx = context(request)
    after = int(_number(request, "after", 0) or 0)
    n = int(_number(request, "n", _DEFAULT_N) or 0)
    if after < 0 or not 0 < n <= _MAX_N:
        raise RequestInvalid(f"after must be >= 0 and n in 1..{_MAX_N}")
    since, until = _number(request, "since"), _number(request, "until")
    repo, actor = request.query.get("repo") or None, request.query.get("actor")
    action = request.query.get("action") or None
    head = await ctx.meta.audit_head()
    found: list[dict[str, Any]] = []
    scanned = 0
    position = after

    def take(records: list[dict[str, Any]]) -> bool:
        """Keep the matching ones; True once the page is full or the scan budget spent."""
        nonlocal scanned, position
        for record in records:
            scanned += 1
            position = record["seq"]
            if matches(record, repo=repo, actor=actor, action=action, since=since, until=until):
                found.append(record)
                if len(found) >= n:
                    return True
            if scanned >= _SCAN:
                return True
        return False

    full = False
    for seg in head.segments:
        if seg.last <= position or (since is not None and seg.last_time < since):
            position = max(position, seg.last)
            continue
        data = await ctx.cluster.read_all(seg.recipe)
        if full := take(await asyncio.to_thread(_decode_after, data, position)):
            break
    while not full:
        page = await ctx.meta.audit_tail(max(position, head.tail_first - 1), _MAX_N)
        full = take([decode(line) for line in page.lines])
        if not page.more:
            break
    more = full and position < head.head_seq
    return {
        "records": found,
        "next": position if more else None,
        "head": {"seq": head.head_seq, "hash": head.head_hash},
    }


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/audit", list_audit)
