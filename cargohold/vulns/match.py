"""Matching an image's SBOM against the vulnerability index (cargohold/vulns/osv.py).

`sbom_packages` reads the components of a CycloneDX JSON SBOM (the scanner's format,
docs/supply-chain.md) by their package URL:

    pkg:deb/debian/NAME@VERSION?arch=..&distro=debian-12   -> ecosystem Debian:12
    pkg:deb/ubuntu/NAME@VERSION?..&distro=ubuntu-22.04      -> Ubuntu:22.04[:LTS]
    pkg:apk/alpine/NAME@VERSION?arch=..&distro=alpine-3.19 -> Alpine:v3.19 (any Alpine
                                                              release without `distro`)
    pkg:pypi/NAME@VERSION                                 -> PyPI

Debian and Alpine advisories name source packages: a component's `cargohold:source`
property (`NAME`, or `NAME (VERSION)` as dpkg's `Source:` field) is used when present,
with the source version (`cargohold:source-version`, or the one in parentheses) when the
SBOM gives one. PyPI names are compared normalised (PEP 503).

`match` tests each package against the advisories of its ecosystem: affected when its
version is listed in `versions`, or inside one ECOSYSTEM range (events ordered by the
ecosystem's version rule; `introduced` 0 is the start of time; `fixed` excludes, and
`last_affected` includes, its version). A version or event the rule cannot order is
skipped (and counted), never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cargohold.vulns.osv import RANK, pep503
from cargohold.vulns.versions import InvalidVersion, compare, family, sort_key

SOURCE_PROPERTY = "cargohold:source"
SOURCE_VERSION_PROPERTY = "cargohold:source-version"
_TYPE_FAMILY = {"deb": "Debian", "apk": "Alpine", "pypi": "PyPI"}


@dataclass(frozen=True, slots=True)
class Package:
    """One installed package as the advisories name it."""

    ecosystem: str  # `Debian:12`, `Alpine:v3.19`, `Alpine` (any release), `PyPI`
    name: str  # the source package for Debian/Alpine when the SBOM says
    version: str
    component: str  # the component's own name (a binary package)
    purl: str


def _source(component: dict[str, Any]) -> tuple[str | None, str | None]:
    """(source package, source version) from the component's properties, if it names them."""
    props = {
        p.get("name"): str(p.get("value") or "").strip()
        for p in component.get("properties") or []
        if isinstance(p, dict)
    }
    name, version = None, props.get(SOURCE_VERSION_PROPERTY) or None
    m = re.fullmatch(r"(\S+)(?:\s+\((\S+)\))?", props.get(SOURCE_PROPERTY, ""))
    if m:
        name, version = m.group(1), version or m.group(2)
    return name, version


def package_of(component: dict[str, Any]) -> Package | None:
    """The package a CycloneDX component describes, if its purl type is matched."""
    purl = component.get("purl")
    if not isinstance(purl, str) or not purl.startswith("pkg:"):
        return None
    parts = urlsplit(purl)
    kind, _, rest = parts.path.partition("/")
    fam = _TYPE_FAMILY.get(kind.lower())
    if fam is None:
        return None
    path, _, purl_version = rest.partition("@")
    name = unquote(path.rsplit("/", 1)[-1])
    version = component.get("version")
    if not isinstance(version, str) or not version:
        version = unquote(purl_version)
    if not name or not version:
        return None
    qualifiers = {k: v[0] for k, v in parse_qs(parts.query).items()}
    distro = qualifiers.get("distro", "")
    if fam == "PyPI":
        return Package("PyPI", pep503(name), version, name, purl)
    source, source_version = _source(component)
    if fam == "Debian":
        vendor = path.rsplit("/", 1)[0].lower() if "/" in path else "debian"
        if vendor == "ubuntu":  # OSV: Ubuntu:22.04:LTS (Debian's version rules)
            release = distro.split("-", 1)[1] if distro.startswith("ubuntu-") else ""
            eco = f"Ubuntu:{release}" if release else "Ubuntu"
        elif vendor == "debian":
            release = distro.split("-", 1)[1] if distro.startswith("debian-") else ""
            eco = f"Debian:{release.split('.')[0]}" if release else "Debian"
        else:  # another dpkg distribution: no advisories of its own here
            return None
    else:
        release = distro.split("-", 1)[1] if distro.startswith("alpine-") else ""
        eco = f"Alpine:v{'.'.join(release.split('.')[:2])}" if release else "Alpine"
    return Package(eco, source or name, source_version or version, name, purl)


def sbom_packages(sbom: dict[str, Any]) -> list[Package]:
    """The matchable packages of a CycloneDX document (nested components included)."""
    found: dict[tuple[str, str, str, str], Package] = {}
    stack = list(sbom.get("components") or [])
    while stack:
        component = stack.pop()
        if not isinstance(component, dict):
            continue
        stack.extend(component.get("components") or [])
        pkg = package_of(component)
        if pkg is not None:
            found[(pkg.ecosystem, pkg.name, pkg.version, pkg.component)] = pkg
    return sorted(found.values(), key=lambda p: (p.ecosystem, p.name, p.component, p.version))


def in_range(ecosystem: str, version: str, events: list[list[str]]) -> bool:
    """Whether `version` lies in one OSV range (its events, any order)."""

    def at(event: list[str]) -> tuple[int, Any]:
        kind, v = event
        return (0, "") if kind == "introduced" and v == "0" else (1, key(v))

    key = sort_key(ecosystem)
    affected = False
    for kind, v in sorted(events, key=at):
        if kind == "introduced":
            if v == "0" or compare(ecosystem, version, v) >= 0:
                affected = True
        elif kind == "fixed":
            if compare(ecosystem, version, v) >= 0:
                affected = False
        elif kind == "last_affected" and compare(ecosystem, version, v) > 0:
            affected = False
    return affected


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    aliases: tuple[str, ...]
    severity: str
    score: float | None
    summary: str
    package: Package
    fixed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "aliases": list(self.aliases),
            "severity": self.severity,
            "score": self.score,
            "summary": self.summary,
            "package": self.package.component,
            "source": self.package.name if self.package.name != self.package.component else None,
            "version": self.package.version,
            "ecosystem": self.package.ecosystem,
            "purl": self.package.purl,
            "fixed": list(self.fixed),
        }


def _ecosystems(index: dict[str, Any], pkg: Package) -> list[str]:
    """The index's ecosystems that speak about `pkg`: its release, and the bare family."""
    names = index["packages"]
    if family(pkg.ecosystem) == "Ubuntu" and ":" in pkg.ecosystem:
        # Ubuntu:22.04:LTS, Ubuntu:22.04 (not Ubuntu:Pro:...: ESM packages are versioned
        # apart), and a bare Ubuntu.
        release = pkg.ecosystem.split(":")[1]
        return [e for e in names if e == "Ubuntu" or e.split(":")[:2] == ["Ubuntu", release]]
    if ":" in pkg.ecosystem or pkg.ecosystem == "PyPI":
        return [e for e in dict.fromkeys((pkg.ecosystem, family(pkg.ecosystem))) if e in names]
    # No release in the purl (Alpine's never has one): every release of the family.
    return [e for e in names if family(e) == pkg.ecosystem and not e.startswith("Ubuntu:Pro:")]


@dataclass
class MatchResult:
    findings: list[Finding]
    packages: int
    unordered: int  # versions or events the ecosystem's rule could not order


def match(index: dict[str, Any], packages: list[Package]) -> MatchResult:
    findings: dict[tuple[str, str, str], Finding] = {}
    unordered = 0
    for pkg in packages:
        for eco in _ecosystems(index, pkg):
            for ident, ranges, versions in index["packages"][eco].get(pkg.name, ()):
                try:
                    hit = pkg.version in versions or any(
                        in_range(eco, pkg.version, events) for events in ranges
                    )
                except InvalidVersion:
                    unordered += 1
                    continue
                if not hit:
                    continue
                advisory = index["advisories"][ident]
                fixed = sorted({v for events in ranges for kind, v in events if kind == "fixed"})
                findings[(ident, pkg.component, pkg.version)] = Finding(
                    ident,
                    tuple(advisory["aliases"]),
                    advisory["severity"],
                    advisory["score"],
                    advisory["summary"],
                    pkg,
                    tuple(fixed),
                )
    ordered = sorted(
        findings.values(), key=lambda f: (-RANK[f.severity], f.id, f.package.component)
    )
    return MatchResult(ordered, len(packages), unordered)
