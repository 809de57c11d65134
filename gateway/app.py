"""The aiohttp application: every `/v2/` route of the OCI Distribution API, wired here only.

Repository names contain `/`, so routes use `{name:.+}` and end in a fixed suffix whose
last segment has no `/` (`/manifests/<ref>`, `/blobs/<digest>`, `/blobs/uploads/`,
`/blobs/uploads/<id>`, `/tags/list`, `/referrers/<digest>`). The greedy `.+` makes the
right-most suffix win: `/v2/a/blobs/b/manifests/latest` is a manifest of `a/blobs/b`.
Handlers validate their own inputs; this module validates nothing.

Every `/v2/` request passes `gateway.auth.middleware` first (`[auth]` mode); with the
built-in token service, `/auth/token` (gateway/auth/token_service.py).

Next to `/v2/`: `/healthz` and `/readyz` (gateway/health.py), and `/metrics`
(gateway/metrics.py) unless `gateway.metrics_address` names a listener of its own
(`build_metrics_app`, started by gateway/server.py).

Never compressed: aiohttp only compresses when a handler asks for it, and none does.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import base, blobs, catalog, health, manifests, metrics, referrers, tags, uploads
from gateway.access_log import add_request_id_header, request_id_middleware
from gateway.auth import token_service
from gateway.auth.middleware import auth_middleware
from gateway.auth.state import AUTH, AuthState
from gateway.body import BUDGET, BodyBudget
from gateway.coalesce import Coalescer
from gateway.context import CONTEXT, GatewayContext
from gateway.errors import add_api_version_header, error_middleware
from gateway.manifest_cache import ManifestCache, RecordCache

_NAME = "/v2/{name:.+}"


def build_app(ctx: GatewayContext, client_max_size: int | None = None) -> web.Application:
    """The gateway's application; `client_max_size` bounds buffered request bodies."""
    max_size = client_max_size or ctx.cfg.gateway.max_manifest_size + 64 * 1024
    app = web.Application(
        middlewares=[
            metrics.metrics_middleware,
            request_id_middleware,
            error_middleware,
            auth_middleware,
        ],
        client_max_size=max_size,
    )
    app[CONTEXT] = ctx
    app[AUTH] = AuthState(ctx.cfg.auth, ctx.meta)
    app[BUDGET] = BodyBudget(ctx.cfg.gateway.max_buffered_bytes)
    metrics.watch_budget(app[BUDGET])
    readiness = health.Readiness(ctx.cfg, ctx.meta)
    app[health.READINESS] = readiness

    async def close_readiness(_app: web.Application) -> None:
        await readiness.close()

    app.on_cleanup.append(close_readiness)
    app[manifests.MANIFEST_CACHE] = ManifestCache(ctx.cfg.gateway.manifest_cache_bytes)
    app[manifests.READS] = Coalescer()
    app[manifests.RECORDS] = RecordCache(
        ctx.cfg.gateway.manifest_digest_ttl_seconds, ctx.cfg.gateway.manifest_digest_cache_entries
    )
    app.on_response_prepare.append(add_api_version_header)
    app.on_response_prepare.append(add_request_id_header)
    _routes(app.router)
    if app[AUTH].issuer is not None:
        app.router.add_get("/auth/token", token_service.token_get)
        app.router.add_post("/auth/token", token_service.token_post)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    if not ctx.cfg.gateway.metrics_address:
        app.router.add_get("/metrics", metrics.metrics_handler)
    return app


def build_metrics_app(readiness: health.Readiness) -> web.Application:
    """The separate listener of `gateway.metrics_address`: `/metrics`, `/healthz`, `/readyz`
    (sharing the main application's readiness check, which that application closes)."""
    app = web.Application()
    app[health.READINESS] = readiness
    app.router.add_get("/metrics", metrics.metrics_handler)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    return app


def _routes(router: web.UrlDispatcher) -> None:
    def resource(path: str, **methods: Handler) -> None:
        res = router.add_resource(path)
        for method, handler in methods.items():
            if method == "GET":
                res.add_route("GET", handler)
                res.add_route("HEAD", handler)
            else:
                res.add_route(method, handler)

    resource("/v2/", GET=base.api_version_check)
    resource("/v2", GET=base.api_version_check)
    resource("/v2/_catalog", GET=catalog.catalog)
    resource(f"{_NAME}/tags/list", GET=tags.list_tags)
    resource(
        f"{_NAME}/manifests/{{reference}}",
        GET=manifests.get_manifest,
        PUT=manifests.put_manifest,
        DELETE=manifests.delete_manifest,
    )
    resource(f"{_NAME}/blobs/uploads/", POST=uploads.start_upload)
    resource(f"{_NAME}/blobs/uploads", POST=uploads.start_upload)
    resource(
        f"{_NAME}/blobs/uploads/{{upload}}",
        GET=uploads.get_upload_status,
        PATCH=uploads.patch_upload,
        PUT=uploads.put_upload,
        DELETE=uploads.cancel_upload,
    )
    resource(f"{_NAME}/blobs/{{digest}}", GET=blobs.get_blob, DELETE=blobs.delete_blob)
    resource(f"{_NAME}/referrers/{{digest}}", GET=referrers.list_referrers)
