"""The project's documents stay true to the tree: every setting is documented, every
relative link in docs/ and the READMEs resolves, and no comment points outside the
repository (a person who clones Cargohold must be able to open what a comment cites)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from cargohold.config import Config

ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# What a comment may not cite: notes that live outside the repository.
_OUTSIDE = re.compile(r"shared/|shared raft|\bdesign\.md|\bstyle\.md|(?<![\w/])(raft|protocol)\.md")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).exists()]


@pytest.mark.parametrize(
    "section",
    [f.default_factory for f in dataclasses.fields(Config) if callable(f.default_factory)],
)
def test_every_setting_is_in_the_operations_guide(section: type) -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [f.name for f in dataclasses.fields(section) if f"`{f.name}`" not in guide]
    assert not missing, f"docs/operations.md does not describe {section.__name__}: {missing}"


def test_relative_links_resolve() -> None:
    broken = []
    for doc in _tracked("docs/*.md", "*.md", "*/README.md"):
        for target in _LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_no_comment_points_outside_the_repository() -> None:
    files = _tracked("*.py", "*.sh", "Makefile", "*.toml", "*.yml", "*.cfg", "deploy/*")
    files = [p for p in files if p != Path(__file__).resolve()]
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, hits
