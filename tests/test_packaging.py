"""What ships: every package of the project is in the distribution, and the files it reads
at run time (templates, static assets) are declared package data.

The container image installs the wheel, not the checkout, so a package left out of
pyproject's `packages.find` (cargohold.vulns once was) imports fine in every test run from
the checkout and fails only in the image."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("cargohold", "cargohold_cli", "node", "gateway", "protos")


def _setuptools() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"])


def _packages() -> list[str]:
    found = []
    for top in SHIPPED:
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.append(".".join(init.parent.relative_to(ROOT).parts))
    return sorted(found)


def test_every_package_is_included() -> None:
    include = _setuptools()["packages"]["find"]["include"]  # type: ignore[index]
    missing = [p for p in _packages() if not any(fnmatch.fnmatchcase(p, pat) for pat in include)]
    assert _packages() and not missing, f"add to [tool.setuptools.packages.find]: {missing}"


def test_every_non_python_file_a_package_reads_is_package_data() -> None:
    data: dict[str, list[str]] = _setuptools().get("package-data", {})  # type: ignore[assignment]
    undeclared = []
    for package in _packages():
        folder = ROOT / package.replace(".", "/")
        for path in folder.rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in {".py", ".pyi"}:
                continue
            owner = next(
                (
                    p
                    for p in sorted(_packages(), key=len, reverse=True)
                    if path.is_relative_to(ROOT / p.replace(".", "/"))
                ),
                package,
            )
            if owner != package:
                continue
            rel = path.relative_to(folder).as_posix()
            if not any(fnmatch.fnmatchcase(rel, pat) for pat in data.get(package, [])):
                undeclared.append(f"{package}: {rel}")
    allowed = {"protos: registry.proto", "protos: README.md", "protos: generate.sh"}
    assert sorted(set(undeclared) - allowed) == []
