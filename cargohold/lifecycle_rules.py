"""Immutable tag rules and delete-protected namespaces: parsing and matching
(docs/operations.md, "Immutable tags and delete protection").

An immutable tag rule is `REPO_GLOB:TAG_PATTERN` (both shell-style, `fnmatchcase`: `*`,
`?`, `[...]`; `*` also crosses `/` in repository names), e.g. `prod/*:v*`. The gateway
sends the rules whose repository glob matches the request's repository inside the
`manifest_put` / `tag_delete` / `manifest_delete` command, and the metadata state refuses
there, atomically with the change, to move or remove a tag a rule's pattern matches
(`TagImmutable`, naming the rule). A protected namespace is a repository-name prefix
(`prod` protects `prod` and `prod/...`): the gateway refuses every delete in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from cargohold.errors import ConfigError, DeleteProtected


def parse_rule(text: str) -> tuple[str, str]:
    """`REPO_GLOB:TAG_PATTERN` -> (repo glob, tag pattern); ConfigError when malformed."""
    repo_glob, sep, tag_pattern = text.partition(":")
    if not sep or not repo_glob.strip() or not tag_pattern.strip() or ":" in tag_pattern:
        raise ConfigError(f"immutable tag rule {text!r}: want REPO_GLOB:TAG_PATTERN")
    return repo_glob.strip(), tag_pattern.strip()


def rules_for_repo(rules: Iterable[str], repo: str) -> tuple[str, ...]:
    """The rules (as written) whose repository glob matches `repo`."""
    return tuple(r for r in rules if fnmatchcase(repo, parse_rule(r)[0]))


def rule_for_tag(rules: Iterable[str], tag: str) -> str | None:
    """The first rule whose tag pattern matches `tag` (rules already chosen for the repo)."""
    for rule in rules:
        _, sep, pattern = rule.partition(":")
        if sep and fnmatchcase(tag, pattern.strip()):
            return rule
    return None


def protected_namespace(namespaces: Iterable[str], repo: str) -> str | None:
    """The protected namespace `repo` lies in, if any."""
    for ns in namespaces:
        ns = ns.strip().strip("/")
        if ns and (repo == ns or repo.startswith(ns + "/")):
            return ns
    return None


def refuse_protected_delete(namespaces: Iterable[str], repo: str) -> None:
    """DeleteProtected (403 DENIED, naming the namespace) for a delete in a protected one."""
    namespace = protected_namespace(namespaces, repo)
    if namespace is not None:
        raise DeleteProtected(
            f"deletes are disabled in namespace {namespace} (lifecycle.delete_protected)",
            detail={"repository": repo, "namespace": namespace},
        )
