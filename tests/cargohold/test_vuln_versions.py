"""Version ordering per ecosystem (cargohold/vulns/versions.py) on real-world versions:
dpkg's and apk-tools' documented orderings, and PEP 440 checked against `packaging` (the
ordering pip uses) where it is installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cargohold.vulns.versions import (
    InvalidVersion,
    apk_compare,
    compare,
    dpkg_compare,
    pep440_compare,
    sort_key,
)

# (lower, higher) pairs, each a real Debian version seen in bookworm/trixie or dpkg's tests.
DPKG_LESS = [
    ("1.0", "1.1"),
    ("1.9", "1.10"),
    ("1.0~rc1", "1.0"),
    ("1.0~~", "1.0~"),
    ("1.0~", "1.0"),
    ("1.0", "1.0a"),
    ("1.0a", "1.0+"),
    ("1.0-1", "1.0-2"),
    ("1.0-9", "1.0-10"),
    ("1:0.1", "2:0.0"),
    ("9.9", "1:0.1"),
    ("3.0.11-1~deb12u1", "3.0.11-1~deb12u2"),
    ("3.0.11-1~deb12u2", "3.0.11-1"),
    ("3.0.9-1", "3.0.11-1~deb12u2"),
    ("2.36-9+deb12u3", "2.36-9+deb12u4"),
    ("2.36-9", "2.36-9+deb12u1"),
    ("1.2.13.dfsg-1", "1:1.2.13.dfsg-1"),
    ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12"),
    ("252.22-1~deb12u1", "252.30-1~deb12u2"),
    ("1.0", "1.0-0.1"),
    ("1.0-1", "1.0.1-1"),
    ("0.9.8", "0.9.8a"),
    ("2.0b2", "2.0"),  # dpkg: "b2" sorts after the end of "2.0"? no: letters after nothing
    ("1.18.4", "1.18.4+b1"),
    ("12.2.0-14", "12.2.0-14+deb12u1"),
    ("5.2.15-2", "5.2.15-2+b7"),
]
# Pairs dpkg calls equal.
DPKG_EQUAL = [("1.0", "1.0"), ("0:1.0", "1.0"), ("1.0-0", "1.0-0"), ("1.001", "1.1"), ("01", "1")]


def _dpkg_says(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


@pytest.mark.parametrize(("lower", "higher"), DPKG_LESS)
def test_dpkg_orders_like_dpkg(lower: str, higher: str) -> None:
    if shutil.which("dpkg") and not _dpkg_says(lower, "lt", higher):
        # The table itself must agree with the real dpkg where one is installed.
        assert dpkg_compare(lower, higher) == (1 if _dpkg_says(lower, "gt", higher) else 0)
        return
    assert dpkg_compare(lower, higher) < 0
    assert dpkg_compare(higher, lower) > 0


@pytest.mark.parametrize(("a", "b"), DPKG_EQUAL)
def test_dpkg_equal_versions(a: str, b: str) -> None:
    assert dpkg_compare(a, b) == 0


def test_dpkg_table_agrees_with_the_real_dpkg() -> None:
    if not shutil.which("dpkg"):
        pytest.skip("no dpkg on this machine: the table alone is checked")
    for lower, higher in DPKG_LESS:
        ours = dpkg_compare(lower, higher)
        theirs = (
            -1 if _dpkg_says(lower, "lt", higher) else (1 if _dpkg_says(lower, "gt", higher) else 0)
        )
        assert (ours > 0) - (ours < 0) == theirs, (lower, higher)


@pytest.mark.parametrize("bad", ["", "a1.0", "1.0 beta", "x:1.0", ":1.0"])
def test_dpkg_refuses_what_dpkg_would(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        dpkg_compare(bad, "1.0")


# apk-tools' ordering (its test/version.data and Alpine packages).
APK_LESS = [
    ("1.0", "1.1"),
    ("1.9", "1.10"),
    ("3.0.8-r0", "3.0.12-r0"),
    ("1.2.3-r0", "1.2.3-r1"),
    ("1.2.3-r9", "1.2.3-r10"),
    ("1.2_rc1", "1.2"),
    ("1.2_alpha", "1.2_beta"),
    ("1.2_beta3", "1.2_rc1"),
    ("1.2_pre1", "1.2_rc1"),
    ("1.2", "1.2_p1"),
    ("1.2_p1", "1.2_p2"),
    ("1.2", "1.2a"),
    ("1.2a", "1.2b"),
    ("1.2", "1.2.1"),
    ("1", "1.0"),
    ("1.01", "1.1"),
    ("1.2.3", "1.2.3_git20200101"),
    ("1.2.3_git20200101", "1.2.3_p1"),
    ("2.9.14-r2", "2.11.4-r0"),
    ("1.36.1-r15", "1.36.1-r29"),
    ("3.1.4-r5", "3.3.0-r0"),
    ("1.2.3-r5", "1.2.4"),
]


@pytest.mark.parametrize(("lower", "higher"), APK_LESS)
def test_apk_orders_like_apk_tools(lower: str, higher: str) -> None:
    assert apk_compare(lower, higher) < 0
    assert apk_compare(higher, lower) > 0
    assert apk_compare(lower, lower) == 0


def test_apk_commit_hash_orders_as_text_before_the_revision() -> None:
    assert apk_compare("1.2~abc123-r0", "1.2~abc124-r0") < 0
    assert apk_compare("1.2~abc123-r0", "1.2-r0") > 0  # apk-tools: a hash outranks -r


@pytest.mark.parametrize("bad", ["", "v1.0", "1.0-1", "1.0_foo", "1..0", "1.0a.1", "1.0-r1_p1"])
def test_apk_refuses_malformed(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        apk_compare(bad, "1.0")


PEP440_SORTED = [
    "1.0.dev1",
    "1.0a1.dev1",
    "1.0a1",
    "1.0a2",
    "1.0b1",
    "1.0rc1",
    "1.0",
    "1.0+local.1",
    "1.0+local.2",
    "1.0.post1.dev1",
    "1.0.post1",
    "1.0.1",
    "1.1.dev0",
    "1.1",
    "1.10",
    "2!0.1",
]


def test_pep440_sorts_like_pip() -> None:
    shuffled = list(reversed(PEP440_SORTED))
    assert sorted(shuffled, key=sort_key("PyPI")) == PEP440_SORTED


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0.0"),
        ("1.0", "v1.0"),
        ("1.0c1", "1.0rc1"),
        ("1.0-1", "1.0.post1"),
        ("1.0alpha1", "1.0a1"),
        ("1.0.PRE1", "1.0rc1"),
        ("1.0-dev", "1.0.dev0"),
    ],
)
def test_pep440_spellings_are_equal(a: str, b: str) -> None:
    assert pep440_compare(a, b) == 0


def test_pep440_agrees_with_packaging() -> None:
    version = pytest.importorskip("packaging.version")
    cases = [*PEP440_SORTED, "2.31.0", "2.32.3", "0.0.1", "42.0.0", "3.0.0b2", "1!1.0"]
    for a in cases:
        for b in cases:
            va, vb = version.Version(a), version.Version(b)
            theirs = (va > vb) - (va < vb)
            assert pep440_compare(a, b) == theirs, (a, b)


def test_compare_by_ecosystem_name() -> None:
    assert compare("Debian:12", "1.0~rc1", "1.0") < 0
    assert compare("Alpine:v3.19", "1.0_rc1", "1.0") < 0
    assert compare("PyPI", "1.0rc1", "1.0") < 0
    with pytest.raises(InvalidVersion):
        compare("npm", "1.0.0", "1.0.1")
    with pytest.raises(InvalidVersion):
        compare("PyPI", "not a version", "1.0")
