"""Package databases -> package records: dpkg, apk, Python metadata, npm, os-release.

Each parser takes the bytes of one file of the merged image filesystem
(cargohold/sbom/layers.py keeps them) and returns `Package` records; a file that does not
parse is skipped rather than failing the scan (a half-written egg-info must not hide the
Debian packages). The purls are the contract of docs/supply-chain.md, built with
`packageurl-python` so that reserved characters are encoded the standard way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from packageurl import PackageURL

from cargohold.sbom.layers import wanted


@dataclass(frozen=True)
class Package:
    """One installed package: its purl and CycloneDX properties are derived from this."""

    kind: str  # "deb", "apk", "pypi", "npm"
    name: str
    version: str
    purl: str
    location: str
    properties: tuple[tuple[str, str], ...] = field(default=())


def _paragraphs(text: str) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status): `Field: value`, continuation lines indented."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t":
            if last:
                fields[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            fields[last] = value.strip()
    if fields:
        yield fields


def parse_os_release(data: bytes) -> dict[str, str]:
    """`/etc/os-release` -> {"ID": "debian", "VERSION_ID": "12", ...}."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


def parse_dpkg(data: bytes, location: str, os_release: dict[str, str]) -> list[Package]:
    """A dpkg status file (or one `status.d/` file of a distroless image): the installed
    packages. A stanza without `Status` (distroless) counts as installed."""
    distro_id = (os_release.get("ID") or "debian").lower()
    version_id = os_release.get("VERSION_ID")
    qualifiers_base = {"distro": f"{distro_id}-{version_id}"} if version_id else {}
    out = []
    for stanza in _paragraphs(data.decode("utf-8", "replace")):
        name, version = stanza.get("Package"), stanza.get("Version")
        if not name or not version:
            continue
        status = stanza.get("Status", "install ok installed").split()
        if not status or status[-1] != "installed":
            continue
        qualifiers = dict(qualifiers_base)
        arch = stanza.get("Architecture")
        if arch:
            qualifiers = {"arch": arch, **qualifiers}
        purl = PackageURL(
            type="deb", namespace=distro_id, name=name, version=version, qualifiers=qualifiers
        ).to_string()
        props: list[tuple[str, str]] = []
        source = stanza.get("Source", "")
        match = re.fullmatch(r"(\S+)(?:\s+\((\S+)\))?", source)
        if match:
            if match.group(1) != name:
                props.append(("cargohold:source", match.group(1)))
            if match.group(2) and match.group(2) != version:
                props.append(("cargohold:source-version", match.group(2)))
        out.append(Package("deb", name, version, purl, location, tuple(props)))
    return out


def parse_apk(data: bytes, location: str) -> list[Package]:
    """Alpine's `/lib/apk/db/installed`: stanzas of `K:value` lines."""
    out = []
    for block in re.split(r"\n\s*\n", data.decode("utf-8", "replace")):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":" and line[0] not in fields:
                fields[line[0]] = line[2:].strip()
        name, version = fields.get("P"), fields.get("V")
        if not name or not version:
            continue
        qualifiers = {"arch": fields["A"]} if fields.get("A") else {}
        purl = PackageURL(
            type="apk", namespace="alpine", name=name, version=version, qualifiers=qualifiers
        ).to_string()
        origin = fields.get("o")
        props = (("cargohold:source", origin),) if origin and origin != name else ()
        out.append(Package("apk", name, version, purl, location, props))
    return out


def parse_python(data: bytes, location: str) -> list[Package]:
    """A `*.dist-info/METADATA` or `*.egg-info/PKG-INFO` (email-header format)."""
    name = version = None
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            break  # the body (long description) starts
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "Name" and name is None:
            name = value.strip()
        elif key == "Version" and version is None:
            version = value.strip()
    if not name or not version:
        return []
    purl = PackageURL(type="pypi", name=name, version=version).to_string()
    return [Package("pypi", name, version, purl, location)]


def parse_npm(data: bytes, location: str) -> list[Package]:
    """`node_modules/<name>/package.json`: its `name` and `version`."""
    try:
        doc = json.loads(data)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return []
    scope, _, bare = name.rpartition("/")
    purl = PackageURL(type="npm", namespace=scope or None, name=bare, version=version)
    return [Package("npm", name, version, purl.to_string(), location)]


def os_release_of(files: dict[str, bytes]) -> dict[str, str]:
    """The image's os-release: `/etc/os-release`, else `/usr/lib/os-release` (the first is
    usually a symlink to the second, which the layer reader does not follow)."""
    for path in ("etc/os-release", "usr/lib/os-release"):
        if path in files:
            return parse_os_release(files[path])
    return {}


def packages_of(files: dict[str, bytes]) -> tuple[list[Package], dict[str, str]]:
    """Every package the merged files list, sorted by purl, and the os-release fields."""
    os_release = os_release_of(files)
    found: dict[str, Package] = {}
    for path, data in sorted(files.items()):
        kind = wanted(path)
        location = "/" + path
        if kind == "dpkg":
            packages = parse_dpkg(data, location, os_release)
        elif kind == "apk":
            packages = parse_apk(data, location)
        elif kind == "pypi":
            packages = parse_python(data, location)
        elif kind == "npm":
            packages = parse_npm(data, location)
        else:
            continue
        for package in packages:
            found.setdefault(package.purl, package)
    return sorted(found.values(), key=lambda p: p.purl), os_release
