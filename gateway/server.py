"""The gateway process: `main(cfg)` runs one HTTP gateway until SIGTERM/SIGINT.

uvloop event loop; `ClusterClient.connect(cfg)` before listening (a gateway that cannot
reach the cluster fails at start, visibly); aiohttp `AppRunner` + `TCPSite` on
`cfg.gateway.listen`, TLS when `cfg.gateway.tls_cert` is set. On SIGTERM/SIGINT the site
stops accepting, in-flight requests get `gateway.shutdown_grace_seconds` to finish, then
the cluster client closes. The connection rules (timeouts, parser errors as OCI JSON,
per-client limits) are `gateway.connection`'s; the access log (`gateway.access_log`, on
by default) is `gateway.access_log`'s. With `gateway.metrics_address` set, `/metrics`
(and `/healthz`, `/readyz`) are served on that address by a second aiohttp site in the
same loop (gateway/app.py `build_metrics_app`). With `gateway.workers` > 1 this process
only supervises that many worker processes, each running `serve` on the shared listen
address with SO_REUSEPORT (gateway/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable

import uvloop
from aiohttp import web

from cargohold.cluster_auth import require_secret
from cargohold.config import Config, split_hostport
from cargohold.errors import AddressInUse, StartupError
from cargohold.log import log_event
from cargohold.memtune import tune_malloc
from cargohold.ports import ensure_bindable
from gateway.access_log import ACCESS_LOGGER, access_logger_class
from gateway.app import build_app, build_metrics_app
from gateway.client_address import TrustedProxies
from gateway.cluster import ClusterClient
from gateway.connection import GatewayRunner
from gateway.context import GatewayContext
from gateway.health import READINESS

logger = logging.getLogger("cargohold.gateway")


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.gateway.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cfg.gateway.tls_cert, cfg.gateway.tls_key or None)
    return context


def _access_logger(cfg: Config) -> logging.Logger | None:
    """The access logger when asked for; at info even if the process logs only warnings."""
    if not cfg.gateway.access_log:
        return None
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)
    return access


def make_runner(app: web.Application, cfg: Config) -> web.AppRunner:
    """The runner `serve` uses (tests use it too, to serve an app over a fake cluster)."""
    return GatewayRunner(
        app,
        cfg.gateway,
        handle_signals=False,
        access_log=_access_logger(cfg),
        access_log_class=access_logger_class(
            cfg.gateway.access_log_pull_sample, TrustedProxies(cfg.gateway.trusted_proxies)
        ),
        shutdown_timeout=cfg.gateway.shutdown_grace_seconds,
    )


async def serve(
    cfg: Config,
    stop: asyncio.Event,
    worker: int = 0,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set; everything started here is closed before returning.

    A taken listen address is an `AddressInUse` naming its holder, checked before the
    cluster is contacted; unreadable TLS files a `StartupError`. `worker` k > 0: worker k
    of a supervised gateway (gateway/workers.py): the listen address is shared with its
    siblings (SO_REUSEPORT; the supervisor checked it was free before starting them).
    `on_listening` is called once the listen address is bound.
    """
    if not worker:
        await asyncio.to_thread(ensure_bindable, cfg.gateway.listen, "HTTP")
    if cfg.gateway.metrics_address:
        await asyncio.to_thread(ensure_bindable, cfg.gateway.metrics_address, "metrics HTTP")
    try:
        ssl_context = _ssl_context(cfg)
    except OSError as exc:
        raise StartupError(f"cannot read the TLS files: {exc}") from None
    cluster = await ClusterClient.connect(cfg)
    try:
        app = build_app(GatewayContext(cfg=cfg, cluster=cluster))
        runner = make_runner(app, cfg)
        await runner.setup()
        metrics_runner: web.AppRunner | None = None
        try:
            if cfg.gateway.metrics_address:
                metrics_runner = await _start_metrics_site(build_metrics_app(app[READINESS]), cfg)
            host, port = split_hostport(cfg.gateway.listen)
            site = web.TCPSite(
                runner,
                host,
                port,
                ssl_context=ssl_context,
                reuse_address=True,
                reuse_port=True if worker else None,
            )
            try:
                await site.start()
            except OSError as exc:
                raise AddressInUse(
                    f"cannot listen on {cfg.gateway.listen} (HTTP): {exc.strerror}"
                ) from None
            log_event(
                logger,
                "gateway.listening",
                address=cfg.gateway.listen,
                tls=bool(cfg.gateway.tls_cert),
                metrics=cfg.gateway.metrics_address or cfg.gateway.listen,
                worker=worker,
            )
            if on_listening is not None:
                on_listening()
            await stop.wait()
            log_event(logger, "gateway.stopping")
        finally:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await runner.cleanup()
    finally:
        await cluster.close()


async def _start_metrics_site(app: web.Application, cfg: Config) -> web.AppRunner:
    """The `gateway.metrics_address` listener (plain HTTP, no access log)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    host, port = split_hostport(cfg.gateway.metrics_address)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AddressInUse(
            f"cannot listen on {cfg.gateway.metrics_address} (metrics HTTP): {exc.strerror}"
        ) from None
    return runner


async def _main(
    cfg: Config, worker: int = 0, on_listening: Callable[[], None] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(cfg, stop, worker, on_listening)


def run_gateway(
    cfg: Config, worker: int = 0, on_listening: Callable[[], None] | None = None
) -> None:
    """Serve in this process until SIGTERM or SIGINT; malloc is tuned for chunk-sized
    buffers first (cargohold/memtune.py)."""
    cfg.role = "gateway"
    tune_malloc(cfg.gateway.malloc_retain_bytes, cfg.gateway.malloc_arenas)
    uvloop.run(_main(cfg, worker, on_listening))


def main(cfg: Config) -> int:
    """Run the gateway until SIGTERM or SIGINT (called by `cargohold gateway`): in this
    process, or with `gateway.workers` > 1 as the supervisor of that many worker processes.
    Returns the exit status."""
    require_secret(cfg, "gateway")
    cfg.role = "gateway"
    if cfg.gateway.workers > 1:
        from gateway.workers import supervise

        return supervise(cfg, logging.getLevelName(logging.getLogger().level).lower())
    run_gateway(cfg)
    return 0
