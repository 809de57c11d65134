"""The storage node process: wires the chunk store, the Raft member and one gRPC server.

`run_node(cfg)` owns the process lifetime:

0. takes the exclusive lock `<data_dir>/LOCK` (cargohold/datadir_lock.py) and checks that
   both listen ports are free, before opening anything: a second process on the same
   directory, or on a taken port, stops here with one line naming the holder;
1. creates `<data_dir>/` and opens the chunk store in `<data_dir>/chunks/` (LMDB) and the
   Raft member in `<data_dir>/raft/` (journal + snapshot); the chunk store refuses puts
   that would eat into the disk reserve kept for Raft (node/disk.py), and a watcher looks
   at free space every `disk_check_interval` so the node's `full` state and its log lines
   follow the disk even when no write asks;
2. serves `Chunks`, `Metadata` and `Admin` on `cfg.node.grpc_listen` (one grpc.aio server,
   message limits = `grpc_max_message`, HTTP/2 frames up to `grpc_max_frame_size`, TLS
   when `cluster.tls_cert`/`tls_key` are set, mTLS when `cluster.tls_ca` is set too),
   every call authenticated and checked against the role matrix (node/access.py): by
   the client certificate under mTLS, else by the per-call token; a node without
   `cluster.secret` refuses to start; with plaintext gRPC it also takes bulk chunk puts
   on `node.bulk_listen` (node/bulk_puts.py), advertised by `Chunks.BulkAddress`;
3. joins the member list (`member_join`, retried until a leader commits it);
4. runs leader housekeeping: every `housekeeping_interval` the leader expires upload
   sessions untouched for `upload_expire_after` (the catalogue's `expire_uploads`);
   and the background roles, each its own module: repair (node/repair.py), scrub
   (node/scrub.py, whose re-fetch also heals copies the Chunks `Get` finds corrupt) and
   garbage collection (node/gc.py); retention policies (node/retention.py); the search
   index is built in a thread of its own (node/metadata/search_build.py);
   membership changes arrive through Admin (node/membership.py);
5. serves Prometheus metrics, `/healthz` and `/readyz` on `node.metrics_address` when set
   (node/metrics.py, node/metrics_http.py: a thread of its own, off the gRPC loop);
6. on SIGTERM/SIGINT: stops the bulk port, gRPC with `shutdown_grace`, Raft, closes LMDB.

`main(cfg)` tunes malloc for chunk-sized buffers (cargohold/memtune.py) and runs it on
uvloop; `cargohold node --config F` calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop

from cargohold import metadata_api as api
from cargohold.cluster_auth import require_secret
from cargohold.config import Config
from cargohold.datadir_lock import DataDirLock
from cargohold.errors import (
    AddressInUse,
    CargoholdError,
    RegistryError,
    StartupError,
    Unavailable,
)
from cargohold.log import log_event
from cargohold.memtune import tune_malloc
from cargohold.periodic import cancel_all_and_wait
from cargohold.ports import ensure_bindable
from node import chunk_service
from node.access import BULK_ROLES, AccessInterceptor
from node.admin_service import AdminServicer
from node.bulk_puts import BulkPutServer, advertise_host
from node.chunkstore import LmdbChunkStore
from node.disk import DiskSpace
from node.dry_run import DryRunTrigger
from node.gc import GcRole
from node.initial_admin import ensure_initial_admin
from node.membership import Membership
from node.metadata.raft import RaftMember
from node.metadata.search_build import SearchIndexBuilder
from node.metadata.service import MetadataServicer
from node.metadata.snapshot_role import SnapshotRole
from node.metrics import PackCounts, node_metrics
from node.metrics_http import MetricsServer
from node.peers import PeerPool
from node.repair import RepairRole
from node.retention import RetentionRole
from node.scrub import ScrubRole
from protos import registry_pb2_grpc

logger = logging.getLogger("cargohold.node.server")

_JOIN_RETRY_MAX = 2.0


def _server_credentials(cfg: Config) -> grpc.ServerCredentials | None:
    c = cfg.cluster
    if not (c.tls_cert and c.tls_key):
        return None
    key, cert = Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes()
    ca = Path(c.tls_ca).read_bytes() if c.tls_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


async def join_cluster(raft: RaftMember, cfg: Config) -> None:
    """Record this node in the replicated member list; retry until a leader commits it."""
    meta = api.Metadata(raft)
    delay = 0.1
    while True:
        try:
            await meta.member_join(cfg.node.id, cfg.node.grpc_advertise, cfg.node.raft_advertise)
            log_event(logger, "node.joined", id=cfg.node.id)
            return
        except Unavailable:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _JOIN_RETRY_MAX)


async def housekeeping(raft: RaftMember, cfg: Config) -> None:
    """On the leader only: forget upload sessions older than `upload_expire_after`."""
    meta = api.Metadata(raft)
    while True:
        await asyncio.sleep(cfg.node.housekeeping_interval)
        if not raft.is_leader():
            continue
        try:
            expired = await meta.expire_uploads(time.time(), cfg.node.upload_expire_after)
            if expired:
                log_event(logger, "node.uploads_expired", count=expired)
        except RegistryError as exc:
            log_event(logger, "node.housekeeping_failed", logging.WARNING, error=str(exc))


async def watch_disk(space: DiskSpace, interval: float) -> None:
    """Look at free space regularly (in a thread: statvfs may block on a sick disk)."""
    while True:
        try:
            await asyncio.to_thread(space.usage)
        except OSError as exc:
            log_event(logger, "node.disk_check_failed", logging.WARNING, error=repr(exc))
        # Twice per interval: puts on the loop then rarely find the figures stale.
        await asyncio.sleep(max(0.25, interval / 2))


def claim_data_dir(cfg: Config) -> DataDirLock:
    """Lock the data directory, then check the listen ports, before anything is opened.

    DataDirInUse names the process holding the directory; AddressInUse the one on a port.
    """
    node = cfg.node
    lock = DataDirLock.acquire(
        node.data_dir, f"node {node.id}", grpc=node.grpc_listen, raft=node.raft_listen
    )
    try:
        ensure_bindable(node.grpc_listen, "gRPC")
        ensure_bindable(node.raft_listen, "Raft")
        if node.metrics_address:
            ensure_bindable(node.metrics_address, "metrics HTTP")
    except BaseException:
        lock.release()
        raise
    return lock


def _ready_check(raft: RaftMember) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """`/readyz` of the node: it knows a Raft leader and reaches a majority."""

    def ready() -> tuple[bool, dict[str, Any]]:
        try:
            st = raft.status()
        except (RegistryError, RuntimeError):
            return False, {"reason": "raft status unavailable"}
        detail = {"role": st.role, "leader_known": bool(st.leader), "has_quorum": st.has_quorum}
        return bool(st.leader) and st.has_quorum, detail

    return ready


async def run_node(cfg: Config) -> None:
    """Run one storage node until SIGTERM/SIGINT; the data directory stays locked for its
    whole life (cargohold/datadir_lock.py)."""
    require_secret(cfg, "node")
    # This process calls its peers as a node (cargohold/grpc_channels.py signs with it).
    cfg.role = "node"
    lock = await asyncio.to_thread(claim_data_dir, cfg)
    try:
        await _run_locked(cfg)
    finally:
        lock.release()


async def _run_locked(cfg: Config) -> None:
    node = cfg.node
    data_dir = Path(node.data_dir)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    space = DiskSpace(
        str(data_dir),
        node.disk_reserve_fraction,
        node.disk_reserve_max_bytes,
        headroom=cfg.cluster.chunk_size,
        check_interval=node.disk_check_interval,
        node_id=node.id,
    )
    store = LmdbChunkStore(
        str(data_dir / "chunks"),
        node.lmdb_map_size,
        node.commit_batch_max_items,
        node.commit_batch_max_bytes,
        space=space,
        drop_written_pages=node.drop_written_pages,
        read_recently_seconds=node.drop_written_pages_read_seconds,
    )
    raft: RaftMember | None = None
    search: SearchIndexBuilder | None = None
    server: grpc.aio.Server | None = None
    bulk: BulkPutServer | None = None
    tasks: list[asyncio.Task[None]] = []
    peers = PeerPool(cfg)
    scrub: ScrubRole | None = None
    metrics_server: MetricsServer | None = None
    exits = contextlib.ExitStack()
    try:
        # Created on this (the main) thread: pysyncobj's tick thread stops with its creator.
        # A member that cannot go on (an unreadable snapshot) must not serve or vote.
        def stop_soon() -> None:
            loop.call_soon_threadsafe(stop.set)

        raft = RaftMember(cfg, on_fatal=stop_soon)
        await raft.wait_bound()
        search = SearchIndexBuilder(
            raft.state, raft.state_lock, node.search_build_slice, node.search_build_pause
        )
        search.start()
        scrub = ScrubRole(cfg, store, raft, peers)
        repair = RepairRole(cfg, store, raft, peers, on_corrupt=scrub.refetcher.schedule)
        try:
            creds = _server_credentials(cfg)
        except OSError as exc:
            raise StartupError(f"cannot read the TLS files: {exc}") from None
        mtls = creds is not None and bool(cfg.cluster.tls_ca)
        gc = GcRole(cfg, store, raft)
        retention = RetentionRole(cfg, raft)
        server = grpc.aio.server(
            # Every call authenticated and checked against the role matrix (node/access.py).
            interceptors=[AccessInterceptor(cfg, mtls=mtls)],
            options=[
                ("grpc.max_send_message_length", node.grpc_max_message),
                ("grpc.max_receive_message_length", node.grpc_max_message),
                ("grpc.http2.max_frame_size", node.grpc_max_frame_size),
                # Not shared: a second process must fail to bind, not split the traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        packs = PackCounts()
        chunks = chunk_service.add_to_server(
            server, store, node, on_corrupt=scrub.refetcher.schedule, packs=packs
        )
        registry_pb2_grpc.add_MetadataServicer_to_server(
            MetadataServicer(raft, search, node.search_ready_wait, packs=packs), server
        )
        registry_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                cfg,
                raft,
                store,
                roles={
                    "repair": repair,
                    "scrub": scrub,
                    "gc": gc,
                    "gc-dry-run": DryRunTrigger(gc),
                    "snapshot": SnapshotRole(raft),
                    "retention": retention,
                    "retention-dry-run": DryRunTrigger(retention),
                },
                membership=Membership(cfg, raft, peers),
                space=space,
            ),
            server,
        )
        try:
            if creds is None:
                server.add_insecure_port(node.grpc_listen)
            else:
                server.add_secure_port(node.grpc_listen, creds)
        except RuntimeError:
            raise AddressInUse(f"cannot listen on {node.grpc_listen} (gRPC)") from None
        if node.bulk_listen and creds is None:
            # Plaintext gRPC only: with TLS, chunk bytes keep to the encrypted channel.
            bulk = BulkPutServer(
                cfg, chunks.put_value, BULK_ROLES, advertise_host(node.grpc_advertise)
            )
            try:
                chunks.bulk_address = await bulk.start()
            except OSError as exc:
                raise AddressInUse(
                    f"cannot listen on {node.bulk_listen} (bulk puts): {exc}"
                ) from None
        await server.start()
        if node.metrics_address:
            exits.enter_context(
                node_metrics(
                    node.id,
                    raft,
                    store,
                    space,
                    repair,
                    scrub,
                    gc,
                    retention,
                    packs,
                    bulk,
                )
            )
            metrics_server = MetricsServer(node.metrics_address, _ready_check(raft))
            metrics_server.start()
        log_event(
            logger,
            "node.started",
            id=node.id,
            grpc=node.grpc_listen,
            raft=node.raft_listen,
            metrics=node.metrics_address or "-",
        )
        tasks = [
            loop.create_task(join_cluster(raft, cfg)),
            loop.create_task(housekeeping(raft, cfg)),
            loop.create_task(ensure_initial_admin(raft, cfg)),
            loop.create_task(repair.run()),
            loop.create_task(scrub.run()),
            loop.create_task(gc.run()),
            loop.create_task(retention.run()),
            loop.create_task(watch_disk(space, node.disk_check_interval)),
        ]
        await stop.wait()
        log_event(logger, "node.stopping", id=node.id)
    finally:
        # Roles whose pass was in a call when cancelled may have swallowed it (grpc reports
        # it as an error): cancel_all_and_wait asks again until each has ended.
        await cancel_all_and_wait(tasks)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.stop)
        exits.close()
        if bulk is not None:
            await bulk.stop()
        if server is not None:
            await server.stop(node.shutdown_grace)
        if scrub is not None:
            await scrub.close()
        if search is not None:
            await asyncio.to_thread(search.stop)
        await peers.close()
        if raft is not None:
            await raft.close()
        store.close()
        log_event(logger, "node.stopped", id=node.id)
    if raft is not None and raft.fatal_error is not None:
        log_event(logger, "node.fatal", logging.CRITICAL, error=raft.fatal_error)
        raise CargoholdError(raft.fatal_error)


def main(cfg: Config) -> None:
    """Entry point of `cargohold node`: run the node on uvloop until a signal stops it."""
    tune_malloc(cfg.node.malloc_retain_bytes, cfg.node.malloc_arenas)
    uvloop.run(run_node(cfg))
