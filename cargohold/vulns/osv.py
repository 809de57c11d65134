"""OSV advisories (https://ossf.github.io/osv-schema/) into the compact index the registry
matches against.

`read_path` accepts what OSV publishes per ecosystem (`Debian.zip`, `Alpine.zip`,
`PyPI.zip`: one JSON advisory per member), a directory of such JSON files (searched
recursively), or one JSON file. `build_index` keeps, of each advisory, only what matching
needs: its id, aliases (CVE ids), severity, summary, and per affected package of an
ecosystem with a version ordering (cargohold/vulns/versions.py) its ECOSYSTEM ranges
(introduced / fixed / last_affected events) and explicit `versions` list. Advisories that
are withdrawn are left out; an advisory that fails to parse is counted and skipped, never
fatal (one bad file in a 60 000-file zip must not stop an import).

Severity, highest wins: `database_specific.severity` (GHSA's CRITICAL/HIGH/MODERATE/LOW,
or a word), `affected[].ecosystem_specific.severity`, then a CVSS v3 vector in
`severity[]` scored with the v3.1 base formula. None of them: `unknown`.

The index (format 2) in memory (stored as gzip JSON lines: `encode_index`)::

    {"format": 2,
     "advisories": {ID: {"aliases": [...], "severity": "high", "score": 7.5 | null,
                         "summary": "..."}},
     "packages": {ECOSYSTEM: {PACKAGE: [[ID, RANGES, VERSIONS], ...]}},
     "stats": {"advisories": N, "skipped": N, "ecosystems": {ECOSYSTEM: N}}}

RANGES is a list of event lists, each event `["introduced"|"fixed"|"last_affected", V]`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cargohold.vulns.versions import SUPPORTED, family

FORMAT = 2
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
RANK = {name: len(SEVERITIES) - i for i, name in enumerate(SEVERITIES)}  # critical 5 .. 1
_WORDS = {
    "critical": "critical",
    "high": "high",
    "important": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "negligible": "low",
    "unimportant": "low",
}
_EVENTS = ("introduced", "fixed", "last_affected")
MAX_ADVISORY_BYTES = 4 * 1024 * 1024


class OsvError(ValueError):
    """The path holds nothing OSV can be read from."""


# -- reading -------------------------------------------------------------------------------
def read_path(path: Path) -> Iterator[bytes]:
    """The raw JSON documents under `path` (a zip, a directory or one file)."""
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            if file.is_file():
                yield file.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".json") and info.file_size <= MAX_ADVISORY_BYTES:
                    yield archive.read(info)
    elif path.is_file():
        yield path.read_bytes()
    else:
        raise OsvError(f"{path}: no such file or directory")


# -- severity ------------------------------------------------------------------------------
_CVSS3_WEIGHTS = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def _roundup(x: float) -> float:
    """CVSS v3.1 Roundup: the smallest one-decimal number >= x (float-safe)."""
    i = round(x * 100000)
    return i / 100000.0 if i % 10000 == 0 else (math.floor(i / 10000) + 1) / 10.0


def cvss3_score(vector: str) -> float | None:
    """The CVSS v3.x base score of `vector` (`CVSS:3.1/AV:N/AC:L/...`); None if not one."""
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3"):
        return None
    metrics = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    try:
        scope_changed = metrics["S"] == "C"
        pr = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}
        w = {k: _CVSS3_WEIGHTS[k][metrics[k]] for k in _CVSS3_WEIGHTS}
        privileges = pr[metrics["PR"]]
    except KeyError:
        return None
    iss = 1 - (1 - w["C"]) * (1 - w["I"]) * (1 - w["A"])
    if scope_changed:
        impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15
    else:
        impact = 6.42 * iss
    exploitability = 8.22 * w["AV"] * w["AC"] * privileges * w["UI"]
    if impact <= 0:
        return 0.0
    if scope_changed:
        return _roundup(min(1.08 * (impact + exploitability), 10))
    return _roundup(min(impact + exploitability, 10))


def severity_of_score(score: float) -> str:
    """CVSS qualitative rating: 9.0+ critical, 7.0+ high, 4.0+ medium, 0.1+ low."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    return "low" if score > 0 else "unknown"


def _word(value: Any) -> str | None:
    return _WORDS.get(value.strip().lower()) if isinstance(value, str) else None


def severity(doc: dict[str, Any]) -> tuple[str, float | None]:
    """(severity, CVSS score or None) of one advisory: the highest it states."""
    found: list[str] = []
    score: float | None = None
    specific = doc.get("database_specific")
    if isinstance(specific, dict) and (w := _word(specific.get("severity"))):
        found.append(w)
    for affected in _list(doc.get("affected")):
        for key in ("ecosystem_specific", "database_specific"):
            extra = affected.get(key) if isinstance(affected, dict) else None
            if isinstance(extra, dict) and (w := _word(extra.get("severity"))):
                found.append(w)
    for entry in _list(doc.get("severity")):
        if isinstance(entry, dict) and isinstance(entry.get("score"), str):
            s = cvss3_score(entry["score"])
            if s is not None:
                score = s if score is None else max(score, s)
    if score is not None:
        found.append(severity_of_score(score))
    if not found:
        return "unknown", None
    return max(found, key=lambda n: RANK[n]), score


# -- the index -----------------------------------------------------------------------------
def pep503(name: str) -> str:
    """A PyPI project name normalised (PEP 503): how the index and matching key it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ranges(affected: dict[str, Any]) -> list[list[list[str]]]:
    out = []
    for r in _list(affected.get("ranges")):
        if not isinstance(r, dict) or r.get("type") != "ECOSYSTEM":
            continue  # GIT (commit) ranges say nothing about package versions
        events = []
        for event in _list(r.get("events")):
            if isinstance(event, dict):
                events += [
                    [kind, str(event[kind])]
                    for kind in _EVENTS
                    if isinstance(event.get(kind), str | int)
                ]
        if events:
            out.append(events)
    return out


class IndexBuilder:
    """Accumulates advisories (`add`) into the compact index (`index`)."""

    def __init__(self) -> None:
        self.advisories: dict[str, dict[str, Any]] = {}
        self.packages: dict[str, dict[str, list[list[Any]]]] = {}
        self.skipped = 0
        self.withdrawn = 0

    def add_raw(self, raw: bytes) -> None:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            self.skipped += 1
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            self.skipped += 1
            return
        self.add(doc)

    def add(self, doc: dict[str, Any]) -> None:
        if doc.get("withdrawn"):
            self.withdrawn += 1
            return
        ident = doc["id"]
        entries = []
        for affected in _list(doc.get("affected")):
            pkg = affected.get("package") if isinstance(affected, dict) else None
            if not isinstance(pkg, dict):
                continue
            eco, name = pkg.get("ecosystem"), pkg.get("name")
            if not isinstance(eco, str) or not isinstance(name, str):
                continue
            if family(eco) not in SUPPORTED:
                continue
            if family(eco) == "PyPI":
                name = pep503(name)
            ranges = _ranges(affected)
            versions = [str(v) for v in _list(affected.get("versions")) if isinstance(v, str)]
            if ranges or versions:
                entries.append((eco, name, ranges, versions))
        if not entries:
            return  # nothing this registry can match
        sev, score = severity(doc)
        aliases = sorted({a for a in _list(doc.get("aliases")) if isinstance(a, str)})
        summary = doc.get("summary") or doc.get("details") or ""
        self.advisories[ident] = {
            "aliases": aliases,
            "severity": sev,
            "score": score,
            "summary": str(summary)[:300],
        }
        for eco, name, ranges, versions in entries:
            self.packages.setdefault(eco, {}).setdefault(name, []).append([ident, ranges, versions])

    def index(self) -> dict[str, Any]:
        packages = {
            eco: {name: sorted(entries) for name, entries in sorted(names.items())}
            for eco, names in sorted(self.packages.items())
        }
        return {
            "format": FORMAT,
            "advisories": dict(sorted(self.advisories.items())),
            "packages": packages,
            "stats": {
                "advisories": len(self.advisories),
                "skipped": self.skipped,
                "withdrawn": self.withdrawn,
                "ecosystems": {
                    eco: sum(len(e) for e in names.values()) for eco, names in packages.items()
                },
            },
        }


def build_index(paths: list[Path]) -> dict[str, Any]:
    """The compact index of every advisory under `paths`; OsvError if none is usable."""
    builder = IndexBuilder()
    for path in paths:
        for raw in read_path(path):
            builder.add_raw(raw)
    if not builder.advisories:
        raise OsvError(
            f"no usable OSV advisory in {', '.join(map(str, paths))} "
            f"({builder.skipped} unreadable, {builder.withdrawn} withdrawn; ecosystems "
            f"matched: {', '.join(sorted(SUPPORTED))})"
        )
    return builder.index()


def _line(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def encode_index(index: dict[str, Any]) -> bytes:
    """The stored form: gzip (mtime 0, so the same index has one digest) of JSON lines, a
    header then one line per advisory and per package (see `decode_index` for why)."""
    lines = [_line({"format": FORMAT, "stats": index["stats"]})]
    lines += [_line(["A", ident, adv]) for ident, adv in index["advisories"].items()]
    lines += [
        _line(["P", eco, name, entries])
        for eco, names in index["packages"].items()
        for name, entries in names.items()
    ]
    return gzip.compress(b"\n".join(lines), compresslevel=6, mtime=0)


def decode_index(data: bytes) -> dict[str, Any]:
    """The index as `IndexBuilder.index` made it. Parsed one small line at a time, so a
    gateway loading a large database in a worker thread never holds the GIL for long (one
    `json.loads` of the whole index would stall its event loop for as long)."""
    lines = gzip.decompress(data).split(b"\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise OsvError(f"not a vulnerability index of format {FORMAT}")
    advisories: dict[str, Any] = {}
    packages: dict[str, dict[str, Any]] = {}
    for line in lines[1:]:
        record = json.loads(line)
        if record[0] == "A":
            advisories[record[1]] = record[2]
        else:
            packages.setdefault(record[1], {})[record[2]] = record[3]
    return {
        "format": FORMAT,
        "advisories": advisories,
        "packages": packages,
        "stats": header["stats"],
    }
