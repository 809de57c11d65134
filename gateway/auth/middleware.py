"""The check every `/v2/` request passes before its handler (mode `none`: no check).

htpasswd mode: HTTP Basic credentials checked by `AuthState.login`; none or wrong -> 401
`UNAUTHORIZED` with the Basic challenge; right but without the action -> 403 `DENIED`.

token mode: a Bearer JWT verified by `TokenVerifier` (cheap: on the loop); none or
invalid -> 401 with the Bearer challenge naming the scope the route needs. A valid token
lacking that scope -> 401 `insufficient_scope` (the client fetches a new token), unless
the built-in service knows the user may not have it: then 403 `DENIED`. With users or
robots from the cluster metadata, a token's user must still be enabled (a robot: still
exist, unexpired) and still hold the right (checked against the cached directory), so
revocation does not wait for expiry.

A cross-repository mount (`POST .../blobs/uploads/?mount=&from=`) is only tried when the
caller may pull `from`; otherwise `MOUNT_ALLOWED` is False and the upload handler opens a
plain upload (202), so the answer does not tell whether the blob exists there.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from cargohold.errors import Denied
from gateway.access_log import USER_KEY
from gateway.auth.scopes import Scope, covers, repository, required_scope
from gateway.auth.state import AUTH, AuthState, basic_credentials
from gateway.auth.tokens import TokenInvalid, VerifiedToken

MOUNT_ALLOWED: web.RequestKey[bool] = web.RequestKey("cargohold_mount_allowed", bool)
_PULL = frozenset({"pull"})


def _mount_source(request: web.Request) -> str | None:
    if request.method != "POST" or "mount" not in request.query:
        return None
    return request.query.get("from") or None


async def _basic_user(auth: AuthState, request: web.Request, scope: Scope | None) -> str:
    credentials = basic_credentials(request.headers.get("Authorization", ""))
    if credentials is None or not await auth.login(request, *credentials):
        raise auth.unauthorized(request, scope)
    return credentials[0]


def _bearer(auth: AuthState, request: web.Request, scope: Scope | None) -> VerifiedToken:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise auth.unauthorized(request, scope)
    assert auth.verifier is not None
    try:
        return auth.verifier.verify(token.strip())
    except TokenInvalid:
        raise auth.unauthorized(request, scope, "invalid_token") from None


async def _htpasswd(auth: AuthState, request: web.Request, scope: Scope | None) -> None:
    user = await _basic_user(auth, request, scope)
    request[USER_KEY] = user
    if scope is not None and not covers(await auth.policy.granted(user, scope), scope.actions):
        raise Denied(detail={"scope": str(scope)})
    source = _mount_source(request)
    if source is not None:
        granted = await auth.policy.granted(user, repository(source, _PULL))
        request[MOUNT_ALLOWED] = covers(granted, _PULL)


async def _token(auth: AuthState, request: web.Request, scope: Scope | None) -> None:
    token = _bearer(auth, request, scope)
    request[USER_KEY] = token.subject
    if auth.directory is not None and token.subject:
        # Cluster users and robots: a disabled user, a revoked grant or robot ends its
        # tokens at once (as soon as this gateway re-reads the directory), an expired
        # robot at its expiry; not when the token expires.
        if not await auth.still_valid(token.subject):
            raise auth.unauthorized(request, scope, "invalid_token")
        if scope is not None and not covers(
            await auth.policy.granted(token.subject, scope), scope.actions
        ):
            raise Denied(detail={"scope": str(scope)})
    if scope is not None and not covers(token.granted(scope.type, scope.name), scope.actions):
        if token.subject and auth.issuer is not None:
            may = await auth.policy.granted(token.subject, scope)
            if not covers(may, scope.actions):
                raise Denied(detail={"scope": str(scope)})
        raise auth.unauthorized(request, scope, "insufficient_scope")
    source = _mount_source(request)
    if source is not None:
        request[MOUNT_ALLOWED] = covers(token.granted("repository", source), _PULL)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app.get(AUTH)
    if auth is None or auth.mode == "none" or not request.path.startswith("/v2"):
        return await handler(request)
    scope = required_scope(request)
    if auth.mode == "htpasswd":
        await _htpasswd(auth, request, scope)
    else:
        await _token(auth, request, scope)
    return await handler(request)
