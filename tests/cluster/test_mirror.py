"""The pull-through cache (gateway/mirror/, docs/mirroring.md) against real upstreams.

- CNCF Distribution without auth: 50 concurrent cold pulls of one image through a proxy
  namespace cause exactly one upstream GET per blob (its access log says so) and one
  HEAD of the tag; the image is stored; with the upstream stopped it still pulls (by tag
  and by digest) and a tag never pulled is 503; started again with the tag moved, the
  new digest is seen once the TTL has passed. A signature pushed to it the way clients
  do without a referrers API (the tag schema) is what the proxy's referrers API answers,
  is stored, and is still answered and pulled with the upstream stopped.
- Distribution behind htpasswd (HTTP Basic), and a second Cargohold cluster in token
  mode as the upstream: the proxy logs in (challenge
  -> token -> retry) with its configured credentials; wrong ones are 503, never content.
- A test upstream (aiohttp, here) that flips a byte of a layer: the pull is refused (the
  response is cut short, never a complete wrong blob) and nothing is stored.
- Clients before the cluster write: while another download runs, a client pulls a whole
  layer (verified) and its cluster write waits; once the gateway is idle it is stored
  (hash-correct, served with the upstream down, fetched once). A gateway SIGKILLed after
  serving a layer and before storing it leaves nothing visible; the next pull fetches it
  again and stores it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import grpc
import pytest
from aiohttp import web

from cargohold_cli.devcluster import LocalCluster, free_port
from cluster.chunkcheck import cluster_query
from cluster.images import MANIFEST_TYPE, ImageSpec
from cluster.polling import eventually
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, token_auth
from cluster.upstreams import INDEX_TYPE, Distribution, push_image, push_referrer

pytestmark = pytest.mark.cluster

TTL = 4.0


def proxy_cluster(
    make_cluster: Callable[..., LocalCluster], proxies: list[str], gateways: int = 1, **mirror: Any
) -> LocalCluster:
    section: dict[str, Any] = {"proxies": proxies, "tag_ttl_seconds": TTL, **mirror}
    return make_cluster(
        nodes=3,
        gateways=gateways,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "mirror": section},
    )


def _pool(pool: int | None) -> dict[str, int]:
    return {} if pool is None else {"memory_pool_bytes": pool}


async def pull(
    http: aiohttp.ClientSession, base: str, repo: str, ref: str, image: ImageSpec
) -> str:
    """Pull `repo:ref` like a client: the manifest, then every blob; check the bytes."""
    headers = {"Accept": MANIFEST_TYPE}
    async with http.get(f"{base}/v2/{repo}/manifests/{ref}", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert await r.read() == image.manifest()
        digest = r.headers["Docker-Content-Digest"]
    for _media, blob, data in image.blobs():
        async with http.get(f"{base}/v2/{repo}/blobs/{blob}") as r:
            assert r.status == 200, await r.text()
            assert await r.read() == data
    return digest


def stored_tag(cluster: LocalCluster, repo: str, tag: str) -> str | None:
    """The digest the cluster's metadata has for `repo:tag` (None: not stored)."""
    try:
        return str(cluster_query(cluster, "tag_get", {"repo": repo, "tag": tag}, 5)["digest"])
    except grpc.RpcError:
        return None


def has_blob(cluster: LocalCluster, repo: str, digest: str) -> bool:
    try:
        cluster_query(cluster, "blob_get", {"repo": repo, "digest": digest}, 5)
    except grpc.RpcError:
        return False
    return True


async def wait_stored(cluster: LocalCluster, repo: str, tag: str, digest: str) -> None:
    """Until the proxy stored the tag (the manifest is stored once its blobs are)."""

    async def stored() -> bool:
        return await asyncio.to_thread(stored_tag, cluster, repo, tag) == digest

    await eventually(stored, f"{repo}:{tag} stored as {digest}", limit=30)


def referrer_digests(cluster: LocalCluster, repo: str, subject: str) -> list[str]:
    """The digests the cluster's metadata lists as referrers of `subject` in `repo`."""
    try:
        found = cluster_query(cluster, "referrers", {"repo": repo, "digest": subject}, 5)
    except grpc.RpcError:
        return []
    return [d["digest"] for d in found["manifests"]]


async def wait_referrer(cluster: LocalCluster, repo: str, subject: str, digest: str) -> None:
    """Until the proxy stored `digest` as a referrer of `subject` in `repo`."""

    async def stored() -> bool:
        return digest in await asyncio.to_thread(referrer_digests, cluster, repo, subject)

    await eventually(stored, f"{digest} stored as a referrer of {subject}", limit=30)


async def served(http: aiohttp.ClientSession, url: str) -> bytes | None:
    """The body of a GET of `url` when it answers 200, else None."""
    async with http.get(url) as r:
        return await r.read() if r.status == 200 else None


async def test_single_flight_offline_and_moved_tag(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    upstream = Distribution(tmp_path / "distribution").start()
    try:
        first = ImageSpec("library/app", "v1", seed=31, layer_sizes=(1000, 3 * CHUNK + 5))
        await push_image(http, upstream.url, first)
        cluster = proxy_cluster(make_cluster, [f"hub={upstream.url}"])
        base = cluster.gateway_url

        # 50 cold pulls at once: one HEAD of the tag, one GET of the manifest and of each
        # blob upstream, and every client gets the right bytes.
        digests = await asyncio.gather(
            *(pull(http, base, "hub/library/app", "v1", first) for _ in range(50))
        )
        assert set(digests) == {first.digest}
        assert upstream.requests("HEAD", "/v2/library/app/manifests/v1") == 1
        assert upstream.requests("GET", f"/v2/library/app/manifests/{first.digest}") == 1
        for _media, blob, _data in first.blobs():
            assert upstream.requests("GET", f"/v2/library/app/blobs/{blob}") == 1, blob
        await wait_stored(cluster, "hub/library/app", "v1", first.digest)
        for _media, blob, _data in first.blobs():
            assert has_blob(cluster, "hub/library/app", blob)

        # Warm: served from the cluster, nothing asked upstream within the TTL.
        await pull(http, base, "hub/library/app", "v1", first)
        for _media, blob, _data in first.blobs():
            assert upstream.requests("GET", f"/v2/library/app/blobs/{blob}") == 1

        # Referrers: Distribution has no referrers API, so a signature is pushed with the
        # tag schema's index, and that is what the proxy answers (asked once per TTL);
        # the signature is stored (manifest and blobs) in the proxy repository.
        signature = await push_referrer(
            http, upstream.url, "library/app", first.digest, len(first.manifest()), seed=33
        )
        referrers = f"{base}/v2/hub/library/app/referrers/{first.digest}"
        for _ in range(2):
            async with http.get(referrers) as r:
                assert r.status == 200 and r.headers["Content-Type"] == INDEX_TYPE
                assert (await r.json())["manifests"] == [signature]
        assert upstream.requests("GET", f"/v2/library/app/referrers/{first.digest}") == 1
        fallback = "/v2/library/app/manifests/" + first.digest.replace(":", "-")
        assert upstream.requests("GET", fallback) == 1
        async with http.get(referrers, params={"artifactType": "application/x-other"}) as r:
            assert (await r.json())["manifests"] == []
        await wait_referrer(cluster, "hub/library/app", first.digest, str(signature["digest"]))

        # The upstream stopped: the cached image still pulls, by tag past the TTL (the
        # last known digest) and by digest; a tag never pulled is 503 UNAVAILABLE. Its
        # referrers are the last answer, and the signature pulls.
        upstream.stop()
        await asyncio.sleep(TTL + 0.5)
        assert await pull(http, base, "hub/library/app", "v1", first) == first.digest
        await pull(http, base, "hub/library/app", first.digest, first)
        async with http.get(referrers) as r:
            assert r.status == 200 and (await r.json())["manifests"] == [signature]
        signed = f"{base}/v2/hub/library/app/manifests/{signature['digest']}"
        async with http.get(signed, headers={"Accept": MANIFEST_TYPE}) as r:
            assert r.status == 200
            assert json.loads(await r.read())["subject"]["digest"] == first.digest
        async with http.get(f"{base}/v2/hub/library/app/manifests/never") as r:
            assert r.status == 503
            assert (await r.json())["errors"][0]["code"] == "UNAVAILABLE"

        # Back, with v1 moved to another image: seen once the TTL has passed.
        upstream.start()
        second = ImageSpec("library/app", "v1", seed=32, layer_sizes=(2000, 2 * CHUNK + 7))
        await push_image(http, upstream.url, second)
        await asyncio.sleep(TTL + 0.5)
        assert await pull(http, base, "hub/library/app", "v1", second) == second.digest
        # The stored tag follows the upstream.
        await wait_stored(cluster, "hub/library/app", "v1", second.digest)
        # The tag list is the upstream's (with the tag schema's index tag); the stored one
        # while it is down.
        async with http.get(f"{base}/v2/hub/library/app/tags/list") as r:
            assert r.status == 200
            assert sorted((await r.json())["tags"]) == sorted(["v1", fallback.rsplit("/")[-1]])
        upstream.stop()
        async with http.get(f"{base}/v2/hub/library/app/tags/list") as r:
            assert r.status == 200 and (await r.json())["tags"] == ["v1"]
        # A name outside every proxy namespace is not proxied.
        async with http.get(f"{base}/v2/library/app/manifests/v1") as r:
            assert r.status == 404
    finally:
        upstream.stop()


USERS = {"alice": "alice-pw"}


async def test_basic_auth_upstream(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(USERS["alice"].encode(), bcrypt.gensalt(4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    upstream = Distribution(tmp_path / "distribution", htpasswd).start()
    try:
        image = ImageSpec("team/basic", "2.0", seed=45, layer_sizes=(700, CHUNK + 9))
        basic = aiohttp.BasicAuth("alice", USERS["alice"]).encode()
        await push_image(http, upstream.url, image, {"Authorization": basic})
        host = upstream.url.removeprefix("http://")
        cluster = proxy_cluster(
            make_cluster,
            [f"up=http://alice:{USERS['alice']}@{host}", f"anon=http://{host}"],
        )
        base = cluster.gateway_url
        assert await pull(http, base, "up/team/basic", "2.0", image) == image.digest
        async with http.get(f"{base}/v2/anon/team/basic/manifests/2.0") as r:
            assert r.status == 503, await r.text()
    finally:
        upstream.stop()


async def test_token_upstream(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    upstream = make_cluster(
        nodes=1,
        gateways=1,
        replicas=1,
        write_quorum=1,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "auth": token_auth(tmp_path, USERS)},
    )
    image = ImageSpec("team/tool", "1.0", seed=41, layer_sizes=(500, 2 * CHUNK + 3))
    alice = TokenClient(http, upstream.gateway_url, "alice", USERS["alice"])
    for _media, digest, data in image.blobs():
        status, _h, body = await alice.request(
            "POST", f"/v2/{image.repo}/blobs/uploads/?digest={digest}", data=data
        )
        assert status == 201, body
    status, _h, body = await alice.request(
        "PUT",
        f"/v2/{image.repo}/manifests/{image.tag}",
        data=image.manifest(),
        headers={"Content-Type": MANIFEST_TYPE},
    )
    assert status == 201, body
    host = upstream.gateway_url.removeprefix("http://")
    cluster = proxy_cluster(
        make_cluster,
        [f"up=http://alice:{USERS['alice']}@{host}", f"bad=http://alice:wrong@{host}"],
    )
    base = cluster.gateway_url
    assert await pull(http, base, "up/team/tool", "1.0", image) == image.digest
    for ref in ("1.0", image.digest):
        async with http.get(f"{base}/v2/bad/team/tool/manifests/{ref}") as r:
            assert r.status == 503, await r.text()
    async with http.get(f"{base}/v2/bad/team/tool/blobs/{image.blobs()[1][1]}") as r:
        assert r.status == 503


class FlippingUpstream:
    """An upstream serving one image whose layer comes back with a byte flipped while
    `mode` is "flip", the right bytes while "good", 503 while "down"."""

    def __init__(self, image: ImageSpec) -> None:
        self.image = image
        self.mode = "flip"
        self.blob_gets = 0
        self.gets: collections.Counter[str] = collections.Counter()  # by digest
        # "held" mode: the layer's first half is sent, the rest once this is set; only
        # the blob `hold_only` names, when it names one (the others are sent whole).
        self.release = asyncio.Event()
        self.hold_only: str | None = None
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def _manifest(self, request: web.Request) -> web.Response:
        headers = {"Docker-Content-Digest": self.image.digest, "Content-Type": MANIFEST_TYPE}
        body = self.image.manifest()
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(body))})
        return web.Response(body=body, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self.blob_gets += 1
        self.gets[request.match_info["digest"]] += 1
        if self.mode == "down":
            return web.Response(status=503)
        blobs = {d: data for _m, d, data in self.image.blobs()}
        data = blobs.get(request.match_info["digest"])
        if data is None:
            return web.Response(status=404)
        if self.mode == "flip" and len(data) > 1000:
            data = data[:-10] + bytes([data[-10] ^ 0x01]) + data[-9:]
        held = self.mode == "held" and self.hold_only in (None, request.match_info["digest"])
        if not held:
            return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await self.release.wait()
        await response.write(data[len(data) // 2 :])
        await response.write_eof()
        return response

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v2/", lambda _r: web.json_response({}))
        app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# Held whole in memory (the default for a blob this size) and spooled (the pool off).
HOLDING = pytest.mark.parametrize("pool", [None, 0], ids=["in_memory", "spooled"])


@HOLDING
async def test_corrupt_upstream_blob_refused_and_not_stored(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, pool: int | None
) -> None:
    image = ImageSpec("evil/app", "v1", seed=51, layer_sizes=(4 * CHUNK + 11,))
    fake = FlippingUpstream(image)
    url = await fake.start()
    try:
        cluster = proxy_cluster(make_cluster, [f"flip={url}"], **_pool(pool))
        base = cluster.gateway_url
        _media, layer, data = image.blobs()[1]
        path = f"{base}/v2/flip/evil/app/blobs/{layer}"

        # Several clients at once: none receives the whole (wrong) blob.
        async def attempt() -> bytes | None:
            try:
                async with http.get(path) as r:
                    if r.status != 200:
                        return None
                    return await r.read()
            except aiohttp.ClientPayloadError:
                return None

        results = await asyncio.gather(*(attempt() for _ in range(5)))
        assert all(got is None for got in results), [len(g) for g in results if g]
        # Nothing was stored: no recipe linked, and with the upstream down the blob is
        # unavailable, not served.
        assert not has_blob(cluster, "flip/evil/app", layer)
        async with http.get(f"{base}/metrics") as r:
            metrics = await r.text()
        assert re.search(
            r'^cargohold_mirror_blob_fetches_total\{outcome="mismatch",proxy="flip"\} [1-9]',
            metrics,
            re.M,
        ), metrics
        fake.mode = "down"
        async with http.get(path) as r:
            assert r.status == 503
        # The right bytes are fetched, verified, stored: then served with the upstream down.
        fake.mode = "good"
        async with http.get(path) as r:
            assert r.status == 200 and hashlib.sha256(await r.read()).hexdigest() == layer[7:]
        fake.mode = "down"
        stored = await eventually(lambda: served(http, path), "the verified blob stored", 30)
        assert stored == data
        # A manifest that does not match its digest is refused too.
        assert json.loads(image.manifest())["layers"][0]["digest"] == layer
    finally:
        await fake.stop()


@HOLDING
async def test_streamed_while_downloading_and_a_client_leaving_cancels_nothing(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, pool: int | None
) -> None:
    image = ImageSpec("slow/app", "v1", seed=61, layer_sizes=(6 * CHUNK + 3,))
    fake = FlippingUpstream(image)
    fake.mode = "held"
    url = await fake.start()
    try:
        cluster = proxy_cluster(make_cluster, [f"slow={url}"], **_pool(pool))
        _media, layer, data = image.blobs()[1]
        path = f"{cluster.gateway_url}/v2/slow/slow/app/blobs/{layer}"
        async with aiohttp.ClientSession() as leaver:
            staying = await http.get(path)
            leaving = await leaver.get(path)
            assert staying.status == leaving.status == 200
            # The upstream has sent half and waits: both clients get bytes already.
            first = await staying.content.readexactly(CHUNK)
            assert first == data[:CHUNK]
            assert await leaving.content.readexactly(1000) == data[:1000]
            leaving.close()  # this client goes away mid-body
        assert fake.blob_gets == 1
        fake.release.set()
        rest = await staying.read()
        staying.release()
        assert first + rest == data
        assert fake.blob_gets == 1
        # Stored: served with the upstream down.
        fake.mode = "down"
        assert await eventually(lambda: served(http, path), "the blob stored", 30) == data
        assert fake.blob_gets == 1
    finally:
        await fake.stop()


async def deferred_bytes(http: aiohttp.ClientSession, base: str) -> float:
    """The gateway's bytes of served downloads whose cluster write waits to start."""
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    found = re.search(r"^cargohold_mirror_store_deferred_bytes (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


async def _served_while_another_download_runs(
    http: aiohttp.ClientSession, base: str, path: str, data: bytes, holding: str
) -> aiohttp.ClientResponse:
    """Start a download of `holding` (the upstream holds its second half), then pull
    `path` whole; return once its cluster write waits (the holding response, unread)."""
    other = await http.get(holding)
    assert other.status == 200
    assert len(await other.content.readexactly(CHUNK)) == CHUNK
    async with http.get(path) as r:
        assert r.status == 200 and await r.read() == data  # whole and verified
    await eventually(
        lambda: _equal(deferred_bytes(http, base), len(data)), "the cluster write waiting"
    )
    return other


async def _equal(got: Awaitable[float], want: float) -> bool:
    return await got == want


def _deferring_image(seed: int) -> tuple[ImageSpec, FlippingUpstream, str, bytes, str, bytes]:
    image = ImageSpec("defer/app", "v1", seed=seed, layer_sizes=(2 * CHUNK + 5, 6 * CHUNK + 3))
    (_m, small, small_data), (_n, big, big_data) = image.blobs()[1:]
    fake = FlippingUpstream(image)
    fake.mode = "held"
    fake.hold_only = big
    return image, fake, small, small_data, big, big_data


@HOLDING
async def test_a_client_is_served_before_the_cluster_write(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, pool: int | None
) -> None:
    _image, fake, small, small_data, big, big_data = _deferring_image(71)
    url = await fake.start()
    try:
        cluster = proxy_cluster(
            make_cluster, [f"defer={url}"], store_yield_seconds=600.0, **_pool(pool)
        )
        base, repo = cluster.gateway_url, "defer/defer/app"
        path = f"{base}/v2/{repo}/blobs/{small}"
        other = await _served_while_another_download_runs(
            http, base, path, small_data, f"{base}/v2/{repo}/blobs/{big}"
        )
        # The client has every byte; the blob is not in the cluster yet.
        assert not has_blob(cluster, repo, small)
        fake.release.set()  # the other download ends: the gateway is idle, both are written
        assert big_data[:CHUNK] + await other.read() == big_data
        other.release()
        fake.mode = "down"
        for digest, data in ((small, small_data), (big, big_data)):
            await eventually(
                lambda d=digest: asyncio.to_thread(has_blob, cluster, repo, d), f"{digest} stored"
            )
            async with http.get(f"{base}/v2/{repo}/blobs/{digest}") as r:
                assert r.status == 200
                stored = await r.read()
            assert hashlib.sha256(stored).hexdigest() == digest[7:] and stored == data
        assert fake.gets[small] == 1 and fake.gets[big] == 1
        assert await deferred_bytes(http, base) == 0
    finally:
        await fake.stop()


async def test_a_gateway_killed_after_serving_and_before_storing_leaves_nothing(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    _image, fake, small, small_data, big, _big_data = _deferring_image(72)
    url = await fake.start()
    try:
        cluster = proxy_cluster(make_cluster, [f"defer={url}"], store_yield_seconds=600.0)
        base, repo = cluster.gateway_url, "defer/defer/app"
        path = f"{base}/v2/{repo}/blobs/{small}"
        other = await _served_while_another_download_runs(
            http, base, path, small_data, f"{base}/v2/{repo}/blobs/{big}"
        )
        cluster.kill_gateway(0)  # SIGKILL: served, not stored
        other.close()
        assert not has_blob(cluster, repo, small)
        cluster.start_gateway(0)
        await asyncio.to_thread(cluster.wait_ready, 60)
        assert not has_blob(cluster, repo, small)  # nothing half-visible after the restart
        # The next pull fetches it again, verifies and stores it.
        fake.mode = "good"
        async with http.get(path) as r:
            assert r.status == 200 and await r.read() == small_data
        assert fake.gets[small] == 2
        await eventually(lambda: asyncio.to_thread(has_blob, cluster, repo, small), "stored")
        fake.mode = "down"
        async with http.get(path) as r:
            assert r.status == 200
            assert hashlib.sha256(await r.read()).hexdigest() == small[7:]
    finally:
        fake.release.set()
        await fake.stop()
