"""The HTTP admin API under `/_cargohold/api/v1/` (docs/admin-api.md): JSON over the same
credentials as `/v2/`, the same operations as `cargohold admin users|groups|robots|
namespaces`, served by every gateway.

Each resource lives in its own module with a `routes(router, prefix)` function; `ROUTES`
lists them, and `add_routes` wires them all (gateway/app.py calls it). To add a resource
(e.g. the activity log), write its module and append it to `ROUTES`. Handlers start with
`identity.caller(request)` (401 without valid credentials) and check what the caller may
do with `identity.require_*` (403 `DENIED`); every failure is a `cargohold.errors` type,
so gateway/errors.py answers it as OCI error JSON.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.admin_api import (
    audit,
    groups,
    namespaces,
    robots,
    search,
    users,
    vulnerabilities,
    webhooks,
    whoami,
)

PREFIX = "/_cargohold/api/v1"

ROUTES: list[Callable[[web.UrlDispatcher, str], None]] = [
    whoami.routes,
    users.routes,
    groups.routes,
    robots.routes,
    namespaces.routes,
    audit.routes,
    search.routes,
    webhooks.routes,
    vulnerabilities.routes,
]


def add_routes(router: web.UrlDispatcher) -> None:
    for register in ROUTES:
        register(router, PREFIX)
