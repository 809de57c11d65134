"""The web UI at `/ui/` (docs/ui.md), served by every gateway when `gateway.ui_enabled`.

Server-rendered Jinja2 pages (`pages.py`: repositories, a repository, an image, deletes;
`account.py`: login and logout; `admin_pages.py`: the cluster and the activity log for
cluster admins), one small stylesheet and script under `/ui/static/`: nothing is loaded
from anywhere else, so it works offline. `session.py` says who is looking and what they
may do; `render.py` renders. Routes are wired here only.
"""

from __future__ import annotations

from aiohttp import web

from gateway.ui import account, admin_pages, pages
from gateway.ui.render import STATIC


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/ui", _root)
    router.add_get("/ui/", pages.repositories)
    router.add_get("/ui/repository", pages.repository)
    router.add_get("/ui/image", pages.image)
    router.add_get("/ui/blob", pages.blob)
    router.add_get("/ui/delete", pages.confirm_delete)
    router.add_post("/ui/delete", pages.delete)
    router.add_get("/ui/login", account.login_form)
    router.add_post("/ui/login", account.login)
    router.add_post("/ui/logout", account.logout)
    router.add_get("/ui/cluster", admin_pages.cluster)
    router.add_get("/ui/activity", admin_pages.activity)
    router.add_static("/ui/static", STATIC, append_version=False)
