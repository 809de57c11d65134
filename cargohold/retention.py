"""Retention policies: parsing them and deciding, for one repository, which tags and
manifests go (docs/operations.md, "Retention"). Pure: node/retention.py feeds it the
applied state and sends the deletions.

A policy is one string, `REPO_GLOB: RULE RULE ...` (Zot's vocabulary), e.g.
`team/*: keep_tags=v*|latest most_recently_pushed=5 pulled_within=30d untagged_after=1d`:

- `keep_tags=PAT|PAT`          tags matching a shell pattern (`fnmatchcase`, like immutable
                               tag rules) are kept;
- `most_recently_pushed=N`     the N tags pushed last are kept;
- `most_recently_pulled=N`     the N tags whose manifest was pulled last are kept (a tag
                               never pulled is not ranked);
- `pushed_within=DURATION`     tags pushed within that long are kept;
- `pulled_within=DURATION`     tags whose manifest was pulled within that long are kept;
- `untagged_after=DURATION`    an untagged manifest that nothing needs is removed once
                               neither pushed nor pulled for that long (absent: untagged
                               manifests are left alone).
DURATION is a number with a unit: `s`, `m`, `h`, `d` (`90m`, `36h`, `30d`).

The first policy (in config order) whose glob matches a repository is its policy; a
repository no policy matches is never touched. Semantics, per repository:
1. A tag survives if ANY keep rule keeps it, or an immutable tag rule covers it, or its push
   time is unknown (pushed before push times were recorded). A policy without any tag
   rule keeps every tag.
2. A manifest survives if a surviving tag points to it, or it is needed: a child of a
   surviving index, the subject of a surviving referrer, or a referrer of a surviving
   manifest (followed to a fixed point).
3. A manifest whose tags all went in this run is deleted with them (unless needed). A
   manifest that had no tag is deleted when `untagged_after` is set, it is not needed and
   its last push and last pull are both older than `untagged_after` (unknown push time:
   kept).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from cargohold.errors import ConfigError
from cargohold.lifecycle_rules import rule_for_tag

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_COUNT_KEYS = ("most_recently_pushed", "most_recently_pulled")
_DURATION_KEYS = ("pushed_within", "pulled_within", "untagged_after")


def parse_duration(text: str) -> float:
    """`30d` -> seconds; ConfigError when malformed."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"retention duration {text!r}: want a number and s, m, h or d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Policy:
    """One retention policy as written in `lifecycle.retention`."""

    text: str
    repo_glob: str
    keep_tags: tuple[str, ...] = ()
    most_recently_pushed: int | None = None
    most_recently_pulled: int | None = None
    pushed_within: float | None = None
    pulled_within: float | None = None
    untagged_after: float | None = None

    @property
    def has_tag_rules(self) -> bool:
        return bool(self.keep_tags) or any(
            v is not None
            for v in (
                self.most_recently_pushed,
                self.most_recently_pulled,
                self.pushed_within,
                self.pulled_within,
            )
        )


def parse_policy(text: str) -> Policy:
    """`REPO_GLOB: key=value ...` -> Policy; ConfigError naming the policy when malformed."""
    repo_glob, sep, rules = text.partition(":")
    repo_glob = repo_glob.strip()
    if not sep or not repo_glob:
        raise ConfigError(f"retention policy {text!r}: want 'REPO_GLOB: RULE ...'")
    values: dict[str, Any] = {}
    for token in rules.split():
        key, eq, value = token.partition("=")
        if not eq or not value or key in values:
            raise ConfigError(f"retention policy {text!r}: bad or repeated rule {token!r}")
        if key == "keep_tags":
            values[key] = tuple(p for p in value.split("|") if p)
        elif key in _COUNT_KEYS:
            if not value.isdigit():
                raise ConfigError(f"retention policy {text!r}: {key} wants a count")
            values[key] = int(value)
        elif key in _DURATION_KEYS:
            try:
                values[key] = parse_duration(value)
            except ConfigError as exc:
                raise ConfigError(f"retention policy {text!r}: {exc}") from None
        else:
            raise ConfigError(f"retention policy {text!r}: unknown rule {key!r}")
    if not values:
        raise ConfigError(f"retention policy {text!r}: no rule")
    return Policy(text=text.strip(), repo_glob=repo_glob, **values)


def parse_policies(texts: Iterable[str]) -> list[Policy]:
    return [parse_policy(t) for t in texts]


def policy_for(policies: Sequence[Policy], repo: str) -> Policy | None:
    """The first policy whose repository glob matches `repo`."""
    return next((p for p in policies if fnmatchcase(repo, p.repo_glob)), None)


# -- one repository, as the state holds it -------------------------------------------------
@dataclass(frozen=True)
class ManifestFacts:
    children: tuple[str, ...] = ()
    subject: str | None = None
    pushed: float | None = None
    pulled: float | None = None


@dataclass(frozen=True)
class RepoFacts:
    """What retention reads of one repository (node/retention.py builds it)."""

    name: str
    manifests: Mapping[str, ManifestFacts]
    tags: Mapping[str, str]  # tag -> digest
    tag_pushed: Mapping[str, float] = field(default_factory=dict)

    def tag_push_time(self, tag: str) -> float | None:
        when = self.tag_pushed.get(tag)
        return when if when is not None else self.manifests[self.tags[tag]].pushed


@dataclass
class TagDecision:
    tag: str
    digest: str
    pushed: float | None
    pulled: float | None
    delete: bool
    reasons: list[str]  # what keeps it, or why it goes

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "digest": self.digest,
            "pushed": self.pushed,
            "pulled": self.pulled,
            "action": "delete" if self.delete else "keep",
            "reasons": self.reasons,
        }


@dataclass
class ManifestDecision:
    digest: str
    tags: tuple[str, ...]  # its tags before the run
    pushed: float | None
    pulled: float | None
    delete: bool
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "tags": list(self.tags),
            "pushed": self.pushed,
            "pulled": self.pulled,
            "action": "delete" if self.delete else "keep",
            "reasons": self.reasons,
        }


@dataclass
class RepoPlan:
    repo: str
    policy: str
    tags: list[TagDecision]
    # Every manifest left without a surviving tag (tagged survivors are implied).
    manifests: list[ManifestDecision]

    @property
    def tags_to_delete(self) -> list[TagDecision]:
        return [t for t in self.tags if t.delete]

    @property
    def manifests_to_delete(self) -> list[ManifestDecision]:
        return [m for m in self.manifests if m.delete]

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "policy": self.policy,
            "tags": [t.to_json() for t in self.tags],
            "manifests": [m.to_json() for m in self.manifests],
        }


def _top(ranked: list[tuple[float, str]], n: int) -> set[str]:
    """The tags of the n latest times (ties: by tag name, so the answer is stable)."""
    ranked.sort(key=lambda item: (-item[0], item[1]))
    return {tag for _, tag in ranked[:n]}


def _days(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def decide_tags(
    policy: Policy, facts: RepoFacts, now: float, immutable: Sequence[str] = ()
) -> list[TagDecision]:
    """Rule 1 of the module docstring, for every tag of the repository (sorted by name)."""
    pushed = {t: facts.tag_push_time(t) for t in facts.tags}
    pulled = {t: facts.manifests[d].pulled for t, d in facts.tags.items()}
    top_pushed: set[str] = set()
    top_pulled: set[str] = set()
    if policy.most_recently_pushed is not None:
        ranked = [(w, t) for t, w in pushed.items() if w is not None]
        top_pushed = _top(ranked, policy.most_recently_pushed)
    if policy.most_recently_pulled is not None:
        ranked = [(w, t) for t, w in pulled.items() if w is not None]
        top_pulled = _top(ranked, policy.most_recently_pulled)
    out = []
    for tag in sorted(facts.tags):
        push, pull = pushed[tag], pulled[tag]
        reasons: list[str] = []
        rule = rule_for_tag(immutable, tag)
        if rule is not None:
            reasons.append(f"immutable rule {rule}")
        if not policy.has_tag_rules:
            reasons.append("the policy has no tag rule")
        if push is None:
            reasons.append("push time unknown")
        pattern = next((p for p in policy.keep_tags if fnmatchcase(tag, p)), None)
        if pattern is not None:
            reasons.append(f"keep_tags {pattern}")
        if tag in top_pushed:
            reasons.append(f"most_recently_pushed {policy.most_recently_pushed}")
        if tag in top_pulled:
            reasons.append(f"most_recently_pulled {policy.most_recently_pulled}")
        if policy.pushed_within is not None and push is not None:
            if now - push <= policy.pushed_within:
                reasons.append(f"pushed_within {_days(policy.pushed_within)}")
        if policy.pulled_within is not None and pull is not None:
            if now - pull <= policy.pulled_within:
                reasons.append(f"pulled_within {_days(policy.pulled_within)}")
        delete = not reasons
        if delete:
            reasons = ["no keep rule keeps it"]
        out.append(TagDecision(tag, facts.tags[tag], push, pull, delete, reasons))
    return out


def plan_repo(
    policy: Policy,
    facts: RepoFacts,
    now: float,
    immutable: Sequence[str] = (),
    referrers: Mapping[str, Iterable[str]] | None = None,
) -> RepoPlan:
    """What retention does to one repository (the module docstring's rules 1-3).

    `referrers` maps a subject digest to the manifests of this repository that refer to it
    (derived from `facts` when not given)."""
    tags = decide_tags(policy, facts, now, immutable)
    by_digest: dict[str, list[str]] = {}
    for t in tags:
        by_digest.setdefault(t.digest, []).append(t.tag)
    surviving_tagged = {t.digest for t in tags if not t.delete}
    if referrers is None:
        built: dict[str, set[str]] = {}
        for digest, m in facts.manifests.items():
            if m.subject is not None:
                built.setdefault(m.subject, set()).add(digest)
        referrers = built
    # Candidates: manifests without a surviving tag; their fate before "needed" is applied.
    pending: dict[str, list[str]] = {}  # digest -> why it would go
    kept_alone: dict[str, list[str]] = {}  # untagged but kept on its own (delay, unknown)
    for digest, m in facts.manifests.items():
        if digest in surviving_tagged:
            continue
        if digest in by_digest:
            pending[digest] = ["its tags were removed"]
            continue
        if policy.untagged_after is None:
            kept_alone[digest] = ["untagged_after not set"]
        elif m.pushed is None:
            kept_alone[digest] = ["push time unknown"]
        else:
            last = max(m.pushed, m.pulled or 0.0)
            if now - last > policy.untagged_after:
                pending[digest] = [
                    f"untagged, not pushed or pulled for {_days(policy.untagged_after)}"
                ]
            else:
                kept_alone[digest] = [f"untagged for less than {_days(policy.untagged_after)}"]
    # Needed: close over children, subjects and referrers from every manifest that stays.
    needed_by: dict[str, str] = {}
    stack = [d for d in facts.manifests if d not in pending]
    seen = set(stack)
    while stack:
        digest = stack.pop()
        m = facts.manifests[digest]
        links = [(c, f"child of index {digest}") for c in m.children]
        if m.subject is not None:
            links.append((m.subject, f"subject of referrer {digest}"))
        links += [(r, f"referrer of {digest}") for r in referrers.get(digest, ())]
        for other, why in links:
            if other in facts.manifests and other not in seen:
                seen.add(other)
                needed_by[other] = why
                stack.append(other)
    manifests = []
    for digest in sorted(pending.keys() | kept_alone.keys()):
        m = facts.manifests[digest]
        own_tags = tuple(sorted(by_digest.get(digest, ())))
        if digest in needed_by:
            decision = ManifestDecision(
                digest, own_tags, m.pushed, m.pulled, False, [needed_by[digest]]
            )
        elif digest in pending:
            decision = ManifestDecision(digest, own_tags, m.pushed, m.pulled, True, pending[digest])
        else:
            decision = ManifestDecision(
                digest, own_tags, m.pushed, m.pulled, False, kept_alone[digest]
            )
        manifests.append(decision)
    return RepoPlan(facts.name, policy.text, tags, manifests)
