"""Replication rules: their shape, their checks and their filters (docs/mirroring.md
"Replication").

A rule is configured in `[replication]` as a `[[replication.rules]]` table (give every
gateway the same list). It names a direction (`push`: this registry's repositories to a
remote one; `pull`: a remote registry's repositories into this one), the remote's URL and
optional credentials, repository globs and tag globs (`fnmatch`: `*` also matches `/`),
a prefix put before every name at the target, and its triggers: `on_push` (push rules:
every push of a matching tag, read from the activity log), `schedule` (a full run every
`interval_seconds`); with neither, a rule runs when `cargohold admin replication run`
asks. An `on_push` rule with `replicate_deletes` also deletes at the target what is
deleted here (a tag by name, a manifest by digest; off by default), and copies again
what a restore from the trash brings back.

Owned here: `Rule` (and `parse_rules`), `wants_repo`, `wants_tag`, `wants_tag_delete`,
`target_name`,
`referrer_tag` (the tag names of referrers kept by tag: cosign's and the OCI fallback's).
The copying is gateway/replication/; a rule's lease, cursor and status are in
node/metadata/webhooks.py.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cargohold.errors import RequestInvalid

DIRECTIONS = ("push", "pull")
TRIGGERS = ("on_push", "schedule")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Tags that stand for referrers of a manifest: cosign's `sha256-<hex>.sig|.att|.sbom`,
# and the OCI referrers tag schema's `sha256-<hex>` (an index listing the referrers).
_REFERRER_TAG = re.compile(r"^sha256-[0-9a-f]{64}(\.(sig|att|sbom))?$")
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
# Largest status a rule's runner may report into the replicated state (its JSON, bytes).
RULE_STATUS_MAX = 16 * 1024


@dataclass(frozen=True)
class Rule:
    """One replication rule; see the module docstring."""

    name: str
    direction: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    repositories: tuple[str, ...] = ("*",)
    tags: tuple[str, ...] = ("*",)
    target_prefix: str = ""
    triggers: tuple[str, ...] = ()
    interval_seconds: float = 3600.0
    enabled: bool = True
    replicate_deletes: bool = False

    def describe(self) -> dict[str, Any]:
        """What `cargohold admin replication list` shows (never the credentials)."""
        return {
            "name": self.name,
            "direction": self.direction,
            "url": _without_userinfo(self.url),
            "authenticated": bool(self.username),
            "repositories": list(self.repositories),
            "tags": list(self.tags),
            "target_prefix": self.target_prefix,
            "triggers": list(self.triggers),
            "interval_seconds": self.interval_seconds,
            "enabled": self.enabled,
            "replicate_deletes": self.replicate_deletes,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Rule:
        """Check and build a rule; RequestInvalid says what is wrong."""
        if not isinstance(raw, dict):
            raise RequestInvalid("a replication rule is a table")
        known = {
            "name",
            "direction",
            "url",
            "username",
            "password",
            "password_file",
            "repositories",
            "tags",
            "target_prefix",
            "triggers",
            "interval_seconds",
            "enabled",
            "replicate_deletes",
        }
        unknown = sorted(set(raw) - known)
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestInvalid("replication rule name must match [a-z0-9][a-z0-9._-]{0,63}")
        if unknown:
            raise RequestInvalid(f"replication rule {name}: unknown setting {unknown[0]}")
        direction = raw.get("direction", "push")
        if direction not in DIRECTIONS:
            raise RequestInvalid(f"replication rule {name}: direction must be push or pull")
        url = raw.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise RequestInvalid(f"replication rule {name}: url must be http:// or https://")
        password = str(raw.get("password") or "")
        if raw.get("password_file"):
            if password:
                raise RequestInvalid(f"replication rule {name}: password or password_file")
            try:
                password = Path(str(raw["password_file"])).read_text().strip()
            except OSError as exc:
                raise RequestInvalid(f"replication rule {name}: {exc}") from None
        repositories = _globs(raw.get("repositories", ["*"]), name, "repositories")
        tags = _globs(raw.get("tags", ["*"]), name, "tags")
        default_triggers = ["on_push"] if direction == "push" else ["schedule"]
        triggers = raw.get("triggers", default_triggers)
        if not isinstance(triggers, list) or any(t not in TRIGGERS for t in triggers):
            raise RequestInvalid(f"replication rule {name}: triggers are some of on_push, schedule")
        if "on_push" in triggers and direction != "push":
            raise RequestInvalid(f"replication rule {name}: on_push is for push rules only")
        interval = raw.get("interval_seconds", 3600.0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 1:
            raise RequestInvalid(f"replication rule {name}: interval_seconds must be >= 1")
        deletes = raw.get("replicate_deletes", False)
        if not isinstance(deletes, bool):
            raise RequestInvalid(f"replication rule {name}: replicate_deletes is true or false")
        if deletes and "on_push" not in triggers:
            # Deletes are read from the activity log, as pushes are: an on_push rule's work.
            raise RequestInvalid(
                f"replication rule {name}: replicate_deletes needs the on_push trigger"
            )
        prefix = raw.get("target_prefix", "")
        if not isinstance(prefix, str) or len(prefix) > 128:
            raise RequestInvalid(f"replication rule {name}: target_prefix must be a string")
        return cls(
            name=name,
            direction=direction,
            url=url.rstrip("/"),
            username=str(raw.get("username") or ""),
            password=password,
            repositories=repositories,
            tags=tags,
            target_prefix=prefix.strip("/"),
            triggers=tuple(dict.fromkeys(triggers)),
            interval_seconds=float(interval),
            enabled=bool(raw.get("enabled", True)),
            replicate_deletes=deletes,
        )


def _globs(value: Any, name: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(g, str) and 0 < len(g) <= 255 for g in value)
    ):
        raise RequestInvalid(f"replication rule {name}: {key} must be a list of globs")
    return tuple(value)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def parse_rules(raw: list[Any]) -> list[Rule]:
    """`[[replication.rules]]` tables as rules (RequestInvalid names the bad one)."""
    out = [Rule.from_json(dict(item) if isinstance(item, dict) else item) for item in raw]
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise RequestInvalid("replication.rules: names must be unique")
    return out


def wants_repo(rule: Rule, repo: str) -> bool:
    """Does `rule` copy the source repository `repo`?"""
    return any(fnmatch.fnmatchcase(repo, glob) for glob in rule.repositories)


def wants_tag(rule: Rule, tag: str) -> bool:
    """Does `rule` copy the tag `tag`? (Referrer tags follow their subject instead.)"""
    return not referrer_tag(tag) and any(fnmatch.fnmatchcase(tag, g) for g in rule.tags)


def referrer_tag(tag: str) -> bool:
    return bool(_REFERRER_TAG.match(tag))


def wants_tag_delete(rule: Rule, tag: str) -> bool:
    """Does `rule` delete the tag `tag` at the target when it is deleted here? A tag it
    copies, and cosign's referrer tags (copied with their subject); not the referrers tag
    schema's `sha256-<hex>` index, which a copy keeps at the target for what it copied."""
    if referrer_tag(tag):
        return tag.endswith(COSIGN_SUFFIXES)
    return wants_tag(rule, tag)


def target_name(rule: Rule, repo: str) -> str:
    """The name of source repository `repo` at the target."""
    return f"{rule.target_prefix}/{repo}" if rule.target_prefix else repo


def literal_repositories(rule: Rule) -> list[str]:
    """The rule's repository globs that name one repository (no wildcard): what a pull
    rule copies when the remote does not list its catalog."""
    return [g for g in rule.repositories if not any(c in g for c in "*?[")]
