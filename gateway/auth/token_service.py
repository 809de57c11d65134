"""The built-in token service at `/auth/token` (token mode with `auth.signing_key`).

GET (the Docker token protocol): optional HTTP Basic credentials, `service`, any number of
`scope` parameters, `offline_token=true` for a refresh token too. Without credentials the
token is anonymous (subject ""). Answer: `{"token", "access_token", "expires_in",
"issued_at"[, "refresh_token"]}`.

POST (the OAuth2 form `docker login` uses): `grant_type=password` with `username`,
`password` (and `access_type=offline` for a refresh token, which docker stores as the
identity token), or `grant_type=refresh_token` with `refresh_token`; `service`, `scope`
(space-separated), `client_id`. Answer: `{"access_token", "token", "scope", "expires_in",
"issued_at"[, "refresh_token"]}`.

Each requested scope is granted the actions the policy allows this user (possibly none:
the token then carries that scope with no actions, as the protocol says). Wrong
credentials: 401 `UNAUTHORIZED`; too many: 429 with `Retry-After`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cargohold.errors import RequestInvalid, Unauthorized
from gateway.access_log import USER_KEY
from gateway.auth.scopes import Scope, parse_scopes
from gateway.auth.state import AUTH, AuthState, basic_credentials
from gateway.auth.tokens import TokenInvalid


def _auth(request: web.Request) -> AuthState:
    auth = request.app[AUTH]
    assert auth.issuer is not None
    return auth


def _check_service(auth: AuthState, service: str | None) -> None:
    if service and service != auth.cfg.service:
        raise RequestInvalid(f"unknown service {service!r}")


async def _grant(auth: AuthState, user: str, scopes: list[Scope]) -> list[Scope]:
    out = []
    for scope in scopes:
        actions = await auth.policy.granted(user or None, scope)
        out.append(Scope(scope.type, scope.name, actions & scope.actions))
    return out


def _answer(auth: AuthState, user: str, granted: list[Scope], refresh: bool) -> dict[str, Any]:
    assert auth.issuer is not None
    token = auth.issuer.access_token(user, granted)
    body: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": auth.issuer.ttl,
        "issued_at": datetime.fromtimestamp(int(time.time()), UTC).isoformat(),
        "scope": " ".join(str(s) for s in granted),
    }
    if refresh and user:
        body["refresh_token"] = auth.issuer.refresh_token(user)
    return body


async def token_get(request: web.Request) -> web.StreamResponse:
    auth = _auth(request)
    _check_service(auth, request.query.get("service"))
    user = ""
    credentials = basic_credentials(request.headers.get("Authorization", ""))
    if credentials is not None:
        if not await auth.login(request, *credentials):
            raise Unauthorized("wrong user name or password")
        user = credentials[0]
    request[USER_KEY] = user
    granted = await _grant(auth, user, parse_scopes(request.query.getall("scope", [])))
    refresh = request.query.get("offline_token", "").lower() == "true"
    return web.json_response(_answer(auth, user, granted, refresh))


async def token_post(request: web.Request) -> web.StreamResponse:
    auth = _auth(request)
    form = await request.post()
    _check_service(auth, _text(form.get("service")))
    grant_type = _text(form.get("grant_type"))
    scopes = parse_scopes([_text(form.get("scope"))])
    refresh = False
    if grant_type == "password":
        user = _text(form.get("username"))
        if not await auth.login(request, user, _text(form.get("password"))):
            raise Unauthorized("wrong user name or password")
        refresh = _text(form.get("access_type")) == "offline"
    elif grant_type == "refresh_token":
        assert auth.verifier is not None
        try:
            user = auth.verifier.verify_refresh(_text(form.get("refresh_token")))
        except TokenInvalid:
            raise Unauthorized("invalid refresh token") from None
        if not await auth.user_exists(user):
            raise Unauthorized("invalid refresh token")
    else:
        raise RequestInvalid(f"unsupported grant_type {grant_type!r}")
    request[USER_KEY] = user
    granted = await _grant(auth, user, scopes)
    body = _answer(auth, user, granted, refresh)
    if grant_type == "refresh_token":
        body["refresh_token"] = _text(form.get("refresh_token"))
    return web.json_response(body)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
