"""Login and logout pages of the web UI (gateway/ui/session.py says how sessions work)."""

from __future__ import annotations

from aiohttp import web

from cargohold.errors import Unsupported
from gateway.auth.state import AUTH
from gateway.ui.pages import page
from gateway.ui.render import SECURITY_HEADERS, render
from gateway.ui.session import Viewer, check_csrf, clear_session, new_session, set_session


def _next(raw: str) -> str:
    """Where to go after logging in: only a page of this UI (never another site)."""
    return raw if raw.startswith("/ui/") and not raw.startswith("/ui//") else "/ui/"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})


@page
async def login_form(request: web.Request, who: Viewer) -> web.StreamResponse:
    return render(
        request,
        who,
        "login.html",
        title="Log in",
        error="",
        next=_next(request.query.get("next", "")),
    )


@page
async def login(request: web.Request, who: Viewer) -> web.StreamResponse:
    form = await request.post()
    check_csrf(request, str(form.get("csrf", "")))
    auth = request.app[AUTH]
    if not who.can_login:
        raise Unsupported("this registry has no login (auth.mode none, or no password source)")
    user, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _next(str(form.get("next", "")))
    if not await auth.login(request, user, password):
        return render(
            request,
            who,
            "login.html",
            status=401,
            title="Log in",
            error="Wrong user name or password.",
            next=target,
        )
    session = new_session(request, user)
    if session is None:
        raise Unsupported("this registry has no login (auth.mode none, or no password source)")
    response = _see_other(target)
    set_session(request, response, *session)
    return response


@page
async def logout(request: web.Request, who: Viewer) -> web.StreamResponse:
    form = await request.post()
    check_csrf(request, str(form.get("csrf", "")))
    response = _see_other("/ui/")
    clear_session(response)
    return response
