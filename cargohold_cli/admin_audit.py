"""`cargohold admin audit`: query, export and verify the activity log.

Reads the chain head and the sealed segments' list from the replicated state
(`audit_head`), the segments' bytes from the nodes (`Chunks.Get` as the `admin` role; a
node answering DATA_LOSS or NOT_FOUND is skipped for the next one) and the in-memory
records in pages (`audit_tail`). Filters are applied here; a segment whose newest record is
older than `--since` is not read. `verify` re-hashes everything retained, base to head
(cargohold/audit.py `verify`). `export --anchor FILE` also writes the chain's head (seq,
hash) to FILE, to be kept outside the cluster; `verify --anchor FILE` then also checks the
chain still passes through it. Synchronous on purpose: a CLI path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc

from cargohold.audit import Report, SegmentInfo, decode, matches, segment_lines, verify
from cargohold.config import Config
from cargohold.errors import NotFound, Unavailable
from cargohold.grpc_channels import open_sync_channel
from cargohold.metadata_api import AuditHeadInfo, Members, Metadata
from cargohold_cli.admin_access import AdminTransport
from protos import registry_pb2, registry_pb2_grpc


class AuditReader:
    """The activity log of a running cluster, read through its nodes."""

    def __init__(self, addresses: list[str], cfg: Config) -> None:
        self.cfg = cfg
        self.meta = Metadata(AdminTransport(addresses, cfg))
        self.addresses = addresses
        self._chunk_nodes: list[str] | None = None

    def head(self) -> AuditHeadInfo:
        return asyncio.run(self.meta.audit_head())

    def _nodes(self) -> list[str]:
        """Every member's gRPC address (chunks may be on any), the given ones first."""
        if self._chunk_nodes is None:
            members = asyncio.run(self.meta.call(Members()))
            found = [m.grpc for m in members if m.state != "removed"]
            self._chunk_nodes = list(dict.fromkeys([*self.addresses, *found]))
        return self._chunk_nodes

    def _chunk(self, chunk_hex: str) -> bytes:
        request = registry_pb2.GetChunkRequest(id=bytes.fromhex(chunk_hex))
        for address in self._nodes():
            with open_sync_channel(address, self.cfg, "admin") as channel:
                try:
                    reply = registry_pb2_grpc.ChunksStub(channel).Get(request, timeout=30.0)
                except grpc.RpcError:
                    continue  # missing, damaged (DATA_LOSS) or down here: the next node
                return bytes(reply.data)
        raise NotFound(f"no node holds chunk {chunk_hex[:16]}")

    def read_segment(self, seg: SegmentInfo) -> bytes:
        return b"".join(self._chunk(c[0]) for c in seg.recipe["chunks"])

    def tail(self, after: int) -> Iterator[bytes]:
        while True:
            page = asyncio.run(self.meta.audit_tail(after))
            for line in page.lines:
                yield line.encode()
            if not page.lines or not page.more:
                return
            after = json.loads(page.lines[-1])[0]

    def records(self, head: AuditHeadInfo, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Every retained record, oldest first (segments before `since` skipped)."""
        for seg in head.segments:
            if since is not None and seg.last_time < since:
                continue
            for line in segment_lines(self.read_segment(seg)):
                yield decode(line)
        for line in self.tail(head.tail_first - 1):
            yield decode(line)

    def verify(self, anchor: tuple[int, str] | None = None) -> Report:
        head = self.head()
        tail = list(self.tail(head.tail_first - 1))
        return verify(
            head.base_seq,
            head.base_hash,
            head.segments,
            self.read_segment,
            tail,
            head.head_seq,
            head.head_hash,
            anchor,
        )


def parse_time(text: str | None) -> float | None:
    """`--since`/`--until`: seconds since the epoch or an ISO 8601 time (UTC if naive)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def query(
    addresses: list[str],
    cfg: Config,
    *,
    repo: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:
    reader = AuditReader(addresses, cfg)
    head = reader.head()
    for record in reader.records(head, since):
        if matches(record, repo=repo, actor=actor, action=action, since=since, until=until):
            yield record


def format_record(r: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(r["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = r["actor"] or "-"
    if r["actor_kind"] not in ("user", ""):
        who = f"{who}({r['actor_kind']})" if r["actor"] else r["actor_kind"]
    target = r["repository"] + (f":{r['reference']}" if r["reference"] else "")
    parts = [f"{r['seq']:>8}", when, f"{r['action']:<7}", f"{r['result']:<8}", who]
    parts += [target or "-", r["client"] or "-"]
    if r["detail"]:
        parts.append(r["detail"])
    return "  ".join(parts)


def write_anchor(addresses: list[str], cfg: Config, path: str) -> dict[str, Any]:
    """Write the chain's current head to `path` (JSON) for keeping outside the cluster;
    `verify --anchor` later proves the log up to it was not rewritten."""
    head = AuditReader(addresses, cfg).head()
    anchor = {
        "seq": head.head_seq,
        "hash": head.head_hash,
        "taken_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(anchor) + "\n")
    return anchor


def read_anchor(path: str) -> tuple[int, str]:
    with open(path, encoding="utf-8") as src:
        raw = json.load(src)
    return int(raw["seq"]), str(raw["hash"])


def verify_cluster(
    addresses: list[str], cfg: Config, anchor: tuple[int, str] | None = None
) -> Report:
    try:
        return AuditReader(addresses, cfg).verify(anchor)
    except grpc.RpcError as exc:  # pragma: no cover - AdminTransport maps these
        raise Unavailable(str(exc)) from None
