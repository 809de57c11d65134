"""Reading the JSON bodies of admin API requests: an object, its fields typed, and
`RequestInvalid` (400, OCI error JSON) for anything else."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cargohold.errors import RequestInvalid

_MAX_BODY = 64 * 1024


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (an empty body is `{}`)."""
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise RequestInvalid("request body too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RequestInvalid("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise RequestInvalid("the request body must be a JSON object")
    return body


def field(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """`body[key]` of type `kind` (bool is not an int), `default` when absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestInvalid(f"{key!r} must be a {kind.__name__}")
    return value


def answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)
