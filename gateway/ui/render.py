"""Rendering the web UI's templates (gateway/ui/templates/) with Jinja2.

One environment per process, autoescaping every template (names, labels and annotations
are whatever pushers wrote). Every page answer carries headers that keep it to itself: a
Content-Security-Policy allowing only this gateway's own scripts and styles (the UI loads
nothing from elsewhere and works offline), no framing, no MIME sniffing, no caching.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.ui.session import Viewer, ensure_csrf_cookie

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def human_bytes(value: Any) -> str:
    if value is None:
        return "-"
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(value)


def when(value: Any) -> str:
    """A unix time as UTC (`2026-12-03 22:10:05`), '-' when unknown."""
    if not value:
        return "-"
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S")


def short_digest(value: Any) -> str:
    text = str(value or "")
    algorithm, _, hexpart = text.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else text


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    autoescape=True,
    # Manifests and configs are whatever was pushed: a missing field renders as nothing.
    undefined=jinja2.ChainableUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(bytes=human_bytes, when=when, short=short_digest)


def render_text(template: str, **values: Any) -> str:
    """A template rendered to text (tests render them without a server)."""
    return _ENV.get_template(template).render(**values)


def render(
    request: web.Request, who: Viewer, template: str, status: int = 200, **values: Any
) -> web.Response:
    response = web.Response(status=status, content_type="text/html", charset="utf-8")
    csrf = ensure_csrf_cookie(request, response, who)
    response.text = render_text(template, viewer=who, csrf=csrf, now=time.time(), **values)
    response.headers.update(SECURITY_HEADERS)
    return response
