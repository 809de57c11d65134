"""The scan queue of the metadata state: one record per image manifest to scan
(docs/supply-chain.md "Scan status").

One container, part of the replicated state (node/metadata/state.py owns the rest)::

    scans  {repo: {digest: ScanRecord(state, attempts, worker, lease_until, error, sbom,
                                      queued_at, updated_at)}}

    state        queued | scanning | done | failed
    attempts     claims so far (a claim whose scanner died counts)
    worker       the scanner holding (or that last held) the claim
    lease_until  scanning: the claim's end, after which another scanner may take it;
                 queued: not claimable before this (a retry's back-off)
    error        why it failed (failed), or the last transient error (queued again)
    sbom         the SBOM referrer's manifest digest (done)

`manifest_put` with `scan` queues a manifest it has not seen (a push of the same digest
again does not scan again); `manifest_delete` forgets its record. Scanners take work with
`scan_claim` (the oldest claimable records, a lease each) and report with `scan_finish`
(only the current holder's report counts, so a scanner whose lease ran out and was
replaced cannot overwrite the newer result). A record claimed `max_attempts` times
without a result fails with the reason, so a poison image cannot loop forever.

`pending` (the queued and scanning records) is derived and never snapshotted. Claim order
is a function of the records only (queued_at, repo, digest), so every node claims the same
ones. Nothing here reads a clock: `now` comes in the commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from cargohold import metadata_api as api
from cargohold.errors import ManifestUnknown

QUEUED, SCANNING, DONE, FAILED = api.SCAN_STATES


class ScanRecord(NamedTuple):
    state: str
    attempts: int
    worker: str
    lease_until: float
    error: str
    sbom: str
    queued_at: float
    updated_at: float


class ScanBook:
    """The scan records and the rules for queueing, claiming and finishing."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, ScanRecord]] = {}
        self.pending: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return sum(map(len, self.records.values()))

    def get(self, repo: str, digest: str) -> ScanRecord | None:
        return self.records.get(repo, {}).get(digest)

    def _set(self, repo: str, digest: str, record: ScanRecord) -> None:
        self.records.setdefault(repo, {})[digest] = record
        if record.state in (QUEUED, SCANNING):
            self.pending.add((repo, digest))
        else:
            self.pending.discard((repo, digest))

    # -- queueing -----------------------------------------------------------------------------
    def pushed(self, repo: str, digest: str, now: float) -> None:
        """A manifest_put asked for a scan: queue it unless it has a record already."""
        if self.get(repo, digest) is None:
            self._set(repo, digest, ScanRecord(QUEUED, 0, "", 0.0, "", "", now, now))

    def enqueue(self, req: api.ScanEnqueue, exists: bool) -> None:
        """Scan again (an operator's rescan); a scan in progress is left alone."""
        if not exists:
            raise ManifestUnknown(f"manifest {req.digest} unknown in {req.repo}")
        old = self.get(req.repo, req.digest)
        if old is not None and old.state in (QUEUED, SCANNING):
            return
        self._set(req.repo, req.digest, ScanRecord(QUEUED, 0, "", 0.0, "", "", req.now, req.now))

    def forget(self, repo: str, digest: str) -> None:
        entries = self.records.get(repo)
        if entries is None or entries.pop(digest, None) is None:
            return
        self.pending.discard((repo, digest))
        if not entries:
            del self.records[repo]

    # -- claiming and finishing ------------------------------------------------------------------
    def claim(
        self, req: api.ScanClaim, exists: Callable[[str, str], bool]
    ) -> list[api.ScanClaimed]:
        now = req.now
        ready = []
        for repo, digest in self.pending:
            record = self.records[repo][digest]
            if record.lease_until <= now:
                ready.append((record.queued_at, repo, digest))
        claimed: list[api.ScanClaimed] = []
        for _, repo, digest in sorted(ready):
            if len(claimed) >= req.limit:
                break
            record = self.records[repo][digest]
            if not exists(repo, digest):  # defensive: deletes forget their record
                self.forget(repo, digest)
                continue
            if record.attempts >= req.max_attempts:
                why = record.error or "the scanner stopped or timed out"
                error = f"gave up after {record.attempts} attempts: {why}"
                self._set(repo, digest, record._replace(state=FAILED, error=error, updated_at=now))
                continue
            attempts = record.attempts + 1
            self._set(
                repo,
                digest,
                record._replace(
                    state=SCANNING,
                    attempts=attempts,
                    worker=req.worker,
                    lease_until=now + req.lease_seconds,
                    updated_at=now,
                ),
            )
            claimed.append(api.ScanClaimed(repo, digest, attempts))
        return claimed

    def finish(self, req: api.ScanFinish) -> bool:
        """Record a scanner's result; False when it no longer holds the claim (ignored)."""
        record = self.get(req.repo, req.digest)
        if record is None:
            return False
        if record.state != SCANNING or record.worker != req.worker:
            # The same report applied twice (a retried command) is still accepted.
            return (
                record.worker == req.worker
                and record.state == req.state
                and record.updated_at == req.now
            )
        if req.state == QUEUED:  # a transient error: try again after `retry_after`
            new = record._replace(
                state=QUEUED, lease_until=req.now + req.retry_after, error=req.error
            )
        else:
            new = record._replace(state=req.state, lease_until=0.0, error=req.error)
        self._set(req.repo, req.digest, new._replace(sbom=req.sbom, updated_at=req.now))
        return True

    # -- listing -----------------------------------------------------------------------------------
    def list(self, req: api.ScanList) -> list[api.ScanInfo]:
        if req.repo is not None:
            repos = [req.repo] if req.repo in self.records else []
        else:
            repos = sorted(self.records)
        after = tuple(req.after) if req.after else None
        out: list[api.ScanInfo] = []
        for repo in repos:
            if after is not None and repo < after[0]:
                continue
            entries = self.records[repo]
            digests = [req.digest] if req.digest is not None else sorted(entries)
            for digest in digests:
                record = entries.get(digest)
                if record is None or (after is not None and (repo, digest) <= after):
                    continue
                if req.state is not None and record.state != req.state:
                    continue
                out.append(api.ScanInfo(repo, digest, *record))
                if len(out) >= req.limit:
                    return out
        return out

    # -- snapshots ---------------------------------------------------------------------------------
    def copy(self) -> dict[str, dict[str, ScanRecord]]:
        return {repo: entries.copy() for repo, entries in self.records.items()}

    def load_row(self, row: tuple[Any, ...]) -> None:
        repo, digest, *fields = row
        self._set(repo, digest, ScanRecord._make(fields))


def rows(section: dict[str, dict[str, ScanRecord]]) -> Iterator[tuple[Any, ...]]:
    """Snapshot rows of a `ScanBook.copy()`: (repo, digest, *record)."""
    for repo, entries in section.items():
        for digest, record in entries.items():
            yield (repo, digest, *record)
