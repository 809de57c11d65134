"""The packages import top-down only, and the wheel ships exactly these packages.

    cargohold_cli/   entry layer: CLI, dev launcher, admin client   (may import all below)
    node/  gateway/  the two processes; neither imports the other
    cargohold/       shared domain
    protos/          generated gRPC contract

Every import statement counts, including those inside functions and `TYPE_CHECKING`
blocks. docs/packaging.md explains the layers and the top-level package names.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Package -> the first-party top-level packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "protos": set(),
    "cargohold": {"protos"},
    "node": {"cargohold", "protos"},
    "gateway": {"cargohold", "protos"},
    "cargohold_cli": {"cargohold", "protos", "node", "gateway"},
}
# Top-level folders with an __init__.py that are not shipped (nor layered).
NOT_SHIPPED = {"tests", "bench"}


def _imported_top_levels(path: Path) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def test_every_import_runs_down_the_layers() -> None:
    ours = set(ALLOWED)
    wrong: list[str] = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, line in sorted(_imported_top_levels(path)):
                if top in ours and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom node.server import main\n"
        "def f():\n    import gateway.app as g\n    from . import sibling\n"
    )
    assert {top for top, _ in _imported_top_levels(sample)} == {"os", "node", "gateway"}


def test_the_wheel_ships_exactly_the_layered_packages() -> None:
    on_disk = {
        p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in NOT_SHIPPED
    }
    assert on_disk == set(ALLOWED)
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    assert {name.split(".")[0] for name in include} == set(ALLOWED)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cargohold"].split(".")[0] == "cargohold_cli"
