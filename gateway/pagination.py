"""`?n=&last=` paging shared by the tag list and the catalog: parsing and the `Link` header.

Rules (distribution-spec "Listing Tags", edge 10 of docs/protocol.md):
- `n` absent: the gateway's `default_page_size`; `n` must be a non-negative integer no
  larger than `max_page_size`, else 400 `PAGINATION_NUMBER_INVALID`;
- `n = 0` answers an empty list and never a `Link`;
- `last` is exclusive; the node applies it in byte order;
- when the node says more entries follow, `Link: <path?n=N&last=L>; rel="next"` names the
  next page, with the same `n` (the default one when the client sent none) and the last
  entry of this page.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from cargohold.config import GatewayConfig
from cargohold.errors import PaginationInvalid


@dataclass(frozen=True)
class Page:
    n: int
    last: str | None


def parse_page(request: web.Request, cfg: GatewayConfig) -> Page:
    raw_n = request.query.get("n")
    if raw_n is None or raw_n == "":
        n = cfg.default_page_size
    else:
        # At most 18 digits: int() refuses 4300+ (a 500), and no page is that large.
        if not raw_n.isascii() or not raw_n.isdigit() or len(raw_n) > 18:
            raise PaginationInvalid(detail={"n": raw_n[:32]})
        n = int(raw_n)
        if n > cfg.max_page_size:
            raise PaginationInvalid(detail={"n": raw_n, "max": cfg.max_page_size})
    last = request.query.get("last") or None
    return Page(n=n, last=last)


def paged_response(
    path: str,
    page: Page,
    key: str,
    items: list[str],
    more: bool,
    extra: dict[str, object] | None = None,
) -> web.Response:
    """The JSON list response, with a `Link` to the next page when the list was cut."""
    body: dict[str, object] = dict(extra or {})
    body[key] = items
    headers = {}
    if more and items and page.n > 0:
        query = urlencode({"n": page.n, "last": items[-1]}, safe="/")
        headers["Link"] = f'<{path}?{query}>; rel="next"'
    return web.json_response(body, headers=headers)
