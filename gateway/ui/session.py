"""Who is looking at the web UI, and what they may do there.

Login (token mode with the built-in token service): the form posts the user name and
password to `/ui/login`, which checks them exactly as the token service's password grant
does (`AuthState.login`: the same failed-login limits and activity-log record) and sets
the `cargohold_session` cookie to a refresh token of the token service (a JWT for the
audience `<service>#refresh`, valid `auth.refresh_token_ttl_seconds`; never usable as an
access token). The cookie is HttpOnly (scripts cannot read it), SameSite=Strict (no other
site's page sends it) and Secure when the gateway serves HTTPS. Every request re-checks it
(signature, expiry, and that the user is still enabled), so disabling a user ends their UI
sessions too. Logging out clears it.

State-changing requests (delete, logout) are POSTs that must carry the `csrf` form field
equal to the `cargohold_csrf` cookie (a random value set on the first page view: the
double-submit pattern; another site can neither read nor set it) and, when the browser
sends one, an `Origin` naming this gateway.

Rights are those of `/v2/`, from the same policy (`AuthState.policy`): pull to see a
repository, delete to delete in it, cluster admin for the cluster and activity pages. With
`auth.mode = "none"` everyone may do everything `/v2/` allows.

Login in htpasswd mode (no token service to issue the session): the same form and checks
(`AuthState.login` against the htpasswd file); the cookie is `user.expires.mac`, the user
name base64url-encoded, `expires` unix seconds (`auth.refresh_token_ttl_seconds` ahead) and
`mac` an HMAC-SHA256 of both under a key derived from the gateway role's key (the key of
`cluster.credential`, or the one derived from `cluster.secret`: the same key, which every
gateway holds, cargohold/cluster_auth.py), so every gateway of the cluster accepts it and
nobody without a gateway's credential or the cluster secret can make one. Every request
re-checks the MAC, the expiry and that the user is still in the file (removing a user ends
their UI sessions at the file's next reload).
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from cargohold.cluster_auth import client_credential
from cargohold.errors import Denied
from gateway.auth.scopes import repository
from gateway.auth.state import AUTH, AuthState
from gateway.auth.tokens import TokenInvalid
from gateway.context import context

SESSION_COOKIE = "cargohold_session"
CSRF_COOKIE = "cargohold_csrf"


@dataclass(frozen=True)
class Viewer:
    user: str | None  # None: anonymous
    open_mode: bool  # auth.mode == "none": no checks at all
    cluster_admin: bool
    can_login: bool  # the token service exists: a login form is offered
    csrf: str

    @property
    def name(self) -> str:
        return self.user or "anonymous"


def _auth(request: web.Request) -> AuthState | None:
    return request.app.get(AUTH)


async def viewer(request: web.Request) -> Viewer:
    """The viewer of this request (a stale or forged session cookie is anonymous)."""
    auth = _auth(request)
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    if auth is None or auth.mode == "none":
        return Viewer(None, True, True, False, csrf)
    signer = _htpasswd_sessions(request, auth)
    can_login = (auth.issuer is not None and auth.verifier is not None) or signer is not None
    user: str | None = None
    raw = request.cookies.get(SESSION_COOKIE)
    name = ""
    if raw and auth.verifier is not None:
        try:
            name = auth.verifier.verify_refresh(raw)
        except TokenInvalid:
            name = ""
    elif raw and signer is not None:
        name = signer.verify(raw, time.time()) or ""
    if name and await auth.still_valid(name) and await auth.user_exists(name):
        user = name
    admin = bool(user) and await auth.is_cluster_admin(user or "")
    return Viewer(user, False, admin, can_login, csrf)


async def allowed(request: web.Request, who: Viewer, repo: str, action: str) -> bool:
    """May `who` take `action` (pull, delete) on `repo`, by the /v2/ policy?"""
    if who.open_mode:
        return True
    auth = _auth(request)
    assert auth is not None
    return action in await auth.policy.granted(who.user, repository(repo, frozenset({action})))


def ensure_csrf_cookie(request: web.Request, response: web.StreamResponse, who: Viewer) -> str:
    """The viewer's CSRF value, setting the cookie on first sight."""
    if who.csrf:
        return who.csrf
    value = secrets.token_urlsafe(24)
    response.set_cookie(
        CSRF_COOKIE, value, httponly=True, samesite="Strict", secure=request.secure, path="/ui"
    )
    return value


def check_csrf(request: web.Request, form_value: str) -> None:
    """Refuse a state-changing request that did not come from this UI (403)."""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    if not cookie or not hmac.compare_digest(cookie, form_value or ""):
        raise Denied("the form is stale or came from another site: reload the page")
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        expected = f"{request.scheme}://{request.host}"
        if origin != expected:
            raise Denied("cross-origin request refused")


class HtpasswdSessions:
    """Sign and check htpasswd-mode session cookies (module docstring)."""

    def __init__(self, gateway_key: bytes) -> None:
        self._key = hmac.new(gateway_key, b"cargohold ui session v1", "sha256").digest()

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), "sha256").hexdigest()

    def sign(self, user: str, expires: float) -> str:
        name = base64.urlsafe_b64encode(user.encode()).decode().rstrip("=")
        payload = f"{name}.{int(expires)}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, raw: str, now: float) -> str | None:
        """The user of a valid, unexpired cookie; None otherwise."""
        parts = raw.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._mac(payload), parts[2]) or int(parts[1]) <= now:
            return None
        try:
            return base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None


def _htpasswd_sessions(request: web.Request, auth: AuthState) -> HtpasswdSessions | None:
    """The signer of htpasswd-mode sessions (None in other modes, or without a gateway key:
    mTLS alone)."""
    if auth.mode != "htpasswd" or auth.passwords is None:
        return None
    credential = client_credential(context(request).cfg, "gateway")
    if credential is None or credential.role != "gateway":
        return None
    return HtpasswdSessions(credential.key)


def new_session(request: web.Request, user: str) -> tuple[str, int] | None:
    """(cookie value, seconds) of a session for `user`, who just logged in; None when this
    gateway cannot issue one."""
    auth = _auth(request)
    if auth is None:
        return None
    ttl = auth.cfg.refresh_token_ttl_seconds
    if auth.issuer is not None:
        return auth.issuer.refresh_token(user), ttl
    signer = _htpasswd_sessions(request, auth)
    if signer is not None:
        return signer.sign(user, time.time() + ttl), ttl
    return None


def set_session(request: web.Request, response: web.StreamResponse, token: str, ttl: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=ttl,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/ui",
    )


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/ui")
