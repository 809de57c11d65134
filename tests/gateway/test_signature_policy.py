"""The pull policy of a namespace that requires signatures (gateway/signatures/), over the
in-memory FakeCluster: pushes and pulls go through the real handlers, the signatures are
real cosign-format ones made with `cryptography` (tests/signing_kit.py)."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from fakecluster import FakeCluster

from cargohold import audit
from cargohold.config import Config
from gateway.activity import ACTIVITY, record_policy_decision
from gateway.signatures.policy import POLICY
from tests import signing_kit as kit

REPO = "prod/app"
MANIFEST = kit.OCI_MANIFEST
INDEX = "application/vnd.oci.image.index.v1+json"


async def _blob(fake: FakeCluster, repo: str, data: bytes) -> dict:
    recipe = await fake.store_bytes(data)
    fake.link_blob(repo, kit.sha256(data), recipe)  # type: ignore[arg-type]
    return {"digest": kit.sha256(data), "size": len(data)}


async def _put(gw: TestClient, repo: str, ref: str, body: bytes, media: str = MANIFEST) -> None:
    resp = await gw.put(f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media})
    assert resp.status == 201, await resp.text()


async def push_image(gw: TestClient, fake: FakeCluster, repo: str, tag: str, seed: str) -> str:
    config = await _blob(fake, repo, json.dumps({"seed": seed}).encode())
    layer = await _blob(fake, repo, f"layer {seed}".encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
    }
    body = json.dumps(doc).encode()
    await _put(gw, repo, tag, body)
    return kit.sha256(body)


async def push_signature(
    gw: TestClient, fake: FakeCluster, repo: str, sig: kit.Signature, tag: str | None
) -> None:
    for blob in sig.blobs:
        await _blob(fake, repo, blob)
    await _put(gw, repo, tag or sig.digest, sig.manifest)


def _trust(fake: FakeCluster, key: kit.PrivateKey | None, require: bool = True) -> None:
    fake.state.apply("namespace_put", {"name": "prod", "visibility": "private"})
    if key is not None:
        pem = kit.public_pem(key)
        fake.state.apply("trust_key_put", {"namespace": "prod", "name": "release", "pem": pem})
    fake.state.apply("pull_policy_put", {"namespace": "prod", "require_signature": require})


async def _refusal(gw: TestClient, repo: str, ref: str) -> str:
    resp = await gw.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST})
    assert resp.status == 403
    error = (await resp.json())["errors"][0]
    assert error["code"] == "DENIED"
    head = await gw.head(f"/v2/{repo}/manifests/{ref}")
    assert head.status == 403
    return str(error["message"])


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
async def test_a_signed_image_pulls_and_an_unsigned_one_is_refused_with_the_reason(
    gw: TestClient, fake_cluster: FakeCluster, kind: str
) -> None:
    key = kit.new_key(kind)
    _trust(fake_cluster, key)
    digest = await push_image(gw, fake_cluster, REPO, "v1", "one")
    assert "unsigned" in await _refusal(gw, REPO, "v1")
    sig = kit.signature(key, f"reg/{REPO}", digest)
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(digest))
    for ref in ("v1", digest):  # this gateway stored the signature: no stale refusal
        resp = await gw.get(f"/v2/{REPO}/manifests/{ref}")
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
    # The signature itself stays pullable, by its tag and by digest.
    assert (await gw.get(f"/v2/{REPO}/manifests/{kit.signature_tag(digest)}")).status == 200
    assert (await gw.get(f"/v2/{REPO}/manifests/{sig.digest}")).status == 200


async def test_a_signature_by_an_unregistered_key_is_refused(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    _trust(fake_cluster, kit.new_key())
    digest = await push_image(gw, fake_cluster, REPO, "v1", "one")
    sig = kit.signature(kit.new_key(), f"reg/{REPO}", digest)
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(digest))
    assert "not signed by a registered key" in await _refusal(gw, REPO, "v1")


async def test_a_signature_copied_from_another_image_is_refused(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    key = kit.new_key()
    _trust(fake_cluster, key)
    signed = await push_image(gw, fake_cluster, REPO, "good", "one")
    other = await push_image(gw, fake_cluster, REPO, "bad", "two")
    sig = kit.signature(key, f"reg/{REPO}", signed)  # names `signed`
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(other))
    assert "names another digest" in await _refusal(gw, REPO, "bad")


async def test_a_referrer_signature_counts_and_the_namespace_without_policy_is_open(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    key = kit.new_key()
    _trust(fake_cluster, key)
    digest = await push_image(gw, fake_cluster, REPO, "v1", "one")
    refused = await gw.get(f"/v2/{REPO}/manifests/{digest}")
    assert refused.status == 403 and "layers" not in await refused.text()  # nothing leaked
    subject = {"mediaType": MANIFEST, "digest": digest, "size": 1}
    sig = kit.signature(key, f"reg/{REPO}", digest, subject=subject)
    await push_signature(gw, fake_cluster, REPO, sig, None)
    assert (await gw.get(f"/v2/{REPO}/manifests/v1")).status == 200
    # Outside the namespace nothing changes.
    await push_image(gw, fake_cluster, "dev/app", "v1", "three")
    assert (await gw.get("/v2/dev/app/manifests/v1")).status == 200


async def test_policy_off_and_keys_changed_take_effect(
    gw: TestClient, fake_cluster: FakeCluster, gateway_cfg: Config
) -> None:
    key = kit.new_key()
    _trust(fake_cluster, key, require=False)
    digest = await push_image(gw, fake_cluster, REPO, "v1", "one")
    assert (await gw.get(f"/v2/{REPO}/manifests/v1")).status == 200
    assert gateway_cfg.policy.refresh_seconds > 0
    policy = gw.app[POLICY]
    fake_cluster.state.apply("pull_policy_put", {"namespace": "prod", "require_signature": True})
    policy.trust.invalidate()
    assert "unsigned" in await _refusal(gw, REPO, "v1")
    sig = kit.signature(key, f"reg/{REPO}", digest)
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(digest))
    assert (await gw.get(f"/v2/{REPO}/manifests/v1")).status == 200
    # The key is replaced: the cached verdict is not trusted any more.
    fake_cluster.state.apply(
        "trust_key_put",
        {"namespace": "prod", "name": "release", "pem": kit.public_pem(kit.new_key())},
    )
    policy.trust.invalidate()
    assert "not signed by a registered key" in await _refusal(gw, REPO, "v1")


async def test_a_signed_index_lets_its_children_through(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    key = kit.new_key()
    _trust(fake_cluster, key)
    child = await push_image(gw, fake_cluster, REPO, "amd64", "one")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [{"mediaType": MANIFEST, "digest": child, "size": 10}],
        }
    ).encode()
    await _put(gw, REPO, "multi", body, INDEX)
    index = kit.sha256(body)
    assert "unsigned" in await _refusal(gw, REPO, child)
    sig = kit.signature(key, f"reg/{REPO}", index)
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(index))
    assert (await gw.get(f"/v2/{REPO}/manifests/multi")).status == 200
    assert (await gw.get(f"/v2/{REPO}/manifests/{child}")).status == 200


async def test_policy_decisions_are_in_the_activity_log(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    key = kit.new_key()
    _trust(fake_cluster, key)
    digest = await push_image(gw, fake_cluster, REPO, "v1", "one")
    ua = {"User-Agent": "skopeo/1.13"}
    refused = await gw.get(f"/v2/{REPO}/manifests/v1", headers=ua)
    assert refused.status == 403
    sig = kit.signature(key, f"reg/{REPO}", digest)
    await push_signature(gw, fake_cluster, REPO, sig, kit.signature_tag(digest))
    for _ in range(3):  # decided once, then from the verdict cache: one record
        assert (await gw.get(f"/v2/{REPO}/manifests/{digest}", headers=ua)).status == 200
    assert await gw.app[ACTIVITY].flush() == 2
    records = [audit.decode(line) for line in fake_cluster.state.audit.tail]
    decisions = [r for r in records if r["action"] == "policy"]
    assert [
        (r["repository"], r["reference"], r["digest"], r["result"], r["detail"]) for r in decisions
    ] == [
        (REPO, "v1", digest, "denied", "signature: unsigned: no signature found"),
        (REPO, digest, digest, "allowed", "signature: signed by key release"),
    ]
    assert decisions[0]["user_agent"] == "skopeo/1.13" and decisions[0]["client"]
    assert decisions[0]["actor_kind"] == "anonymous"
    # The refusal is recorded once, as the policy's: no second plain `denied` record.
    assert not [r for r in records if r["action"] == "denied"]


async def test_record_policy_decision_is_the_one_path_for_other_rules(
    gw: TestClient, fake_cluster: FakeCluster
) -> None:
    """Another rule (a vulnerability threshold, say) records through the same function."""
    request = make_mocked_request("GET", f"/v2/{REPO}/manifests/v1", app=gw.app)
    record_policy_decision(
        request,
        policy="vulnerability",
        repository=REPO,
        reference="v1",
        digest="sha256:" + "a" * 64,
        allowed=False,
        reason="CVE-2026-0001 (critical)",
    )
    assert await gw.app[ACTIVITY].flush() == 1
    (last,) = [audit.decode(line) for line in fake_cluster.state.audit.tail]
    assert (last["action"], last["result"], last["detail"]) == (
        "policy",
        "denied",
        "vulnerability: CVE-2026-0001 (critical)",
    )
