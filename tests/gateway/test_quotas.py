"""Namespace quotas at the gateway (gateway/quotas.py, gateway/uploads.py), over fake nodes
with the real metadata state: an upload that cannot fit is refused with 403 DENIED naming
the namespace, its usage and limit, before its body is stored when its length is declared,
as it crosses when streamed, and a mount into the namespace is refused rather than turned
into an upload. The state's own checks are in tests/node/test_metadata_quotas.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, data_path

from cargohold.digests import digest_of

CHUNK = 64 * 1024  # the fake cluster's chunk size
LIMIT = 4 * CHUNK


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    # Refresh the gateway's view on every request: the tests change quotas between calls.
    async for value in data_path(3, lifecycle__quota_refresh_seconds=0.0):
        yield value


def set_quota(dp: DataPath, namespace: str, limit: int | None) -> None:
    dp.nodes.state.command("quota_set", {"namespace": namespace, "limit": limit})


def stored_chunks(dp: DataPath) -> int:
    return sum(len(n.chunks) for n in dp.nodes.nodes)


async def _body(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def refusal(resp, limit: int = LIMIT) -> str:  # type: ignore[no-untyped-def]
    assert resp.status == 403, await resp.text()
    [err] = (await resp.json())["errors"]
    assert err["code"] == "DENIED", err
    if err["detail"]:  # (the fake nodes' transport drops a node-side error's detail)
        assert err["detail"]["namespace"] == "team" and err["detail"]["limit"] == limit, err
    assert "quota exceeded for namespace team" in err["message"]
    return str(err["message"])


async def test_a_declared_body_over_the_quota_is_refused_before_it_is_stored(
    dp: DataPath,
) -> None:
    set_quota(dp, "team", LIMIT)
    data = os.urandom(LIMIT + 1)
    puts = stored_chunks(dp)
    # Monolithic POST with Content-Length.
    resp = await dp.http.post(f"/v2/team/app/blobs/uploads/?digest={digest_of(data)}", data=data)
    message = await refusal(resp)
    assert "0 B used of 256.0 KiB" in message
    # PATCH with Content-Length, then PUT with the body.
    resp = await dp.http.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    await refusal(await dp.http.patch(location, data=data))
    await refusal(await dp.http.put(f"{location}?digest={digest_of(data)}", data=data))
    assert stored_chunks(dp) == puts  # not a chunk of it was written
    ops = [op for op, _ in dp.nodes.state.commands]
    assert "upload_append" not in ops and "blob_commit" not in ops
    # Outside the namespace nothing is limited.
    resp = await dp.http.post(f"/v2/other/app/blobs/uploads/?digest={digest_of(data)}", data=data)
    assert resp.status == 201


async def test_a_streamed_upload_is_refused_at_the_patch_that_crosses(dp: DataPath) -> None:
    set_quota(dp, "team", LIMIT)
    resp = await dp.http.post("/v2/team/app/blobs/uploads/")
    location = resp.headers["Location"]
    first = os.urandom(3 * CHUNK)
    resp = await dp.http.patch(location, data=_body(first))  # chunked: no declared length
    assert resp.status == 202
    await refusal(await dp.http.patch(location, data=_body(os.urandom(2 * CHUNK))))
    # The session stays where it was; a body that fits completes it.
    last = os.urandom(CHUNK)
    digest = digest_of(first + last)
    resp = await dp.http.put(f"{location}?digest={digest}", data=_body(last))
    assert resp.status == 201, await resp.text()
    [quota] = dp.nodes.state.query("quota_list", {})
    assert quota["used"] == LIMIT
    # Full: even one more byte is refused, at its commit at the latest.
    await refusal(
        await dp.http.post(f"/v2/team/x/blobs/uploads/?digest={digest_of(b'x')}", data=b"x")
    )
    # The same blob into another repository of the namespace adds nothing: accepted.
    resp = await dp.http.post(
        f"/v2/team/copy/blobs/uploads/?mount={digest}&from=team/app", allow_redirects=False
    )
    assert resp.status == 201


async def test_a_mount_into_a_full_namespace_is_refused_not_turned_into_an_upload(
    dp: DataPath,
) -> None:
    data = os.urandom(2 * CHUNK)
    digest = digest_of(data)
    resp = await dp.http.post(f"/v2/other/src/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    set_quota(dp, "team", CHUNK)
    resp = await dp.http.post(f"/v2/team/app/blobs/uploads/?mount={digest}&from=other/src")
    message = await refusal(resp, CHUNK)
    assert "needs 128.0 KiB more" in message
    assert (await dp.http.head(f"/v2/team/app/blobs/{digest}")).status == 404


async def test_a_raised_quota_takes_effect_at_once_despite_the_cached_view() -> None:
    # The view is cached for an hour: a refusal still reads the quotas again first.
    async for dp in data_path(3, lifecycle__quota_refresh_seconds=3600.0):
        set_quota(dp, "team", CHUNK)
        data = os.urandom(2 * CHUNK)
        url = f"/v2/team/app/blobs/uploads/?digest={digest_of(data)}"
        await refusal(await dp.http.post(url, data=data), CHUNK)
        set_quota(dp, "team", LIMIT)
        resp = await dp.http.post(url, data=data)
        assert resp.status == 201, await resp.text()
        # Lowered again: the cached view says there is room, the state refuses the commit.
        set_quota(dp, "team", 2 * CHUNK)
        other = os.urandom(CHUNK)
        url = f"/v2/team/app/blobs/uploads/?digest={digest_of(other)}"
        await refusal(await dp.http.post(url, data=other), 2 * CHUNK)
