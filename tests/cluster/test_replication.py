"""Replication rules (gateway/replication/) between real registries: a Cargohold cluster
and Debian's `docker-registry` (CNCF Distribution 2.8: no referrers API).

One cluster and one Distribution serve both tests (module scope). The cluster's gateway
has four rules: `to-dist` (push, run when asked), `from-dist` (pull into `back/`, run
when asked), `live` (push, on_push) and `to-token` (push to a second, token-mode
Cargohold, run when asked).

- A signed multi-arch image (an index of two platform images, a cosign signature under
  its `sha256-<hex>.sig` tag, and an OCI 1.1 referrer signature) goes to Distribution and
  comes back into the cluster: every manifest byte-identical (same digests), the
  signature tag at both, the referrer listed by Distribution's referrers tag schema index
  and by the cluster's referrers API.
- The same kind of image to a second Cargohold in token mode (`to-token`: Basic
  credentials for its token service, one `pull,push` token per repository): digests
  identical, the referrer listed by its referrers API.
- A push to a repository of the on_push rule appears at Distribution; with Distribution
  stopped, the push event is retried (failures in the rule's status) and copied once it
  is back, not given up on (no dead letter: `admin replication retry` has none).
- Last (it kills a gateway): the gateway running the on_push rule dies (SIGKILL, no
  hand-over); a push through the other gateway is copied once that one took the rule's
  lease over, from the cursor in the replicated metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin
from cluster.images import MANIFEST_TYPE, ImageSpec, sha256
from cluster.polling import eventually
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, token_auth
from cluster.upstreams import Distribution, push_image
from tests import signing_kit as kit

pytestmark = pytest.mark.cluster

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
USERS = {"alice": "alice-pw"}
ACCEPT = f"{INDEX_TYPE}, {MANIFEST_TYPE}"


@pytest.fixture(scope="module")
def registries(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, Distribution, LocalCluster]]:
    dist = Distribution(tmp_path_factory.mktemp("distribution")).start()
    # A second Cargohold, in token mode: a target behind the Docker token protocol.
    token_dir = tmp_path_factory.mktemp("token-cluster")
    target = LocalCluster(
        token_dir / "cluster",
        nodes=1,
        gateways=1,
        replicas=1,
        write_quorum=1,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "auth": token_auth(token_dir, USERS)},
    )
    rules: list[dict[str, Any]] = [
        {
            "name": "to-dist",
            "direction": "push",
            "url": dist.url,
            "repositories": ["repl/*"],
            "tags": ["v*"],
            "triggers": [],
        },
        {
            "name": "from-dist",
            "direction": "pull",
            "url": dist.url,
            "repositories": ["repl/*"],
            "tags": ["v*"],
            "target_prefix": "back",
            "triggers": [],
        },
        {"name": "live", "url": dist.url, "repositories": ["live/*"], "triggers": ["on_push"]},
        {
            "name": "to-token",
            "url": target.gateway_url,
            "username": "alice",
            "password": USERS["alice"],
            "repositories": ["tok/*"],
            "target_prefix": "copy",
            "triggers": [],
        },
    ]
    cluster = LocalCluster(
        tmp_path_factory.mktemp("replication-cluster"),
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "replication": {
                "rules": rules,
                "lease_seconds": 4.0,
                "poll_seconds": 0.2,
                "backoff_seconds": 0.2,
                "backoff_max_seconds": 1.0,
            },
        },
    )
    try:
        with ThreadPoolExecutor(2) as pool:  # the two clusters start side by side
            for started in [pool.submit(c.start, timeout=90) for c in (target, cluster)]:
                started.result()
        yield cluster, dist, target
    finally:
        cluster.kill_all()
        target.kill_all()
        dist.stop()


async def put_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, ref: str, body: bytes, media_type: str
) -> None:
    async with http.put(
        f"{base}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}
    ) as r:
        assert r.status == 201, await r.text()


async def put_blob(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> None:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/?digest={sha256(data)}", data=data) as r:
        assert r.status == 201, await r.text()


async def get_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, ref: str
) -> tuple[bytes, str] | None:
    async with http.get(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT}) as r:
        if r.status == 404:
            return None
        assert r.status == 200, await r.text()
        return await r.read(), r.headers["Docker-Content-Digest"]


async def push_signed_index(
    http: aiohttp.ClientSession, base: str, repo: str
) -> tuple[bytes, dict[str, bytes]]:
    """Two platform images, their index at `v1`, a cosign tag signature and an OCI
    referrer signature of the index: (index body, every manifest body by digest)."""
    children = [
        ImageSpec(repo, f"build-{arch}", seed, (3000, CHUNK + 5))
        for arch, seed in (("amd64", 1), ("arm64", 2))
    ]
    for child in children:
        await push_image(http, base, child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": child.digest,
                    "size": len(child.manifest()),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for child, arch in zip(children, ("amd64", "arm64"), strict=True)
            ],
        }
    ).encode()
    await put_manifest(http, base, repo, "v1", index, INDEX_TYPE)
    digest = sha256(index)
    key = kit.new_key()
    tagged = kit.signature(key, f"{repo}:v1", digest)
    subject = {"mediaType": INDEX_TYPE, "digest": digest, "size": len(index)}
    referrer = kit.signature(key, f"{repo}:v1", digest, subject=subject)
    for sig in (tagged, referrer):
        for blob in sig.blobs:
            await put_blob(http, base, repo, blob)
    await put_manifest(http, base, repo, kit.signature_tag(digest), tagged.manifest, MANIFEST_TYPE)
    await put_manifest(http, base, repo, referrer.digest, referrer.manifest, MANIFEST_TYPE)
    bodies = {child.digest: child.manifest() for child in children}
    bodies.update(
        {digest: index, tagged.digest: tagged.manifest, referrer.digest: referrer.manifest}
    )
    return index, bodies


def blobs_of(bodies: dict[str, bytes]) -> set[str]:
    out = set()
    for body in bodies.values():
        doc = json.loads(body)
        out.update(d["digest"] for d in [doc.get("config"), *doc.get("layers", [])] if d)
    return out


async def status(cluster: LocalCluster, rule: str) -> dict[str, Any]:
    (row,) = json.loads(await admin(cluster, "replication", "status", rule, "--json"))
    return row


async def rule_status_when(
    cluster: LocalCluster, rule: str, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The rule's status when `wanted` holds of it, else None."""
    st: dict[str, Any] = (await status(cluster, rule))["status"]
    return st if wanted(st) else None


async def run_and_wait(cluster: LocalCluster, rule: str) -> dict[str, Any]:
    """`admin replication run RULE`, then its status once the run is done."""
    before = int(((await status(cluster, rule)).get("status") or {}).get("runs_done", 0))
    await admin(cluster, "replication", "run", rule)

    async def finished() -> dict[str, Any] | None:
        row = await status(cluster, rule)
        return row if int((row.get("status") or {}).get("runs_done", 0)) > before else None

    return await eventually(finished, f"rule {rule} finishing a run", interval=0.3)


async def wait_rule_known(cluster: LocalCluster, rule: str) -> None:
    async def known() -> list[dict[str, Any]] | None:
        rows = json.loads(await admin(cluster, "replication", "list", "--json"))
        return rows if any(r["name"] == rule and r.get("status") for r in rows) else None

    await eventually(known, f"a gateway taking rule {rule}", limit=30, interval=0.3)


async def test_a_signed_multi_arch_image_to_distribution_and_back(
    registries: tuple[LocalCluster, Distribution, LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster, dist, _ = registries
    base = cluster.gateway_url
    index, bodies = await push_signed_index(http, base, "repl/app")
    top = sha256(index)
    for rule in ("to-dist", "from-dist", "live"):
        await wait_rule_known(cluster, rule)

    row = await run_and_wait(cluster, "to-dist")
    last = row["status"]["last_run"]
    assert last["tags"] == 1 and last["manifests_copied"] == len(bodies), row
    for digest, body in bodies.items():  # every manifest, byte for byte
        assert await get_manifest(http, dist.url, "repl/app", digest) == (body, digest)
    assert await get_manifest(http, dist.url, "repl/app", "v1") == (index, top)
    assert (await get_manifest(http, dist.url, "repl/app", kit.signature_tag(top)) or b"")[1] in (
        bodies
    )
    # Distribution has no referrers API: the referrers tag schema's index lists the referrer.
    fallback = await get_manifest(http, dist.url, "repl/app", top.replace(":", "-"))
    assert fallback is not None
    referrers = [d["digest"] for d in json.loads(fallback[0])["manifests"]]
    assert len(referrers) == 1 and referrers[0] in bodies
    blob_puts = dist.requests("PUT", "/blobs/uploads/")
    assert blob_puts == len(blobs_of(bodies))  # each distinct blob once

    # Again: HEAD first, nothing uploaded again.
    again = await run_and_wait(cluster, "to-dist")
    assert again["status"]["last_run"]["blobs_copied"] == 0
    assert dist.requests("PUT", "/blobs/uploads/") == blob_puts

    # And back: from Distribution into the cluster's back/ namespace.
    row = await run_and_wait(cluster, "from-dist")
    assert row["status"]["last_run"]["repositories"] == 1, row
    assert await get_manifest(http, base, "back/repl/app", "v1") == (index, top)
    for digest, body in bodies.items():
        assert await get_manifest(http, base, "back/repl/app", digest) == (body, digest)
    async with http.get(f"{base}/v2/back/repl/app/referrers/{top}") as r:
        assert r.status == 200
        listed = [d["digest"] for d in (await r.json(content_type=None))["manifests"]]
    assert listed == referrers
    tag = await get_manifest(http, base, "back/repl/app", kit.signature_tag(top))
    assert tag is not None and tag[1] in bodies
    for child in json.loads(index)["manifests"]:  # every layer readable, verified
        manifest = json.loads(bodies[child["digest"]])
        for layer in manifest["layers"]:
            async with http.get(f"{base}/v2/back/repl/app/blobs/{layer['digest']}") as r:
                assert r.status == 200 and sha256(await r.read()) == layer["digest"]


async def wait_at(
    dist: Distribution, http: aiohttp.ClientSession, cluster: LocalCluster, repo: str, tag: str
) -> tuple[bytes, str]:
    return await eventually(
        lambda: get_manifest(http, dist.url, repo, tag),
        f"{repo}:{tag} reaching Distribution",
        explain=lambda: status(cluster, "live"),
    )


async def test_on_push_a_pushed_tag_appears_at_the_target_retried_while_it_is_down(
    registries: tuple[LocalCluster, Distribution, LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster, dist, _ = registries
    await wait_rule_known(cluster, "live")
    image = ImageSpec("live/app", "1.0", 7, (2000,))
    await push_image(http, cluster.gateway_url, image)
    assert await wait_at(dist, http, cluster, "live/app", "1.0") == (image.manifest(), image.digest)
    st = (await status(cluster, "live"))["status"]
    assert st["events_copied"] >= 1 and st["last_event"]["repository"] == "live/app"

    # The target down: the push event is retried (the failure visible), then copied.
    dist.stop()
    try:
        later = ImageSpec("live/app", "2.0", 8, (2000,))
        await push_image(http, cluster.gateway_url, later)
        st = await eventually(
            lambda: rule_status_when(cluster, "live", lambda st: st.get("failures", 0) >= 2),
            "two failed attempts reported",
            explain=lambda: status(cluster, "live"),
        )
        assert st["state"] == "retrying" and "UpstreamFailed" in st["last_error"]["message"]
    finally:
        dist.start()
    assert await wait_at(dist, http, cluster, "live/app", "2.0") == (later.manifest(), later.digest)
    st = await eventually(
        lambda: rule_status_when(cluster, "live", lambda st: st["state"] == "ok"),
        "the rule reporting its recovery",
        limit=30,
        explain=lambda: status(cluster, "live"),
    )
    assert st["failures"] == 0 and st["last_event"]["reference"] == "2.0"
    # An unreachable target blames no event: nothing was given up on, nothing to retry.
    row = await status(cluster, "live")
    assert row["dead_letters"] == 0 and "events_dead" not in row["status"], row
    assert await admin(cluster, "replication", "retry", "live") == (
        "0 dead letters of live queued to be copied again\n"
    )


async def test_to_a_token_mode_cargohold(
    registries: tuple[LocalCluster, Distribution, LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster, _, target = registries
    index, bodies = await push_signed_index(http, cluster.gateway_url, "tok/app")
    top = sha256(index)
    await wait_rule_known(cluster, "to-token")
    row = await run_and_wait(cluster, "to-token")
    assert row["status"]["last_run"]["manifests_copied"] == len(bodies), row
    alice = TokenClient(http, target.gateway_url, "alice", USERS["alice"])
    for ref, digest in [("v1", top), *((d, d) for d in bodies)]:
        status, headers, body = await alice.request(
            "GET", f"/v2/copy/tok/app/manifests/{ref}", headers={"Accept": ACCEPT}
        )
        assert status == 200 and headers["Docker-Content-Digest"] == digest, body
        assert body == (index if ref == "v1" else bodies[digest])
    status, _, body = await alice.request("GET", f"/v2/copy/tok/app/referrers/{top}")
    listed = [d["digest"] for d in json.loads(body)["manifests"]]
    assert status == 200 and len(listed) == 1 and listed[0] in bodies


async def test_the_other_gateway_takes_an_on_push_rule_over_from_a_dead_one(
    registries: tuple[LocalCluster, Distribution, LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster, dist, _ = registries
    await wait_rule_known(cluster, "live")
    holder = (await status(cluster, "live"))["lease"]["holder"]
    (dead,) = [
        j for j, url in enumerate(cluster.gateway_urls) if f":{url.rsplit(':', 1)[1]}/" in holder
    ]
    cluster.kill_gateway(dead)
    image = ImageSpec("live/app", "3.0", 9, (2000,))
    await push_image(http, cluster.gateway_urls[1 - dead], image)
    assert await wait_at(dist, http, cluster, "live/app", "3.0") == (image.manifest(), image.digest)
    row = await status(cluster, "live")
    assert row["lease"]["holder"] != holder and row["status"]["last_event"]["reference"] == "3.0"
