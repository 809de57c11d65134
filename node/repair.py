"""Repair: the background role that keeps R copies of every local chunk on its owners and
moves chunks this node no longer owns to the nodes that do (rebalancing).

Every `repair_interval` seconds (or at once on `trigger()`, the Admin `Trigger` RPC), one
pass walks the local chunk ids in key order, `repair_page_size` at a time. For each chunk:

    T_all  = replicas_for(id, active members, R)          where the chunk belongs
    T_live = replicas_for(id, active members that answer, R)   where it can go now

"Answer" is one `Admin.Status` probe per member (`peer_probe_timeout`) at the start of a
pass and again every `repair_view_refresh` seconds of a long one, with the member list.
A member whose probe says `disk_full` (or that answers a copy with `StorageFull`) stays a
holder and an owner but gets no copies this pass (`skipped_full`): its missing copies wait
for a pass after space returns, without a warning per chunk. The pass
asks every peer of T_live (and, when this node is not in T_all, every peer of T_all) which
chunks of the page it holds: one batched `Chunks.Has` per peer and page. Each node of
T_live that lacks a chunk gets it from the local copy (`Chunks.Put`, verified on arrival by
its sha256; paced by `repair_rate_bytes`, `repair_copies_in_flight` at once) - by one
node only: the first node of T_live that holds the chunk, or, when none does, every holder
outside T_live (a spill-over or draining node). Then, only
when this node is NOT in T_all (it is draining, or a join moved the chunk) and every node
of T_all has confirmed holding the chunk in this page, and T_all has R nodes (there are
enough active members for R copies), the local copy is deleted. Nothing else ever deletes
here: a dead or silent owner keeps the local copy alive.

Gateways write to the first R *reachable* active nodes in rank order and read in rank order
over all non-removed members, so a chunk written while an owner was down sits on a spill-over
node; that node's repair puts it on the owner once it answers again and then deletes its
own copy. Member views differ between nodes only while a change propagates; a pass that
sees the member list change under it stops before deleting anything and runs again.

Garbage: repair does not know which chunks are referenced. A chunk that GC has deleted on
some nodes but not yet here is copied back to its owners; GC's next pass deletes it again.
Repair's `Chunks.Has` probes are not client uses: GC counts a Has answering "present" as
a use of a chunk (see the GC contract in gateway/cluster/writes.py), so repair's probes
(node/peers.py) set `probe_only` and the peer records no use, or repair would keep every
garbage chunk young forever.

After its copies, a pass counts the local chunks that still have fewer than R copies on
the nodes that answered (this one included): `below_replicas` while it runs, and
`last_below_replicas` once it finishes (-1 before the first finished pass), which the
node exports as `cargohold_node_repair_chunks_below_replicas` (node/metrics.py). Every
holder counts the chunks it holds, so the cluster's figure is the largest node's, not the
sum; a pass resumed from its cursor counts only what it walked.

Progress is resumable: after each page the last id is written to `<data_dir>/repair.cursor`
(plain hex, replaced atomically; losing it only repeats work), and a node that restarts
mid-pass resumes there at once. `progress()` is the JSON the node reports in
`Admin.Status.extra["repair"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cargohold.config import Config
from cargohold.errors import ChunkCorrupt, ChunkMissing, RegistryError, StorageFull
from cargohold.log import log_event
from cargohold.metadata_api import LocalQueries, Members, local
from cargohold.periodic import raise_if_cancelling
from cargohold.placement import replicas_for
from node.chunkstore import ChunkStore
from node.pacing import PassRole, PassSchedule, PassStats, RateLimiter
from node.peers import PeerPool

logger = logging.getLogger("cargohold.node.repair")

CURSOR_FILE = "repair.cursor"


# Where the roles read the replicated member list (RaftMember.local_query).
MemberSource = LocalQueries


@dataclass(frozen=True)
class MemberView:
    """One pass's picture of the cluster: who is active, who answers, their addresses."""

    me: str
    grpc: dict[str, str]  # every non-removed member id -> gRPC address
    active: list[str]
    live_active: list[str]
    raw: tuple[tuple[str, str, str], ...]
    # Members above their disk watermark: no copies go there (grows when a copy is refused).
    full: set[str] = field(default_factory=set)

    @property
    def others(self) -> list[str]:
        return [i for i in self.grpc if i != self.me]


def read_members(source: MemberSource) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted((m.id, m.grpc, m.state or "active") for m in local(source, Members())))


@dataclass
class RepairStats(PassStats):
    # Counters of the pass running now (or the last one when none runs).
    scanned: int = 0
    under_replicated: int = 0
    under_replicated_bytes: int = 0
    repaired_chunks: int = 0
    repaired_bytes: int = 0
    moved_away_chunks: int = 0
    moved_away_bytes: int = 0
    copy_failures: int = 0
    skipped_full: int = 0
    # Local chunks left with fewer than R copies on answering nodes after this pass's
    # copies; the figure of the last finished pass (-1: none finished yet).
    below_replicas: int = 0
    last_below_replicas: int = -1
    # Since the process started.
    total_repaired_bytes: int = 0
    total_moved_away_bytes: int = 0
    last_copy_mb_s: float = 0.0
    skipped: str = ""

    def reset_pass(self) -> None:
        for name in (
            "scanned",
            "under_replicated",
            "under_replicated_bytes",
            "repaired_chunks",
            "repaired_bytes",
            "moved_away_chunks",
            "moved_away_bytes",
            "copy_failures",
            "skipped_full",
            "below_replicas",
        ):
            setattr(self, name, 0)
        self.skipped = ""


@dataclass
class _Plan:
    chunk_id: bytes
    size: int
    t_all: list[str]
    t_live: list[str]
    missing: list[str] = field(default_factory=list)


class _MembersChanged(Exception):
    """The member list changed during a pass: stop before deleting, run again."""


class RepairRole(PassRole[RepairStats]):
    def __init__(
        self,
        cfg: Config,
        store: ChunkStore,
        members: MemberSource,
        peers: PeerPool,
        on_corrupt: Callable[[bytes], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._members = members
        self._peers = peers
        self._on_corrupt = on_corrupt
        self._cursor_path = Path(cfg.node.data_dir) / CURSOR_FILE
        self._cursor_failed = False
        self._schedule = PassSchedule(cfg.node.repair_interval)
        self._rate = RateLimiter(cfg.node.repair_rate_bytes)
        self.stats = RepairStats()

    # -- control ---------------------------------------------------------------------------
    async def run(self) -> None:
        """The role's loop: one pass per interval or trigger, until cancelled."""
        resume = await asyncio.to_thread(self._load_cursor)
        while True:
            await self._schedule.next_pass(immediately=bool(resume))
            finished = True
            try:
                await self.run_pass(resume)
            except _MembersChanged:
                # Not finished: whoever waits for this pass waits for the re-run.
                log_event(logger, "repair.members_changed")
                finished = False
                self._schedule.request()
            except Exception as exc:  # a bad pass must not end the role
                raise_if_cancelling()  # ... but its cancellation, grpc's error or not, does
                log_event(logger, "repair.pass_failed", logging.ERROR, error=repr(exc))
            finally:
                self.stats.running = False
            if finished:
                await self._schedule.finish()
            resume = b""

    # -- one pass --------------------------------------------------------------------------
    async def _view(self) -> MemberView | None:
        raw = read_members(self._members)
        grpc = {i: addr for i, addr, state in raw if state != "removed"}
        me = self._cfg.node.id
        if me not in grpc:
            return None
        active = [i for i, _, state in raw if state == "active"]
        answering = await self._peers.probe(grpc[i] for i in grpc if i != me)
        live = {me} | {i for i in grpc if grpc[i] in answering}
        full = {i for i in grpc if grpc[i] in answering and answering[grpc[i]].disk_full}
        return MemberView(me, grpc, active, [i for i in active if i in live], raw, full)

    async def run_pass(self, start_after: bytes = b"") -> None:
        stats = self.stats
        stats.reset_pass()
        stats.begin_pass()
        view = await self._view()
        if view is None:
            stats.skipped = "not a member yet"
            stats.end_pass(completed=False)
            return
        page_size = max(1, self._cfg.node.repair_page_size)
        after = start_after
        copy_started = view_at = time.monotonic()
        while True:
            page = await self._store.list_ids(after, page_size)
            if page and time.monotonic() - view_at > self._cfg.node.repair_view_refresh:
                view, view_at = await self._view() or view, time.monotonic()
            if page:
                await self._repair_page(view, page)
                after = page[-1][0]
                await asyncio.to_thread(self._save_cursor, after)
            if len(page) < page_size:
                break
        await asyncio.to_thread(self._save_cursor, b"")
        elapsed = max(1e-6, time.monotonic() - copy_started)
        moved = stats.repaired_bytes
        stats.last_copy_mb_s = round(moved / elapsed / 1e6, 2) if moved else 0.0
        stats.end_pass()
        stats.last_below_replicas = stats.below_replicas
        log_event(
            logger,
            "repair.pass_done",
            scanned=stats.scanned,
            under_replicated=stats.under_replicated,
            below_replicas=stats.below_replicas,
            repaired_bytes=stats.repaired_bytes,
            moved_away_bytes=stats.moved_away_bytes,
            seconds=round(elapsed, 3),
        )

    async def _repair_page(self, view: MemberView, page: list[tuple[bytes, int]]) -> None:
        replicas = self._cfg.cluster.replicas
        me = view.me
        plans: list[_Plan] = []
        asks: dict[str, list[bytes]] = {}
        for chunk_id, size in page:
            plan = _Plan(
                chunk_id,
                size,
                replicas_for(chunk_id, view.active, replicas),
                replicas_for(chunk_id, view.live_active, replicas),
            )
            plans.append(plan)
            wanted = list(plan.t_live)
            if me not in plan.t_all:
                wanted += plan.t_all
            for node in dict.fromkeys(wanted):
                if node != me and node in view.live_active:
                    asks.setdefault(node, []).append(chunk_id)
        self.stats.scanned += len(page)
        present = await self._ask_has(view, asks)
        for plan in plans:
            plan.missing = [
                n
                for n in plan.t_live
                if n != me and n in present and plan.chunk_id not in present[n]
            ]
            if not plan.missing:
                continue
            self.stats.under_replicated += 1
            self.stats.under_replicated_bytes += plan.size
            holders = [n for n in plan.t_live if n == me or plan.chunk_id in present.get(n, ())]
            if holders and holders[0] != me:
                # A better-ranked live owner holds it and copies it in its own pass: one
                # copier per chunk, not one per holder.
                plan.missing = []
            elif view.full:
                self.stats.skipped_full += sum(1 for n in plan.missing if n in view.full)
                plan.missing = [n for n in plan.missing if n not in view.full]
        await self._copy(view, [p for p in plans if p.missing], present)
        # `present` now includes the copies just made.
        self.stats.below_replicas += sum(
            1
            for p in plans
            if 1 + sum(1 for n, ids in present.items() if n != me and p.chunk_id in ids) < replicas
        )
        if read_members(self._members) != view.raw:
            raise _MembersChanged
        # Too few active members for R copies (a drain in a small cluster): keep ours.
        doomed = [
            p
            for p in plans
            if me not in p.t_all
            and len(p.t_all) >= replicas
            and all(n in present and p.chunk_id in present[n] for n in p.t_all)
        ]
        if doomed:
            deleted = await self._store.delete([p.chunk_id for p in doomed])
            self.stats.moved_away_chunks += deleted
            moved = sum(p.size for p in doomed)
            self.stats.moved_away_bytes += moved
            self.stats.total_moved_away_bytes += moved

    async def _ask_has(
        self, view: MemberView, asks: dict[str, list[bytes]]
    ) -> dict[str, set[bytes]]:
        """{node: ids it holds} for the nodes that answered; a silent node is left out."""
        nodes = list(asks)
        answers = await asyncio.gather(
            *(self._peers.has(view.grpc[n], asks[n]) for n in nodes), return_exceptions=True
        )
        present: dict[str, set[bytes]] = {}
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, RegistryError):
                    raise answer
                log_event(
                    logger, "repair.has_failed", logging.WARNING, node=node, error=str(answer)
                )
                continue
            present[node] = {cid for cid, ok in zip(asks[node], answer, strict=True) if ok}
        return present

    async def _copy(
        self, view: MemberView, plans: list[_Plan], present: dict[str, set[bytes]]
    ) -> None:
        gate = asyncio.Semaphore(max(1, self._cfg.node.repair_copies_in_flight))

        async def one(plan: _Plan) -> None:
            async with gate:
                try:
                    data, checksum = await self._store.get_with_checksum(plan.chunk_id)
                except ChunkMissing:
                    return  # deleted meanwhile (garbage collection): nothing to protect
                except ChunkCorrupt:
                    if self._on_corrupt is not None:
                        self._on_corrupt(plan.chunk_id)
                    return
                for node in plan.missing:
                    if node in view.full:
                        self.stats.skipped_full += 1
                        continue
                    await self._rate.acquire(len(data))
                    try:
                        existed = await self._peers.put(
                            view.grpc[node], plan.chunk_id, data, checksum
                        )
                    except StorageFull as exc:
                        # Became full during the pass: leave it alone until the next one
                        # (copies already in flight to it may be refused too: one line).
                        self.stats.skipped_full += 1
                        if node not in view.full:
                            view.full.add(node)
                            log_event(
                                logger,
                                "repair.target_full",
                                logging.WARNING,
                                node=node,
                                error=str(exc),
                            )
                        continue
                    except RegistryError as exc:
                        self.stats.copy_failures += 1
                        log_event(
                            logger,
                            "repair.copy_failed",
                            logging.WARNING,
                            node=node,
                            chunk=plan.chunk_id.hex(),
                            error=str(exc),
                        )
                        continue
                    present[node].add(plan.chunk_id)
                    if existed:  # another node's repair (or a late gateway write) was first
                        continue
                    self.stats.repaired_chunks += 1
                    self.stats.repaired_bytes += len(data)
                    self.stats.total_repaired_bytes += len(data)

        await asyncio.gather(*(one(p) for p in plans))

    # -- cursor ----------------------------------------------------------------------------
    def _load_cursor(self) -> bytes:
        try:
            text = self._cursor_path.read_text().strip()
        except FileNotFoundError:
            return b""
        try:
            return bytes.fromhex(text)
        except ValueError:
            return b""

    def _save_cursor(self, after: bytes) -> None:
        if not after:
            with contextlib.suppress(FileNotFoundError):
                self._cursor_path.unlink()
            return
        tmp = self._cursor_path.with_suffix(".tmp")
        try:
            tmp.write_text(after.hex())
            os.replace(tmp, self._cursor_path)
        except OSError as exc:
            # A full disk must not stop repair (a full node's copies to others need no
            # local space); a cursor not saved only repeats work after a restart.
            if not self._cursor_failed:
                log_event(logger, "repair.cursor_not_saved", logging.WARNING, error=repr(exc))
            self._cursor_failed = True
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._cursor_failed = False
