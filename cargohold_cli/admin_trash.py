"""`cargohold admin trash list|restore|purge`: the trash of deleted manifests and tags
(node/metadata/trash.py, docs/operations.md "The trash"), through the typed facade over
the nodes' Metadata gRPC service, signed as the `admin` role (only it may restore).

A restore carries the immutable tag rules of the admin's own config for the repository
(`lifecycle.immutable_tags`), so `--force` cannot move a tag a rule covers.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from cargohold.config import Config
from cargohold.errors import ConfigError
from cargohold.lifecycle_rules import rules_for_repo
from cargohold.metadata_api import Metadata, TrashEntry, TrashRestore, TrashRestored
from cargohold.names import validate_name, validate_tag
from cargohold_cli.admin_access import AdminTransport, cli_actor


def _meta(addresses: list[str], cfg: Config) -> Metadata:
    return Metadata(AdminTransport(addresses, cfg))


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """`REPO@DIGEST` or `REPO:TAG` -> (repo, digest, tag)."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return validate_name(repo), digest, None
    repo, sep, tag = ref.rpartition(":")
    if not sep or not repo:
        raise ConfigError(f"{ref!r}: expected REPO@DIGEST or REPO:TAG")
    return validate_name(repo), None, validate_tag(tag)


def list_trash(addresses: list[str], cfg: Config, repo: str | None) -> list[TrashEntry]:
    return asyncio.run(_meta(addresses, cfg).trash_list(repo))


def restore(
    addresses: list[str], cfg: Config, ref: str, force: bool = False
) -> tuple[str, TrashRestored]:
    """Restore `ref`; (repo, what came back). A refusal raises the state's typed error."""
    repo, digest, tag = parse_reference(ref)
    immutable = rules_for_repo(cfg.lifecycle.immutable_tags, repo)
    request = TrashRestore(repo, digest, tag, force, immutable, time.time(), cli_actor())
    return repo, asyncio.run(_meta(addresses, cfg).trash_restore(request))


def purge(addresses: list[str], cfg: Config, repo: str | None, older_than: float) -> int:
    meta = _meta(addresses, cfg)
    return asyncio.run(meta.trash_purge(time.time(), older_than, repo, cli_actor()))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_json(entry: TrashEntry, retention: float) -> dict[str, Any]:
    """An entry as `trash list --json` prints it: the record plus when a GC pass may purge
    it under `retention` (this config's `lifecycle.trash_retention_seconds`)."""
    out = entry.to_json()
    out["purge_after"] = entry.deleted_at + retention
    return out


def format_entries(entries: list[TrashEntry], retention: float) -> str:
    lines = [f"{'REPOSITORY':<30} {'KIND':<8} {'REFERENCE':<40} {'DELETED':<20} PURGE AFTER"]
    for e in entries:
        ref = (
            f"{e.digest[:19]}... {e.size} B" if e.tag is None else f":{e.tag} -> {e.digest[:19]}..."
        )
        lines.append(
            f"{e.repo:<30} {e.kind:<8} {ref:<40} {_utc(e.deleted_at):<20} "
            f"{_utc(e.deleted_at + retention)}"
        )
    return "\n".join(lines)
