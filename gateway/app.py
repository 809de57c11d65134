"""The aiohttp application: every `/v2/` route of the OCI Distribution API, wired here only.

Repository names contain `/`, so routes use `{name:.+}` and end in a fixed suffix whose
last segment has no `/` (`/manifests/<ref>`, `/blobs/<digest>`, `/blobs/uploads/`,
`/blobs/uploads/<id>`, `/tags/list`, `/referrers/<digest>`). The greedy `.+` makes the
right-most suffix win: `/v2/a/blobs/b/manifests/latest` is a manifest of `a/blobs/b`.
Handlers validate their own inputs; this module validates nothing.

Every `/v2/` request passes `gateway.auth.middleware` first (`[auth]` mode); with the
built-in token service, `/auth/token` (gateway/auth/token_service.py). Denied requests,
pulls and logins are recorded in the activity log (gateway/activity.py), which webhook
notifications are delivered from (gateway/webhooks.py, in the background). With
`[mirror]` proxies, pulls of proxy namespaces go through gateway/mirror/ (the
pull-through cache); `[replication]` rules run in the background (gateway/replication/).

The HTTP admin API answers under `/_cargohold/api/v1/` (gateway/admin_api/, its own
authentication). Next to `/v2/`: `/healthz` and `/readyz` (gateway/health.py), and `/metrics`
(gateway/metrics.py) unless `gateway.metrics_address` names a listener of its own
(`build_metrics_app`, started by gateway/server.py); the web UI under `/ui/` (gateway/ui/)
unless `gateway.ui_enabled` is off.

Never compressed: aiohttp only compresses when a handler asks for it, and none does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import (
    admin_api,
    base,
    blobs,
    catalog,
    health,
    manifests,
    metrics,
    referrers,
    tags,
    ui,
    uploads,
)
from gateway.access_log import add_request_id_header, request_id_middleware
from gateway.activity import ACTIVITY, ActivityRecorder, AuditSealer, activity_middleware
from gateway.auth import token_service
from gateway.auth.lease import AccessLease
from gateway.auth.middleware import auth_middleware
from gateway.auth.state import AUTH, AuthState
from gateway.body import BUDGET, BodyBudget
from gateway.client_address import TRUSTED_PROXIES, TrustedProxies
from gateway.cluster import ClusterClient
from gateway.coalesce import Coalescer
from gateway.context import CONTEXT, GatewayContext
from gateway.errors import add_api_version_header, error_middleware
from gateway.local_send import LOOPBACK_SENDS
from gateway.manifest_cache import ManifestCache, RecordCache
from gateway.mirror.proxy import MIRROR, Mirror
from gateway.pull_events import PULLS, PullRecorder, pull_recorder_ctx
from gateway.replication.runner import ReplicationRunner
from gateway.replication.sides import LocalRegistry
from gateway.scanner import SCANNER, Scanner, scanner_ctx
from gateway.search_backfill import InfoBackfill
from gateway.send_probe import LoopbackSends
from gateway.signatures.policy import POLICY, PullPolicy
from gateway.vulns.gate import VulnGate
from gateway.vulns.scans import SCANS, Rematcher, Scans
from gateway.webhooks import WebhookDeliverer

_NAME = "/v2/{name:.+}"


def _for_the_app_lifetime(
    app: web.Application, start: Callable[[], object], stop: Callable[[], Awaitable[object]]
) -> None:
    """`start()` when the app starts, `await stop()` at its cleanup (a background role)."""

    async def on_startup(_app: web.Application) -> None:
        start()

    async def on_cleanup(_app: web.Application) -> None:
        await stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


def access_lease(ctx: GatewayContext) -> AccessLease | None:
    """The lease on the leader's access and unlink revisions (gateway/auth/lease.py), over
    the cluster client's channels, trying the nodes in its probe order (the leader first
    when known). None over anything but a real cluster client (in-process test clusters
    have no leader to hold a lease from: their gateways use the revision reads)."""
    cluster = ctx.cluster
    if not isinstance(cluster, ClusterClient):
        return None

    def open_stream(address: str) -> object:
        return cluster.pool.node(address).metadata.WatchAccess()

    return AccessLease(
        cluster.view.probe_addresses, open_stream, ctx.cfg.auth.revocation_lease_renew_seconds
    )


def build_app(ctx: GatewayContext, client_max_size: int | None = None) -> web.Application:
    """The gateway's application; `client_max_size` bounds buffered request bodies."""
    max_size = client_max_size or ctx.cfg.gateway.max_manifest_size + 64 * 1024
    app = web.Application(
        middlewares=[
            metrics.metrics_middleware,
            request_id_middleware,
            error_middleware,
            activity_middleware,
            auth_middleware,
        ],
        client_max_size=max_size,
    )
    app[CONTEXT] = ctx
    app[TRUSTED_PROXIES] = TrustedProxies(ctx.cfg.gateway.trusted_proxies)
    offered = access_lease(ctx)
    app[AUTH] = AuthState(ctx.cfg.auth, ctx.meta, offered)
    # The record caches below trust entries under the same lease (its unlink revision).
    records_lease = offered if ctx.cfg.gateway.lease_record_caches else None
    lease = app[AUTH].lease or records_lease
    if lease is not None:
        _for_the_app_lifetime(app, lease.start, lease.stop)
    unlinks = records_lease.unlinks if records_lease is not None else None
    local = ctx.cluster.local_store if isinstance(ctx.cluster, ClusterClient) else None
    if local is not None:  # open from the start: its mark keeps the node's writes cached
        _for_the_app_lifetime(app, local.start, local.stop)
        if ctx.cfg.gateway.local_sendfile:
            sends = app[LOOPBACK_SENDS] = LoopbackSends(ctx.cfg.gateway.local_sendfile_loopback)
            _for_the_app_lifetime(app, sends.start, sends.stop)
    app[BUDGET] = BodyBudget(
        ctx.cfg.gateway.max_buffered_bytes, ctx.cfg.gateway.body_trim_after_bytes
    )
    metrics.watch_budget(app[BUDGET])
    readiness = health.Readiness(ctx.cfg, ctx.meta)
    app[health.READINESS] = readiness

    async def close_readiness(_app: web.Application) -> None:
        await readiness.close()

    app.on_cleanup.append(close_readiness)
    # The activity log (gateway/activity.py): batched events and the sealing task.
    activity = app[ACTIVITY] = ActivityRecorder(ctx.cfg.audit, ctx.meta)
    sealer = AuditSealer(ctx.cfg.audit, ctx.meta, lambda data: ctx.cluster.store_bytes(data))
    # (aiohttp runs cleanups in the order registered: the sealer closes first, as before.)
    _for_the_app_lifetime(app, sealer.start, sealer.close)
    _for_the_app_lifetime(app, activity.start, activity.close)
    # Webhook delivery (gateway/webhooks.py): a background lease loop, never on a request.
    deliverer = WebhookDeliverer(ctx.cfg, ctx.meta, lambda recipe: ctx.cluster.read_all(recipe))
    _for_the_app_lifetime(app, deliverer.start, deliverer.close)
    # Platforms and labels of manifests stored before search recorded them: one pass.
    backfill = InfoBackfill(ctx)
    _for_the_app_lifetime(app, backfill.start, backfill.stop)
    app[manifests.MANIFEST_CACHE] = ManifestCache(ctx.cfg.gateway.manifest_cache_bytes)
    app[manifests.READS] = Coalescer()
    app[manifests.RECORDS] = RecordCache(
        ctx.cfg.gateway.manifest_digest_ttl_seconds,
        ctx.cfg.gateway.manifest_digest_cache_entries,
        unlinks=unlinks,
        record="manifest",
    )
    app[blobs.BLOB_RECORDS] = RecordCache(
        ctx.cfg.gateway.blob_digest_ttl_seconds,
        ctx.cfg.gateway.blob_digest_cache_entries,
        unlinks=unlinks,
        record="blob",
    )
    # Vulnerability reports (gateway/vulns/): matched on demand and by a background pass.
    scans = app[SCANS] = Scans(
        ctx.cfg.policy,
        ctx.meta,
        lambda recipe: ctx.cluster.read_all(recipe),
        lambda data: ctx.cluster.store_bytes(data),
    )
    rematcher = Rematcher(scans, ctx.cfg.policy.rematch_interval_seconds)
    _for_the_app_lifetime(app, rematcher.start, rematcher.stop)
    app[POLICY] = PullPolicy(
        ctx.cfg.policy,
        ctx.meta,
        lambda recipe: ctx.cluster.read_all(recipe),
        VulnGate(scans),
    )
    life = ctx.cfg.lifecycle
    if life.pull_flush_seconds > 0:
        recorder = PullRecorder(
            ctx.meta, life.pull_flush_seconds, life.pull_batch_max, life.pull_queue_max
        )
        app[PULLS] = recorder
        app.cleanup_ctx.append(pull_recorder_ctx(recorder, ctx.cfg.gateway.shutdown_grace_seconds))
    if ctx.cfg.mirror.proxies:  # the pull-through cache (gateway/mirror/)
        mirror = app[MIRROR] = Mirror(
            ctx.cfg,
            ctx.cluster,
            ctx.meta,
            lambda repo, digest, recipe: uploads.commit_blob(ctx, repo, digest, recipe, None),
        )

        async def close_mirror(_app: web.Application) -> None:
            await mirror.close()

        app.on_cleanup.append(close_mirror)
    if ctx.cfg.replication.rules:  # replication rules (gateway/replication/)
        replicator = ReplicationRunner(
            ctx.cfg, ctx.meta, LocalRegistry(ctx), lambda recipe: ctx.cluster.read_all(recipe)
        )
        _for_the_app_lifetime(app, replicator.start, replicator.close)
    if ctx.cfg.scanner.enabled and ctx.cfg.scanner.concurrency > 0:  # gateway/scanner/
        scanner = app[SCANNER] = Scanner(ctx)
        app.cleanup_ctx.append(scanner_ctx(scanner))
    app.on_response_prepare.append(add_api_version_header)
    app.on_response_prepare.append(add_request_id_header)
    _routes(app.router)
    admin_api.add_routes(app.router)
    if ctx.cfg.gateway.ui_enabled:
        ui.add_routes(app.router)
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
