"""The shared quota helpers (cargohold/quotas.py): sizes as operators write them, the
namespace rule, and the refusal's message."""

from __future__ import annotations

import pytest

from cargohold.errors import ConfigError
from cargohold.quotas import exceeded, in_namespace, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("123", 123),
        ("500MB", 500_000_000),
        ("10GiB", 10 * 1024**3),
        ("1.5G", 1_500_000_000),
        ("2 MiB", 2 * 1024**2),
        ("1k", 1000),
        ("0", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "-1", "5XB", "1..5G"])
def test_parse_size_refuses_garbage(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_a_namespace_holds_its_name_and_what_is_under_it() -> None:
    assert in_namespace("team", "team") and in_namespace("team/a/b", "team")
    assert not in_namespace("teamx/a", "team") and not in_namespace("te", "team")


def test_the_refusal_names_namespace_usage_and_limit() -> None:
    err = exceeded("team", 5 * 1024**2, 10 * 1024**2, 6 * 1024**2)
    assert (err.code, err.status) == ("DENIED", 403)
    assert err.message == (
        "quota exceeded for namespace team: 5.0 MiB used of 10.0 MiB, this push needs 6.0 MiB more"
    )
