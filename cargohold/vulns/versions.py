"""Version ordering per ecosystem, as the package managers themselves order versions.

- `dpkg_compare`: Debian's `dpkg --compare-versions` (epoch, upstream, revision; `~` sorts
  before everything, even the end; letters before other characters; digit runs numerically),
  a port of dpkg's `verrevcmp`.
- `apk_compare`: Alpine's apk-tools ordering (digits, one letter, `_alpha`/`_beta`/`_pre`/
  `_rc` before the release and `_cvs`/`_svn`/`_git`/`_hg`/`_p` after it, `-rN` revisions,
  leading zeros of a later component sorting low), a port of apk-tools' version.c.
- `pep440_key`: a sort key for PEP 440 versions (epoch, release with trailing zeros
  ignored, dev < pre < release < post, local labels) as pip orders them.

`compare(ecosystem, a, b)` picks the rule from an OSV ecosystem name (`Debian:12`,
`Alpine:v3.19`, `PyPI`); a version the rule cannot parse raises `InvalidVersion`.
"""

from __future__ import annotations

import re
from functools import cmp_to_key
from typing import Any

_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class InvalidVersion(ValueError):
    """A version string the ecosystem's rule cannot order."""


# -- dpkg ----------------------------------------------------------------------------------
_DPKG_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~-]*|")  # dpkg warns on a non-digit start


def _dpkg_order(s: str, i: int) -> int:
    if i >= len(s):
        return 0
    c = s[i]
    if c in _DIGITS:
        return 0
    if c in _LETTERS:
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            ac, bc = _dpkg_order(a, i), _dpkg_order(b, j)
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i] in _DIGITS and j < len(b) and b[j] in _DIGITS:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i] in _DIGITS:
            return 1
        if j < len(b) and b[j] in _DIGITS:
            return -1
        if first_diff:
            return first_diff
    return 0


def _dpkg_split(version: str) -> tuple[int, str, str]:
    v = version.strip()
    if not v or any(c.isspace() for c in v):
        raise InvalidVersion(f"not a dpkg version: {version!r}")
    epoch = 0
    if ":" in v:
        head, v = v.split(":", 1)
        if not head.isdigit():
            raise InvalidVersion(f"bad epoch in dpkg version {version!r}")
        epoch = int(head)
    upstream, _, revision = v.rpartition("-") if "-" in v else (v, "", "")
    if not upstream or upstream[0] not in _DIGITS:
        raise InvalidVersion(f"dpkg version {version!r} must start with a digit")
    return epoch, upstream, revision


def dpkg_compare(a: str, b: str) -> int:
    """<0, 0 or >0 as dpkg orders versions `a` and `b`."""
    ea, ua, ra = _dpkg_split(a)
    eb, ub, rb = _dpkg_split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _sign(_verrevcmp(ua, ub)) or _sign(_verrevcmp(ra, rb))


# -- apk -----------------------------------------------------------------------------------
# Token kinds in the order apk-tools checks that they follow each other.
_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END = range(8)
# Suffix ranks: below _NONE a pre-release (sorts before the bare version), above it after.
_SUFFIX_RANK = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8}
_SUFFIX_RANK.update(hg=9, p=10)
_NONE = 5
_APK_TOKEN = re.compile(r"\.?[0-9]+|[a-z]|_[a-z]*|~[0-9a-f]+|-r[0-9]+|.")
_APK_FOLLOWS = {  # token kind -> the latest kind it may follow
    _DIGIT: _DIGIT,
    _LETTER: _DIGIT,
    _SUFFIX: _SUFFIX_NO,
    _SUFFIX_NO: _SUFFIX,
    _HASH: _SUFFIX_NO,
    _REVISION: _HASH,
}


def _apk_tokens(version: str) -> list[tuple[int, str]]:
    """(kind, text) per token, as apk-tools' `token_next` reads a version."""
    m = re.match(r"[0-9]+", version)
    if m is None:
        raise InvalidVersion(f"not an apk version: {version!r}")
    tokens = [(_INITIAL, m.group())]
    for piece in _APK_TOKEN.findall(version, m.end()):
        prev = tokens[-1][0]
        if piece[0] in ".0123456789":
            kind, text = (_SUFFIX_NO if prev == _SUFFIX else _DIGIT), piece.lstrip(".")
            if (piece[0] == "." and prev > _DIGIT) or not text:
                kind = -1
        elif piece[0] == "_":
            kind, text = _SUFFIX, piece[1:]
            if text not in _SUFFIX_RANK:
                kind = -1
        elif piece[0] == "~":
            kind, text = _HASH, piece[1:]
        elif piece.startswith("-r"):
            kind, text = _REVISION, piece[2:]
        elif "a" <= piece <= "z":
            kind, text = _LETTER, piece
        else:
            kind, text = -1, piece
        if kind < 0 or prev > _APK_FOLLOWS[kind] or (kind == _DIGIT and prev not in (0, 1)):
            raise InvalidVersion(f"not an apk version: {version!r}")
        tokens.append((kind, text))
    return tokens


def _apk_token_cmp(kind: int, a: str, b: str) -> int:
    if kind == _DIGIT and (a[0] == "0" or b[0] == "0"):
        return (a > b) - (a < b)  # a leading zero: string order (Gentoo's rule)
    if kind in (_INITIAL, _DIGIT, _SUFFIX_NO, _REVISION):
        x, y = int(a), int(b)
    elif kind == _SUFFIX:
        x, y = _SUFFIX_RANK[a], _SUFFIX_RANK[b]
    else:  # a letter, a commit hash
        return (a > b) - (a < b)
    return (x > y) - (x < y)


def apk_compare(a: str, b: str) -> int:
    """<0, 0 or >0 as `apk version -t` (apk-tools 2.14) orders versions `a` and `b`."""
    ta, tb = _apk_tokens(a), _apk_tokens(b)
    for (ka, va), (kb, vb) in zip(ta, tb, strict=False):
        if ka != kb:
            return _apk_tail(ka, va, kb, vb)
        r = _apk_token_cmp(ka, va, vb)
        if r:
            return r
    if len(ta) == len(tb):
        return 0
    # Equal so far: the longer one is newer, unless what follows is a pre-release suffix.
    if len(ta) > len(tb):
        return _apk_tail(ta[len(tb)][0], ta[len(tb)][1], _END, "")
    return _apk_tail(_END, "", tb[len(ta)][0], tb[len(ta)][1])


def _apk_tail(ka: int, va: str, kb: int, vb: str) -> int:
    if ka == _SUFFIX and _SUFFIX_RANK[va] < _NONE:
        return -1
    if kb == _SUFFIX and _SUFFIX_RANK[vb] < _NONE:
        return 1
    return (ka < kb) - (ka > kb)


# -- PEP 440 -------------------------------------------------------------------------------
_PEP440 = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>(?:-(?P<post_n1>[0-9]+))|(?:[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?))?
    (?P<dev>[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PRE_LABELS = {"a": "a", "alpha": "a", "b": "b", "beta": "b", "c": "rc", "rc": "rc"}
_PRE_LABELS.update(pre="rc", preview="rc")
_INF = float("inf")


def pep440_key(version: str) -> tuple[Any, ...]:
    """A key ordering PEP 440 versions as pip does; InvalidVersion if it is not one."""
    m = _PEP440.fullmatch(version.strip())
    if m is None:
        raise InvalidVersion(f"not a PEP 440 version: {version!r}")
    epoch = int(m["epoch"] or 0)
    release = [int(x) for x in m["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre = (_PRE_LABELS[m["pre_l"].lower()], int(m["pre_n"] or 0)) if m["pre_l"] else None
    post: int | None = None
    if m["post_n1"] is not None:
        post = int(m["post_n1"])
    elif m["post_l"]:
        post = int(m["post_n2"] or 0)
    dev = int(m["dev_n"] or 0) if m["dev_l"] else None
    # dev-only releases sort before pre-releases; a release without pre sorts after them.
    if pre is None and post is None and dev is not None:
        pre_key: tuple[Any, ...] = (-_INF,)
    elif pre is None:
        pre_key = (_INF,)
    else:
        pre_key = (0, *pre)
    post_key: tuple[Any, ...] = (-_INF,) if post is None else (0, post)
    dev_key: tuple[Any, ...] = (_INF,) if dev is None else (0, dev)
    local: tuple[Any, ...] = ()
    if m["local"]:
        local = tuple(
            (1, int(p), "") if p.isdigit() else (0, 0, p.lower())
            for p in re.split(r"[-_.]", m["local"])
        )
    return epoch, tuple(release), pre_key, post_key, dev_key, local


def pep440_compare(a: str, b: str) -> int:
    ka, kb = pep440_key(a), pep440_key(b)
    return (ka > kb) - (ka < kb)


# -- by ecosystem --------------------------------------------------------------------------
def family(ecosystem: str) -> str:
    """`Debian:12` -> `Debian`, `Alpine:v3.19` -> `Alpine`, `PyPI` -> `PyPI`."""
    return ecosystem.split(":", 1)[0]


_BY_FAMILY = {"Debian": dpkg_compare, "Ubuntu": dpkg_compare, "Alpine": apk_compare}
_BY_FAMILY["PyPI"] = pep440_compare
SUPPORTED = frozenset(_BY_FAMILY)


def compare(ecosystem: str, a: str, b: str) -> int:
    """<0, 0 or >0 by the ordering of `ecosystem` (an OSV ecosystem name)."""
    rule = _BY_FAMILY.get(family(ecosystem))
    if rule is None:
        raise InvalidVersion(f"no version ordering for ecosystem {ecosystem!r}")
    return rule(a, b)


def sort_key(ecosystem: str) -> Any:
    """A `sorted` key for versions of `ecosystem`."""
    return cmp_to_key(lambda a, b: compare(ecosystem, a, b))


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)
