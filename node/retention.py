"""Retention: the node role that applies `lifecycle.retention` policies (cargohold/retention.py
decides; docs/operations.md "Retention").

A pass runs every `lifecycle.retention_interval_seconds` or on the Admin `Trigger` (role
"retention"; "retention-dry-run" reports without deleting), and does anything only on the
Raft leader: it passes a barrier, copies the applied state, plans every repository a
policy covers (off the loop), then sends the deletions as the ordinary `tag_delete` /
`manifest_delete` commands, so whatever those commands do on delete (a trash) happens to
retention's deletions too. Each carries an activity-log actor (`retention`, kind `system`,
the policy in its user agent), so the log records every retention deletion; the immutable
tag rules (the state refuses to remove such a tag, as for a client); and an `expect`
guard: a tag moved or re-pushed, a manifest tagged, re-pushed or pulled since the plan was
made makes the state refuse that one deletion (`Conflict`, counted as `skipped_changed`).
A repository in a `lifecycle.delete_protected` namespace is reported and never touched.
A real pass also appends one `retention` summary per repository it deleted from (counts,
one `audit_append` for the whole pass: node/audit_events.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from cargohold import metadata_api as api
from cargohold.config import Config
from cargohold.errors import Conflict, ManifestUnknown, RegistryError
from cargohold.lifecycle_rules import protected_namespace, rules_for_repo
from cargohold.log import log_event
from cargohold.retention import (
    ManifestFacts,
    Policy,
    RepoFacts,
    RepoPlan,
    parse_policies,
    plan_repo,
    policy_for,
)
from node import audit_events
from node.gc import StateSource
from node.pacing import LoopedPassRole, PassSchedule, PassStats

logger = logging.getLogger("cargohold.node.retention")

_NEVER = 365 * 24 * 3600.0


@dataclass
class RetentionStats(PassStats):
    # The last pass.
    dry_run: bool = False
    leader: bool = False
    repositories: int = 0  # covered by a policy
    tags_deleted: int = 0  # a dry run: would delete
    manifests_deleted: int = 0
    skipped_changed: int = 0  # refused by the state: changed since planned
    failed_deletes: int = 0
    pass_seconds: float = 0.0
    # Since the process started (real passes only).
    tags_deleted_total: int = 0
    manifests_deleted_total: int = 0
    failed_passes: int = 0


def repo_facts(snapshot: dict[str, Any], repo: str) -> RepoFacts:
    """One repository of a state snapshot as retention reads it."""
    pushed = snapshot.get("pushed", {}).get(repo, {})
    pulled = snapshot.get("pulled", {}).get(repo, {})
    manifests = {
        digest: ManifestFacts(
            children=tuple(m.children),
            subject=m.subject,
            pushed=pushed.get(digest),
            pulled=pulled.get(digest),
        )
        for digest, m in snapshot["manifests"].get(repo, {}).items()
    }
    return RepoFacts(
        repo,
        manifests,
        dict(snapshot["tags"].get(repo, {})),
        dict(snapshot.get("tag_pushed", {}).get(repo, {})),
    )


def plan_all(
    snapshot: dict[str, Any],
    policies: list[Policy],
    now: float,
    immutable: list[str],
    protected: list[str],
) -> tuple[list[RepoPlan], list[dict[str, str]]]:
    """Plans of every repository a policy covers; (plans, skipped protected repositories)."""
    plans: list[RepoPlan] = []
    skipped: list[dict[str, str]] = []
    for repo in sorted(snapshot["manifests"]):
        policy = policy_for(policies, repo)
        if policy is None:
            continue
        namespace = protected_namespace(protected, repo)
        if namespace is not None:
            skipped.append({"repo": repo, "reason": f"delete-protected namespace {namespace}"})
            continue
        plans.append(
            plan_repo(policy, repo_facts(snapshot, repo), now, rules_for_repo(immutable, repo))
        )
    return plans, skipped


class RetentionRole(LoopedPassRole[RetentionStats]):
    def __init__(self, cfg: Config, raft: StateSource) -> None:
        self._cfg = cfg
        self._raft = raft
        self._policies = parse_policies(cfg.lifecycle.retention)
        self.stats = RetentionStats()
        self._schedule = PassSchedule(cfg.lifecycle.retention_interval_seconds or _NEVER)
        self._logger = logger
        self._report: dict[str, Any] = {}

    async def trigger(self, wait: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Run a pass now; with `wait`, its progress and its report (`report`: every
        repository's decisions, docs/operations.md "Retention")."""
        progress = await super().trigger(wait, dry_run)
        return {**progress, "report": self._report} if wait else progress

    def _pass_failed(self, exc: Exception) -> None:
        self.stats.failed_passes += 1
        self.stats.end_pass(completed=False)
        self._report = {"error": repr(exc)}

    async def run_pass(self, dry_run: bool = False) -> None:
        stats = self.stats
        stats.begin_pass()
        started = time.monotonic()
        stats.dry_run = dry_run
        stats.repositories = stats.tags_deleted = stats.manifests_deleted = 0
        stats.skipped_changed = stats.failed_deletes = 0
        stats.leader = self._raft.is_leader()
        if not stats.leader or not self._policies:
            self._report = {
                "dry_run": dry_run,
                "skipped": "not the Raft leader" if not stats.leader else "no policy",
            }
            stats.end_pass()
            return
        life = self._cfg.lifecycle
        await self._raft.barrier()
        snapshot, index = self._raft.state_snapshot()
        now = time.time()
        plans, protected = await asyncio.to_thread(
            plan_all, snapshot, self._policies, now, life.immutable_tags, life.delete_protected
        )
        stats.repositories = len(plans)
        refused: list[dict[str, str]] = []
        summary: list[list[Any]] = []
        for plan in plans:
            before = (stats.manifests_deleted, stats.tags_deleted)
            refused += await self._apply(plan, dry_run)
            manifests = stats.manifests_deleted - before[0]
            tags = stats.tags_deleted - before[1]
            if not dry_run and (manifests or tags) and self._cfg.audit.enabled:
                actor = audit_events.system_actor("retention", self._cfg.node.id, plan.policy)
                detail = f"deleted {manifests} manifests, {tags} tags (policy {plan.policy})"
                summary.append(
                    audit_events.system_event(
                        actor, "retention", repository=plan.repo, reference="pass", detail=detail
                    )
                )
        # One command for the whole pass (node/audit_events.py).
        await audit_events.append(self._raft, summary)
        self._report = {
            "dry_run": dry_run,
            "now": now,
            "applied_index": index,
            "repositories": [p.to_json() for p in plans],
            "protected": protected,
            "refused": refused,
        }
        stats.pass_seconds = round(time.monotonic() - started, 3)
        stats.end_pass()
        if not dry_run:
            stats.tags_deleted_total += stats.tags_deleted
            stats.manifests_deleted_total += stats.manifests_deleted
        log_event(
            logger,
            "retention.pass_done",
            dry_run=dry_run,
            repositories=stats.repositories,
            tags_deleted=stats.tags_deleted,
            manifests_deleted=stats.manifests_deleted,
            skipped_changed=stats.skipped_changed,
            seconds=stats.pass_seconds,
        )

    async def _apply(self, plan: RepoPlan, dry_run: bool) -> list[dict[str, str]]:
        """Send one repository's deletions (or count them); what the state refused."""
        stats, repo = self.stats, plan.repo
        immutable = rules_for_repo(self._cfg.lifecycle.immutable_tags, repo)
        gone = {m.digest for m in plan.manifests_to_delete}
        # The activity log records each deletion as the system's, from this node.
        actor = audit_events.system_actor("retention", self._cfg.node.id, plan.policy)
        # With a trash, retention's deletions are restorable like any other (trash.py).
        now, trash = actor["time"], self._cfg.lifecycle.trash_retention_seconds > 0
        # (request, tags it removes): tags whose manifest stays, then manifests.
        requests: list[tuple[api.Command[None], int]] = []
        for t in plan.tags_to_delete:
            if t.digest not in gone:
                tag_expect: dict[str, Any] = {"digest": t.digest, "pushed": t.pushed}
                delete = api.TagDelete(
                    repo, t.tag, immutable, actor, tag_expect, now=now, trash=trash
                )
                requests.append((delete, 1))
        for m in plan.manifests_to_delete:
            expect: dict[str, Any] = {"tags": list(m.tags), "pushed": m.pushed, "pulled": m.pulled}
            requests.append(
                (
                    api.ManifestDelete(
                        repo, m.digest, immutable, actor, expect, now=now, trash=trash
                    ),
                    len(m.tags),
                )
            )
        refused: list[dict[str, str]] = []
        for request, counts_tags in requests:
            if dry_run:
                self._count(request, counts_tags)
                continue
            try:
                # As JSON, the way a gateway's command travels (tuples become lists).
                await self._raft.command(request.op, json.loads(request.args_json()))
            except (Conflict, ManifestUnknown) as exc:
                stats.skipped_changed += 1
                refused.append(_refusal(request, exc))
                continue
            except RegistryError as exc:
                stats.failed_deletes += 1
                refused.append(_refusal(request, exc))
                log_event(
                    logger, "retention.delete_failed", logging.WARNING, repo=repo, error=str(exc)
                )
                continue
            self._count(request, counts_tags)
        if not dry_run and any(isinstance(r, api.ManifestDelete) for r, _ in requests):
            await self._fence(repo)
        return refused

    async def _fence(self, repo: str) -> None:
        """Once the gateways' caches can no longer serve what was just deleted (the access
        fence covers removals, docs/metadata.md): the pass reports only what every gateway
        enforces. A fence that fails is logged; the leases bound it anyway (one lease)."""
        try:
            await self._raft.query(api.AccessFence.op, {}, linearizable=False)
        except RegistryError as exc:
            log_event(logger, "retention.fence_failed", logging.WARNING, repo=repo, error=str(exc))

    def _count(self, request: api.Command[None], tags: int) -> None:
        if isinstance(request, api.ManifestDelete):
            self.stats.manifests_deleted += 1
            self.stats.tags_deleted += tags
        else:
            self.stats.tags_deleted += 1


def _refusal(request: api.Command[None], exc: RegistryError) -> dict[str, str]:
    ref = request.digest if isinstance(request, api.ManifestDelete) else getattr(request, "tag", "")
    return {"repo": getattr(request, "repo", ""), "reference": ref, "error": str(exc)}
