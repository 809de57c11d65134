"""Scopes of the Docker token protocol and what each `/v2/` route needs.

A scope is `type:name:actions` (`repository:team/app:pull,push`, `registry:catalog:*`).
`required_scope` maps a routed request to the scope it needs: pulls (GET/HEAD of
manifests, blobs, tags, referrers) need `pull`; manifest PUT and every upload route need
`pull,push` (what clients ask for, so the challenge names it); DELETEs need `delete`; the
catalog needs `registry:catalog:*`; `/v2/` itself needs only a valid identity (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

ACTION_ORDER = ("pull", "push", "delete", "*")
_PULL = frozenset({"pull"})
_PUSH = frozenset({"pull", "push"})
_DELETE = frozenset({"delete"})


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        known = [a for a in ACTION_ORDER if a in self.actions]
        rest = sorted(self.actions - set(ACTION_ORDER))
        return f"{self.type}:{self.name}:{','.join(known + rest)}"

    def to_claim(self) -> dict[str, object]:
        known = [a for a in ACTION_ORDER if a in self.actions]
        return {"type": self.type, "name": self.name, "actions": known}


CATALOG = Scope("registry", "catalog", frozenset({"*"}))


def parse_scope(text: str) -> Scope | None:
    """`type:name:a,b` -> Scope; None when malformed (ignored, as the protocol says)."""
    kind, sep, rest = text.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return Scope(kind, name, frozenset(a for a in actions.split(",") if a))


def parse_scopes(values: list[str]) -> list[Scope]:
    """Every scope of repeated and/or space-separated `scope` parameters."""
    out = []
    for value in values:
        for part in value.split():
            scope = parse_scope(part)
            if scope is not None:
                out.append(scope)
    return out


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def repository(name: str, actions: frozenset[str]) -> Scope:
    return Scope("repository", name, actions)


def required_scope(request: web.Request) -> Scope | None:
    """The scope this routed `/v2/` request needs; None: any authenticated caller."""
    route, method = _route(request), request.method
    if route == "/v2/_catalog":
        return CATALOG
    name = request.match_info.get("name")
    if not name:
        return None
    if "/blobs/uploads" in route:
        return repository(name, _PUSH)
    if method == "DELETE":
        return repository(name, _DELETE)
    if method in ("PUT", "POST", "PATCH"):
        return repository(name, _PUSH)
    return repository(name, _PULL)


def covers(granted: frozenset[str], needed: frozenset[str]) -> bool:
    return "*" in granted or needed <= granted
