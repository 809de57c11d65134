"""Webhooks' part of the replicated state (docs/webhooks.md; cargohold/webhooks.py has the
endpoint and the envelope, gateway/webhooks.py the delivery).

    endpoints  {name: endpoint JSON}   endpoints added with `webhook_put` (admin CLI)
    cursors    {name: seq}             the last activity-log seq each endpoint is done with
                                       (delivered with a 2xx, filtered out, or dead-lettered)
    dead       {name: [DeadLetter]}    events given up on (by seq), oldest first, bounded
    retry      {name: [seq]}           dead letters an operator asked to send again
    lease      (holder, expires)       which gateway delivers, until when

The book also holds the state of the other consumer of the activity log, replication
rules (gateway/replication/, docs/mirroring.md "Replication"), kept apart by name:

    rule_leases   {rule: (holder, expires)}  which gateway runs a rule, until when
    rule_cursors  {rule: seq}                the last push record a rule is done with
    rule_status   {rule: status JSON}        what its runner last reported (progress, errors)
    rule_runs     {rule: n}                  runs asked for by `cargohold admin replication run`
    rule_dead     {rule: [DeadLetter]}       push events a rule gave up on, oldest first, bounded
    rule_retry    {rule: [seq]}              of those, the ones `admin replication retry` asked for

and the leases of the cluster's other once-at-a-time gateway jobs, by job name, the same
kind of lease without a cursor (today search's backfill: gateway/search_backfill.py):

    job_leases    {job: (holder, expires)}   which gateway runs a job, until when

A rule's cursor, status and dead letters move only through `rule_report`, fenced like
`advance` (its rule's lease holder, and the cursor it read).

A cursor only moves through `advance`, which is fenced: it names the lease holder and the
cursor it read (`after`); a stale deliverer (lease lost, or another one advanced since) is
refused with `Conflict` and advances nothing, so a cursor never goes back and an event is
never skipped. A new replicated endpoint starts at the log's head (no replay of history);
an endpoint from a gateway's config gets its cursor from its first `advance` (after=None).
Deterministic like the rest of the state: every time comes from a command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from cargohold.errors import Conflict, NotFound, RequestInvalid
from cargohold.replication import RULE_STATUS_MAX

# Longest reason kept with a dead letter.
REASON_MAX = 200
# A rule's most recent dead letters listed with it (`replication_list`, read by its runner
# at every poll: the count covers the rest).
RULE_DEAD_LISTED = 20


class DeadLetter(NamedTuple):
    seq: int
    time: float  # when it was given up on
    attempts: int
    reason: str


class WebhookBook:
    """The webhooks' state; see the module docstring."""

    def __init__(self) -> None:
        self.endpoints: dict[str, str] = {}
        self.cursors: dict[str, int] = {}
        self.dead: dict[str, list[DeadLetter]] = {}
        self.retry: dict[str, list[int]] = {}
        self.lease: tuple[str, float] | None = None
        self.rule_leases: dict[str, tuple[str, float]] = {}
        self.rule_cursors: dict[str, int] = {}
        self.rule_status: dict[str, str] = {}
        self.rule_runs: dict[str, int] = {}
        self.job_leases: dict[str, tuple[str, float]] = {}
        self.rule_dead: dict[str, list[DeadLetter]] = {}
        self.rule_retry: dict[str, list[int]] = {}

    def __bool__(self) -> bool:
        return bool(
            self.endpoints
            or self.cursors
            or self.dead
            or self.retry
            or self.lease
            or self.rule_leases
            or self.rule_cursors
            or self.rule_status
            or self.rule_runs
            or self.job_leases
            or self.rule_dead
            or self.rule_retry
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WebhookBook) and list(self.rows()) == list(other.rows())

    __hash__ = None  # type: ignore[assignment]

    # -- commands -------------------------------------------------------------------------
    def put(self, endpoint: dict[str, Any], head_seq: int) -> bool:
        """Add or replace an endpoint; True when new (its cursor starts at `head_seq`)."""
        name = endpoint["name"]
        new = name not in self.endpoints
        self.endpoints[name] = json.dumps(endpoint, sort_keys=True, separators=(",", ":"))
        self.cursors.setdefault(name, head_seq)
        return new

    def remove(self, name: str) -> bool:
        """Forget an endpoint and its cursor, dead letters and retries."""
        found = [
            self.endpoints.pop(name, None),
            self.cursors.pop(name, None),
            self.dead.pop(name, None),
            self.retry.pop(name, None),
        ]
        return any(x is not None for x in found)

    def take_lease(
        self, holder: str, now: float, ttl: float, rule: str | None = None
    ) -> tuple[str, float]:
        """Grant (or renew) the lease (the delivery lease, or `rule`'s) to `holder` when
        free, expired or already its own; answers the lease as it stands after the command."""
        if not holder:
            raise RequestInvalid("a lease needs a holder")
        current = self.lease if rule is None else self.rule_leases.get(rule)
        if current is None or current[0] == holder or current[1] <= now:
            current = (holder, now + ttl)
            if rule is None:
                self.lease = current
            else:
                self.rule_leases[rule] = current
        return current

    def release(self, holder: str, rule: str | None = None) -> None:
        if rule is None:
            if self.lease is not None and self.lease[0] == holder:
                self.lease = None
        elif self.rule_leases.get(rule, ("", 0.0))[0] == holder:
            del self.rule_leases[rule]

    def take_job_lease(self, job: str, holder: str, now: float, ttl: float) -> tuple[str, float]:
        """`take_lease` for the lease of gateway job `job`."""
        if not holder:
            raise RequestInvalid("a lease needs a holder")
        current = self.job_leases.get(job)
        if current is None or current[0] == holder or current[1] <= now:
            current = self.job_leases[job] = (holder, now + ttl)
        return current

    def release_job(self, job: str, holder: str) -> None:
        if self.job_leases.get(job, ("", 0.0))[0] == holder:
            del self.job_leases[job]

    # -- replication rules ----------------------------------------------------------------
    def rule_report(
        self,
        rule: str,
        holder: str,
        after: int | None,
        to: int | None,
        status: dict[str, Any],
        dead: list[DeadLetter] | None = None,
        retried: list[int] | None = None,
        keep: int = 1000,
    ) -> int | None:
        """Store `rule`'s status and, when `to` is given, move its cursor from `after`;
        append `dead` to its dead letters (the oldest beyond `keep` dropped) and drop
        `retried` from its retry queue. Fenced by the rule's lease and its cursor
        (Conflict). Answers the cursor."""
        lease = self.rule_leases.get(rule)
        if lease is None or lease[0] != holder:
            raise Conflict(f"replication rule {rule}: lease not held by {holder}")
        raw = json.dumps(status, sort_keys=True, separators=(",", ":"))
        if len(raw) > RULE_STATUS_MAX:
            raise RequestInvalid(f"a rule's status is at most {RULE_STATUS_MAX} bytes")
        current = self.rule_cursors.get(rule)
        if to is not None:
            if current != after:
                raise Conflict(f"replication rule {rule}: cursor is {current}, not {after}")
            if current is not None and to < current:
                raise RequestInvalid("a rule's cursor never moves back")
            self.rule_cursors[rule] = current = to
        self.rule_status[rule] = raw
        _drop_retried(self.rule_retry, rule, retried or [])
        _add_dead(self.rule_dead, rule, dead or [], keep)
        return current

    def queue_rule_retry(self, rule: str, seqs: list[int] | None) -> int:
        """Move `rule`'s dead letters (these seqs, or all) to its retry queue; answers
        how many."""
        if not self.rule_dead.get(rule) and rule not in self.rule_status:
            raise NotFound(f"no replication rule {rule}")
        return _queue(self.rule_dead, self.rule_retry, rule, seqs)

    def request_run(self, rule: str) -> int:
        """Ask for one more full run of `rule`; answers how many were asked so far."""
        self.rule_runs[rule] = self.rule_runs.get(rule, 0) + 1
        return self.rule_runs[rule]

    def rules_listing(self) -> list[dict[str, Any]]:
        names = sorted(
            {
                *self.rule_leases,
                *self.rule_cursors,
                *self.rule_status,
                *self.rule_runs,
                *self.rule_dead,
                *self.rule_retry,
            }
        )
        out = []
        for name in names:
            lease = self.rule_leases.get(name)
            status = self.rule_status.get(name)
            dead = self.rule_dead.get(name, [])
            out.append(
                {
                    "name": name,
                    "cursor": self.rule_cursors.get(name),
                    "status": json.loads(status) if status is not None else None,
                    "runs_requested": self.rule_runs.get(name, 0),
                    "lease": None if lease is None else {"holder": lease[0], "expires": lease[1]},
                    "dead_letters": len(dead),
                    "dead_recent": [list(d) for d in dead[-RULE_DEAD_LISTED:]],
                    "retry": list(self.rule_retry.get(name, ())),
                }
            )
        return out

    def advance(
        self,
        name: str,
        holder: str,
        after: int | None,
        to: int,
        dead: list[DeadLetter],
        retried: list[int],
        keep: int,
    ) -> int:
        """Move `name`'s cursor from `after` to `to`, append `dead`, drop `retried` from the
        retry queue; fenced by the lease and the cursor (Conflict). Answers the cursor."""
        if self.lease is None or self.lease[0] != holder:
            raise Conflict(f"webhook delivery lease not held by {holder}")
        current = self.cursors.get(name)
        if current != after:
            raise Conflict(f"webhook {name}: cursor is {current}, not {after}")
        if current is not None and to < current:
            raise RequestInvalid("a webhook cursor never moves back")
        self.cursors[name] = to
        _drop_retried(self.retry, name, retried)
        _add_dead(self.dead, name, dead, keep)
        return to

    def queue_retry(self, name: str, seqs: list[int] | None) -> int:
        """Move dead letters (these seqs, or all) to the retry queue; answers how many."""
        if not self.dead.get(name) and name not in self.cursors and name not in self.endpoints:
            raise NotFound(f"no webhook {name}")
        return _queue(self.dead, self.retry, name, seqs)

    # -- queries --------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        names = sorted({*self.endpoints, *self.cursors, *self.dead, *self.retry})
        return {
            "endpoints": [
                {
                    "name": name,
                    "endpoint": json.loads(self.endpoints[name])
                    if name in self.endpoints
                    else None,
                    "cursor": self.cursors.get(name),
                    "dead_letters": len(self.dead.get(name, ())),
                    "retry": list(self.retry.get(name, ())),
                }
                for name in names
            ],
            "lease": None
            if self.lease is None
            else {"holder": self.lease[0], "expires": self.lease[1]},
        }

    def dead_letters(self, name: str) -> list[DeadLetter]:
        return list(self.dead.get(name, ()))

    # -- snapshots ------------------------------------------------------------------------
    def copy(self) -> WebhookBook:
        other = WebhookBook()
        other.endpoints = self.endpoints.copy()
        other.cursors = self.cursors.copy()
        other.dead = {k: v.copy() for k, v in self.dead.items()}
        other.retry = {k: v.copy() for k, v in self.retry.items()}
        other.lease = self.lease
        other.rule_leases = self.rule_leases.copy()
        other.rule_cursors = self.rule_cursors.copy()
        other.rule_status = self.rule_status.copy()
        other.rule_runs = self.rule_runs.copy()
        other.job_leases = self.job_leases.copy()
        other.rule_dead = {k: v.copy() for k, v in self.rule_dead.items()}
        other.rule_retry = {k: v.copy() for k, v in self.rule_retry.items()}
        return other

    def rows(self) -> Iterator[tuple[Any, ...]]:
        for name, raw in sorted(self.endpoints.items()):
            yield ("endpoint", name, raw)
        for name, seq in sorted(self.cursors.items()):
            yield ("cursor", name, seq)
        for name, letters in sorted(self.dead.items()):
            for d in letters:
                yield ("dead", name, *d)
        for name, seqs in sorted(self.retry.items()):
            for seq in seqs:
                yield ("retry", name, seq)
        if self.lease is not None:
            yield ("lease", *self.lease)
        for name, (holder, expires) in sorted(self.rule_leases.items()):
            yield ("rule_lease", name, holder, expires)
        for name, seq in sorted(self.rule_cursors.items()):
            yield ("rule_cursor", name, seq)
        for name, raw in sorted(self.rule_status.items()):
            yield ("rule_status", name, raw)
        for name, n in sorted(self.rule_runs.items()):
            yield ("rule_runs", name, n)
        for name, (holder, expires) in sorted(self.job_leases.items()):
            yield ("job_lease", name, holder, expires)
        for name, letters in sorted(self.rule_dead.items()):
            for d in letters:
                yield ("rule_dead", name, *d)
        for name, seqs in sorted(self.rule_retry.items()):
            for seq in seqs:
                yield ("rule_retry", name, seq)

    def load_row(self, row: tuple[Any, ...]) -> None:
        kind = row[0]
        if kind == "endpoint":
            self.endpoints[row[1]] = row[2]
        elif kind == "cursor":
            self.cursors[row[1]] = int(row[2])
        elif kind == "dead":
            self.dead.setdefault(row[1], []).append(DeadLetter(*row[2:6]))
        elif kind == "retry":
            self.retry.setdefault(row[1], []).append(int(row[2]))
        elif kind == "lease":
            self.lease = (str(row[1]), float(row[2]))
        elif kind == "rule_lease":
            self.rule_leases[row[1]] = (str(row[2]), float(row[3]))
        elif kind == "rule_cursor":
            self.rule_cursors[row[1]] = int(row[2])
        elif kind == "rule_status":
            self.rule_status[row[1]] = str(row[2])
        elif kind == "rule_runs":
            self.rule_runs[row[1]] = int(row[2])
        elif kind == "job_lease":
            self.job_leases[row[1]] = (str(row[2]), float(row[3]))
        elif kind == "rule_dead":
            self.rule_dead.setdefault(row[1], []).append(DeadLetter(*row[2:6]))
        elif kind == "rule_retry":
            self.rule_retry.setdefault(row[1], []).append(int(row[2]))
        else:
            raise ValueError(f"unknown webhooks snapshot row {kind!r}")


def _drop_retried(retry: dict[str, list[int]], name: str, retried: list[int]) -> None:
    if not retried:
        return
    done = set(retried)
    queue = [s for s in retry.get(name, ()) if s not in done]
    if queue:
        retry[name] = queue
    else:
        retry.pop(name, None)


def _add_dead(
    dead: dict[str, list[DeadLetter]], name: str, new: list[DeadLetter], keep: int
) -> None:
    if not new:
        return
    letters = dead.setdefault(name, [])
    have = {d.seq for d in letters}
    letters.extend(d for d in new if d.seq not in have)
    letters.sort()
    if len(letters) > keep:
        del letters[: len(letters) - keep]


def _queue(
    dead: dict[str, list[DeadLetter]],
    retry: dict[str, list[int]],
    name: str,
    seqs: list[int] | None,
) -> int:
    """Move `name`'s dead letters (these seqs, or all) to its retry queue; how many."""
    letters = dead.get(name)
    if not letters:
        return 0
    wanted = None if seqs is None else set(seqs)
    moving = [d.seq for d in letters if wanted is None or d.seq in wanted]
    if not moving:
        return 0
    kept = [d for d in letters if wanted is not None and d.seq not in wanted]
    if kept:
        dead[name] = kept
    else:
        del dead[name]
    queue = retry.setdefault(name, [])
    queue.extend(s for s in moving if s not in queue)
    queue.sort()
    return len(moving)
