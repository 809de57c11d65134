"""Signed upload ids: valid only for their repository, unforgeable, expiring."""

from __future__ import annotations

import pytest

from cargohold.errors import BlobUploadUnknown
from gateway.upload_ids import new_upload_id, parse_upload_id

SECRET = "s3cret"


def test_round_trip_and_url_safety() -> None:
    upload = new_upload_id(SECRET, "lib/app", now=1_000_000)
    assert all(c.isalnum() or c in "-_" for c in upload.value)
    parsed = parse_upload_id(SECRET, "lib/app", upload.value, 3600, now=1_000_100)
    assert parsed == upload
    assert new_upload_id(SECRET, "lib/app").value != new_upload_id(SECRET, "lib/app").value


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # tag altered
        lambda v: ("A" if v[0] != "A" else "B") + v[1:],  # header altered
        lambda v: v[:-4],  # truncated
        lambda v: v + "AAAA",  # extended
        lambda v: "",
        lambda v: v.replace(v[5], "/", 1),
        lambda v: "é" * len(v),
    ],
)
def test_forged_ids_are_unknown(mutate: object) -> None:
    value = new_upload_id(SECRET, "lib/app", now=1_000_000).value
    with pytest.raises(BlobUploadUnknown):
        parse_upload_id(SECRET, "lib/app", mutate(value), 3600, now=1_000_000)  # type: ignore[operator]


def test_bound_to_repository_and_secret() -> None:
    value = new_upload_id(SECRET, "lib/app", now=1_000_000).value
    with pytest.raises(BlobUploadUnknown):
        parse_upload_id(SECRET, "lib/other", value, 3600, now=1_000_000)
    with pytest.raises(BlobUploadUnknown):
        parse_upload_id("other-secret", "lib/app", value, 3600, now=1_000_000)


def test_expiry_and_clock_skew() -> None:
    value = new_upload_id(SECRET, "lib/app", now=1_000_000).value
    parse_upload_id(SECRET, "lib/app", value, 3600, now=1_003_600)
    with pytest.raises(BlobUploadUnknown):
        parse_upload_id(SECRET, "lib/app", value, 3600, now=1_003_601)
    parse_upload_id(SECRET, "lib/app", value, 3600, now=999_800)  # issuer's clock ahead
    with pytest.raises(BlobUploadUnknown):
        parse_upload_id(SECRET, "lib/app", value, 3600, now=990_000)
