"""OSV parsing into the compact index (cargohold/vulns/osv.py), matching SBOM components
against it (cargohold/vulns/match.py) and the report's policy helpers
(cargohold/vulns/report.py)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cargohold.vulns.match import Package, in_range, match, package_of, sbom_packages
from cargohold.vulns.osv import (
    OsvError,
    build_index,
    cvss3_score,
    decode_index,
    encode_index,
    severity,
)
from cargohold.vulns.report import blocking, build_report, describe

# Shaped as Debian's OSV export (DSA/DLA/CVE ids, source package names, Debian:12).
DEBIAN_ZLIB = {
    "id": "CVE-2023-45853",
    "modified": "2024-01-01T00:00:00Z",
    "summary": "zlib MiniZip integer overflow",
    "affected": [
        {
            "package": {"ecosystem": "Debian:12", "name": "zlib"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1+deb12u1"}],
                }
            ],
        },
        {
            "package": {"ecosystem": "Debian:11", "name": "zlib"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
        },
    ],
    "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
}
GHSA_REQUESTS = {
    "id": "GHSA-j8r2-6x86-q33q",
    "aliases": ["CVE-2023-32681"],
    "summary": "Unintended leak of Proxy-Authorization header in requests",
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "Requests"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.3.0"}, {"fixed": "2.31.0"}]},
                {
                    "type": "GIT",
                    "repo": "https://github.com/psf/requests",
                    "events": [{"introduced": "0"}],
                },
            ],
            "versions": ["2.3.0", "2.30.0"],
        }
    ],
    "database_specific": {"severity": "MODERATE"},
}
ALPINE_OPENSSL = {
    "id": "ALPINE-CVE-2024-0727",
    "aliases": ["CVE-2024-0727"],
    "affected": [
        {
            "package": {"ecosystem": "Alpine:v3.19", "name": "openssl"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.4-r5"}]}
            ],
        }
    ],
}
WITHDRAWN = {"id": "OSV-X", "withdrawn": "2024-01-01T00:00:00Z", "affected": []}
NPM_ONLY = {
    "id": "GHSA-npm",
    "affected": [
        {
            "package": {"ecosystem": "npm", "name": "left-pad"},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}],
        }
    ],
}


def _zip(path: Path, docs: list[dict[str, Any]]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for doc in docs:
            z.writestr(f"{doc['id']}.json", json.dumps(doc))
        z.writestr("broken.json", "{not json")
    return path


def test_a_zip_and_a_directory_make_the_same_index(tmp_path: Path) -> None:
    docs = [DEBIAN_ZLIB, GHSA_REQUESTS, ALPINE_OPENSSL, WITHDRAWN, NPM_ONLY]
    from_zip = build_index([_zip(tmp_path / "all.zip", docs)])
    folder = tmp_path / "osv" / "nested"
    folder.mkdir(parents=True)
    for doc in docs:
        (folder / f"{doc['id']}.json").write_text(json.dumps(doc))
    (folder / "broken.json").write_text("{not json")
    from_dir = build_index([tmp_path / "osv"])
    assert from_zip == from_dir
    assert from_zip["stats"] == {
        "advisories": 3,
        "skipped": 1,
        "withdrawn": 1,
        "ecosystems": {"Alpine:v3.19": 1, "Debian:11": 1, "Debian:12": 1, "PyPI": 1},
    }
    # PyPI names are normalised; GIT ranges dropped; the explicit versions kept.
    (entry,) = from_zip["packages"]["PyPI"]["requests"]
    assert entry == [
        "GHSA-j8r2-6x86-q33q",
        [[["introduced", "2.3.0"], ["fixed", "2.31.0"]]],
        ["2.3.0", "2.30.0"],
    ]
    assert decode_index(encode_index(from_zip)) == from_zip
    assert encode_index(from_zip) == encode_index(from_dir)  # one index, one digest


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OsvError, match="no usable OSV advisory"):
        build_index([_zip(tmp_path / "npm.zip", [NPM_ONLY, WITHDRAWN])])
    with pytest.raises(OsvError, match="no such file"):
        build_index([tmp_path / "missing.zip"])


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
        ("CVSS:3.0/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N", 5.5),
        ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
        ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.6),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
    ],
)
def test_cvss3_base_scores_match_nvd(vector: str, score: float) -> None:
    assert cvss3_score(vector) == score


def test_severity_takes_the_highest_stated() -> None:
    assert severity(DEBIAN_ZLIB) == ("critical", 9.8)
    assert severity(GHSA_REQUESTS) == ("medium", None)
    assert severity(ALPINE_OPENSSL) == ("unknown", None)
    assert cvss3_score("CVSS:4.0/AV:N/AC:L") is None
    both = {
        **GHSA_REQUESTS,
        "severity": [{"type": "CVSS_V3", "score": DEBIAN_ZLIB["severity"][0]["score"]}],
    }
    assert severity(both) == ("critical", 9.8)


def _component(purl: str, version: str, **props: str) -> dict[str, Any]:
    name = purl.split("/")[-1].split("@")[0]
    return {
        "type": "library",
        "name": name,
        "version": version,
        "purl": purl,
        "properties": [{"name": k, "value": v} for k, v in props.items()],
    }


SBOM = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "components": [
        _component(
            "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12",
            "1:1.2.13.dfsg-1",
            **{"cargohold:source": "zlib"},
        ),
        _component(
            "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12",
            "3.0.11-1~deb12u2",
        ),
        _component(
            "pkg:apk/alpine/libcrypto3@3.1.4-r2?arch=x86_64",
            "3.1.4-r2",
            **{"cargohold:source": "openssl"},
        ),
        _component("pkg:pypi/requests@2.30.0", "2.30.0"),
        _component("pkg:npm/left-pad@1.0.0", "1.0.0"),
        {"type": "library", "name": "no-purl", "version": "1"},
    ],
}


def test_sbom_components_become_packages_as_advisories_name_them() -> None:
    pkgs = sbom_packages(SBOM)
    assert [(p.ecosystem, p.name, p.version, p.component) for p in pkgs] == [
        ("Alpine", "openssl", "3.1.4-r2", "libcrypto3"),
        ("Debian:12", "libssl3", "3.0.11-1~deb12u2", "libssl3"),
        ("Debian:12", "zlib", "1:1.2.13.dfsg-1", "zlib1g"),
        ("PyPI", "requests", "2.30.0", "requests"),
    ]
    binnmu = _component(
        "pkg:deb/debian/libfoo1@1.0-2%2Bb1?distro=debian-12",
        "1.0-2+b1",
        **{"cargohold:source": "foo", "cargohold:source-version": "1.0-2"},
    )
    assert package_of(binnmu) == Package("Debian:12", "foo", "1.0-2", "libfoo1", binnmu["purl"])
    dpkg_style = _component(
        "pkg:deb/debian/libbar@2.0-1+b2", "2.0-1+b2", **{"cargohold:source": "bar (2.0-1)"}
    )
    pkg = package_of(dpkg_style)
    assert pkg is not None and (pkg.ecosystem, pkg.name, pkg.version) == ("Debian", "bar", "2.0-1")


def test_match_finds_what_is_affected_and_not_what_is_fixed(tmp_path: Path) -> None:
    index = build_index([_zip(tmp_path / "db.zip", [DEBIAN_ZLIB, GHSA_REQUESTS, ALPINE_OPENSSL])])
    result = match(index, sbom_packages(SBOM))
    got = [(f.id, f.package.component, f.severity, f.fixed) for f in result.findings]
    assert got == [
        ("CVE-2023-45853", "zlib1g", "critical", ("1:1.2.13.dfsg-1+deb12u1",)),
        ("GHSA-j8r2-6x86-q33q", "requests", "medium", ("2.31.0",)),
        ("ALPINE-CVE-2024-0727", "libcrypto3", "unknown", ("3.1.4-r5",)),
    ]
    # The fixed versions are not affected.
    fixed = {
        "components": [
            _component(
                "pkg:deb/debian/zlib1g@x?distro=debian-12",
                "1:1.2.13.dfsg-1+deb12u1",
                **{"cargohold:source": "zlib"},
            ),
            _component("pkg:pypi/requests@2.31.0", "2.31.0"),
            _component(
                "pkg:apk/alpine/libcrypto3@3.1.4-r5", "3.1.4-r5", **{"cargohold:source": "openssl"}
            ),
            _component("pkg:pypi/requests@2.2.0", "2.2.0"),  # before introduced
        ]
    }
    assert match(index, sbom_packages(fixed)).findings == []
    # Debian 11 has no fix yet; a Debian 11 package is matched against Debian:11 only.
    bullseye = {
        "components": [
            _component(
                "pkg:deb/debian/zlib1g@x?distro=debian-11",
                "1:1.2.11.dfsg-2+deb11u2",
                **{"cargohold:source": "zlib"},
            )
        ]
    }
    assert [f.id for f in match(index, sbom_packages(bullseye)).findings] == ["CVE-2023-45853"]


@pytest.mark.parametrize(
    ("version", "events", "affected"),
    [
        ("1.0", [["introduced", "0"], ["fixed", "1.1"]], True),
        ("1.1", [["introduced", "0"], ["fixed", "1.1"]], False),
        ("1.5", [["introduced", "1.2"], ["last_affected", "1.5"]], True),
        ("1.6", [["introduced", "1.2"], ["last_affected", "1.5"]], False),
        ("1.1", [["introduced", "1.2"], ["last_affected", "1.5"]], False),
        # Two intervals, events out of order.
        (
            "2.5",
            [["fixed", "3.0"], ["introduced", "2.0"], ["fixed", "1.5"], ["introduced", "1.0"]],
            True,
        ),
        (
            "1.7",
            [["fixed", "3.0"], ["introduced", "2.0"], ["fixed", "1.5"], ["introduced", "1.0"]],
            False,
        ),
        ("9.0", [["introduced", "0"]], True),
    ],
)
def test_osv_range_semantics(version: str, events: list[list[str]], affected: bool) -> None:
    assert in_range("PyPI", version, events) is affected


def test_an_unorderable_version_is_counted_not_guessed(tmp_path: Path) -> None:
    index = build_index([_zip(tmp_path / "db.zip", [GHSA_REQUESTS])])
    weird = {"components": [_component("pkg:pypi/requests@not-a-version", "not-a-version")]}
    result = match(index, sbom_packages(weird))
    assert (result.findings, result.unordered) == ([], 1)


def test_blocking_honours_the_threshold_and_the_allowlist(tmp_path: Path) -> None:
    index = build_index([_zip(tmp_path / "db.zip", [DEBIAN_ZLIB, GHSA_REQUESTS, ALPINE_OPENSSL])])
    db = {"digest": "sha256:" + "0" * 64, "generation": 1, "imported_at": 0.0, "source": "t"}
    doc = build_report(
        "r", "sha256:" + "1" * 64, ["sha256:" + "2" * 64], db, match(index, sbom_packages(SBOM))
    )
    assert doc["summary"] == {"critical": 1, "high": 0, "medium": 1, "low": 0, "unknown": 1}
    ids = lambda found: [f["id"] for f in found]  # noqa: E731
    assert ids(blocking(doc, "none", frozenset())) == []
    assert ids(blocking(doc, "critical", frozenset())) == ["CVE-2023-45853"]
    assert ids(blocking(doc, "medium", frozenset())) == ["CVE-2023-45853", "GHSA-j8r2-6x86-q33q"]
    assert len(blocking(doc, "unknown", frozenset())) == 3
    # An alias (the CVE id) allowlists a GHSA advisory as well as its own id does.
    assert ids(blocking(doc, "medium", frozenset({"CVE-2023-32681"}))) == ["CVE-2023-45853"]
    assert describe(blocking(doc, "medium", frozenset())) == (
        "CVE-2023-45853 (critical, zlib1g 1:1.2.13.dfsg-1), "
        "CVE-2023-32681 (medium, requests 2.30.0)"
    )


def test_ubuntu_packages_meet_ubuntu_advisories_only() -> None:
    ubuntu_adv = {
        "id": "UBUNTU-CVE-2099-5",
        "aliases": ["CVE-2099-5"],
        "affected": [
            {
                "package": {"ecosystem": "Ubuntu:22.04:LTS", "name": "zlib"},
                "ranges": [
                    {
                        "type": "ECOSYSTEM",
                        "events": [{"introduced": "0"}, {"fixed": "1:1.2.11.dfsg-2ubuntu9.2"}],
                    }
                ],
            },
            {
                "package": {"ecosystem": "Ubuntu:Pro:22.04:LTS", "name": "zlib"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
            },
        ],
    }
    builder_docs = [ubuntu_adv, DEBIAN_ZLIB]
    from cargohold.vulns.osv import IndexBuilder

    builder = IndexBuilder()
    for doc in builder_docs:
        builder.add(doc)
    index = builder.index()
    jammy = _component(
        "pkg:deb/ubuntu/zlib1g@1%3A1.2.11.dfsg-2ubuntu9?arch=amd64&distro=ubuntu-22.04",
        "1:1.2.11.dfsg-2ubuntu9",
        **{"cargohold:source": "zlib"},
    )
    found = match(index, sbom_packages({"components": [jammy]})).findings
    assert [(f.id, f.package.ecosystem, f.fixed) for f in found] == [
        ("UBUNTU-CVE-2099-5", "Ubuntu:22.04", ("1:1.2.11.dfsg-2ubuntu9.2",))
    ]
    fixed = {**jammy, "version": "1:1.2.11.dfsg-2ubuntu9.2"}
    assert match(index, sbom_packages({"components": [fixed]})).findings == []
    # Another dpkg distribution is not matched against Debian's or Ubuntu's advisories.
    assert package_of(_component("pkg:deb/raspbian/zlib1g@1.0", "1.0")) is None
