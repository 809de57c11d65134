"""gateway/body.py: the body budget, and the body idle timeout of uploads and manifests.

The memory bound itself, with real processes and hundreds of stalled uploads, is
tests/cluster/test_gateway_memory.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, data_path

from gateway import body
from gateway.body import BodyBudget

MiB = 1024 * 1024
# Every wait below is bounded by this: a hang guard, not a timing assertion.
_GUARD = 10.0


# -- BodyBudget -------------------------------------------------------------------------
async def test_budget_grants_in_order_and_waits_while_spent() -> None:
    budget = BodyBudget(100)
    await budget.acquire(60)
    second = asyncio.create_task(budget.acquire(60))
    third = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    assert not second.done() and not third.done()  # the third waits behind the second
    budget.release(60)
    await asyncio.wait_for(second, _GUARD)
    await asyncio.wait_for(third, _GUARD)
    assert budget.used == 70


async def test_a_body_larger_than_the_budget_gets_it_alone() -> None:
    budget = BodyBudget(100)
    await asyncio.wait_for(budget.acquire(500), _GUARD)
    waiting = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    budget.release(500)
    await asyncio.wait_for(waiting, _GUARD)
    assert budget.used == 1


async def test_a_cancelled_waiter_takes_nothing_and_blocks_nobody() -> None:
    budget = BodyBudget(100)
    await budget.acquire(90)
    big = asyncio.create_task(budget.acquire(50))
    small = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    big.cancel()
    await asyncio.wait_for(small, _GUARD)
    assert budget.used == 95


async def _trims(calls: list[int]) -> list[int]:
    """The trims seen once the (zero-delay) timer had its chance: a hang guard only."""
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.05)
    return calls


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(body, "release_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(body, "_TRIM_DELAY_SECONDS", 0.0)
    return calls


async def test_a_drained_budget_that_held_the_threshold_gives_memory_back(
    trims: list[int],
) -> None:
    budget = BodyBudget(0, trim_after=64 * MiB)
    await budget.acquire(64 * MiB)
    budget.release(64 * MiB)
    assert await _trims(trims) == [1]


async def test_a_burst_that_had_to_wait_gives_memory_back(trims: list[int]) -> None:
    budget = BodyBudget(100, trim_after=10**9)
    await budget.acquire(60)
    second = asyncio.create_task(budget.acquire(60))
    await asyncio.sleep(0)
    budget.release(60)
    await asyncio.wait_for(second, _GUARD)
    budget.release(60)
    assert await _trims(trims) == [1]


async def test_a_smaller_burst_keeps_its_memory_for_the_next(trims: list[int]) -> None:
    # 8 uploads of large blobs, each holding (4 writes in flight + 1) 4 MiB windows: 160 MiB
    # of a 256 MiB budget, nobody waited. Giving that memory back made the next burst fault
    # it all in again.
    budget = BodyBudget(256 * MiB, trim_after=256 * MiB)
    windows = 8 * 5
    for _ in range(windows):
        await budget.acquire(4 * MiB)
    for _ in range(windows):
        budget.release(4 * MiB)
    assert budget.used == 0
    assert budget._trim is None  # no trim was scheduled
    assert trims == []


# -- idle bodies ------------------------------------------------------------------------
@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for value in data_path(3, gateway__body_idle_timeout_seconds=0.5):
        yield value


async def _raw(dp: DataPath, head: str, payload: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send a request whose body stops short of what it declared; read the answer."""
    server = dp.http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode() + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _GUARD)
        status, *lines = raw.decode().strip().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        length = int(headers.get("content-length", "0"))
        data = await asyncio.wait_for(reader.readexactly(length), _GUARD)
        return status, headers, data
    finally:
        writer.close()


async def test_an_idle_patch_is_408_and_the_upload_resumes(dp: DataPath) -> None:
    repo = "lib/idle"
    start = await dp.http.post(f"/v2/{repo}/blobs/uploads/")
    location = start.headers["Location"]
    first = b"a" * 100
    resp = await dp.http.patch(location, data=first)
    assert resp.status == 202 and resp.headers["Range"] == "0-99"
    # Declares a terabyte, sends 3 bytes, then nothing: used to stay open forever.
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    status, headers, data = await _raw(dp, head, b"xyz")
    assert status.startswith("HTTP/1.1 408")
    assert json.loads(data)["errors"][0]["code"] == "TIMEOUT"
    assert headers["range"] == "0-99" and headers["location"] == location
    # What was acknowledged stays; the client continues from the Range it was given.
    status_resp = await dp.http.get(location)
    assert status_resp.status == 204 and status_resp.headers["Range"] == "0-99"
    rest = b"b" * 50
    resp = await dp.http.patch(location, data=rest, headers={"Content-Range": "100-149"})
    assert resp.status == 202
    digest = "sha256:" + hashlib.sha256(first + rest).hexdigest()
    done = await dp.http.put(f"{location}?digest={digest}")
    assert done.status == 201
    blob = await dp.http.get(f"/v2/{repo}/blobs/{digest}")
    assert await blob.read() == first + rest
    assert dp.http.app is not None
    assert dp.http.app[body.BUDGET].used == 0  # everything reserved was given back


async def test_an_idle_manifest_body_is_408(dp: DataPath) -> None:
    head = (
        "PUT /v2/lib/idle/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    status, _, data = await _raw(dp, head, b'{"schemaVersion":')
    assert status.startswith("HTTP/1.1 408")
    assert json.loads(data)["errors"][0]["code"] == "TIMEOUT"
    assert dp.http.app is not None
    assert dp.http.app[body.BUDGET].used == 0


@pytest.mark.parametrize(
    "content_range", ["0-" + "9" * 5000, "9" * 5000 + "-1", "\u0660-\u0661", "0--1"]
)
async def test_huge_or_odd_content_range_numbers_are_400(dp: DataPath, content_range: str) -> None:
    start = await dp.http.post("/v2/lib/cr/blobs/uploads/")
    resp = await dp.http.patch(
        start.headers["Location"], data=b"abc", headers={"Content-Range": content_range}
    )
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
