"""Namespace storage quotas, the shared part (docs/operations.md "Quotas"): what a quota
namespace holds, the refusal clients see, and sizes as operators write them.

The state keeps the usage (node/metadata/quotas.py), gateways refuse early
(gateway/quotas.py), `cargohold admin namespaces quota` sets limits.
"""

from __future__ import annotations

import re

from cargohold.errors import ConfigError, QuotaExceeded

_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def in_namespace(repo: str, namespace: str) -> bool:
    """A namespace holds the repository of its own name and every one under it."""
    return repo == namespace or repo.startswith(namespace + "/")


def human(n: int) -> str:
    """A byte count for messages: `1.5 MiB` (bytes below 1 KiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def exceeded(namespace: str, used: int, limit: int, adding: int) -> QuotaExceeded:
    """The refusal of a push needing `adding` more bytes in `namespace` (403 DENIED)."""
    return QuotaExceeded(
        f"quota exceeded for namespace {namespace}: {human(used)} used of {human(limit)}, "
        f"this push needs {human(adding)} more",
        detail={"namespace": namespace, "used": used, "limit": limit, "adding": adding},
    )


def parse_size(text: str) -> int:
    """`500MB`, `10GiB`, `1.5G`, `123` (bytes) -> bytes; ConfigError when malformed."""
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ConfigError(f"size {text!r}: want a number with an optional unit (MB, GiB, ...)")
    number, unit, binary = match.groups()
    base = 1024 ** "bkmgt".index(unit.lower()) if binary and unit else _UNITS[unit.lower()]
    return int(float(number) * base)
