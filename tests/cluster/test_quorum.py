"""Quorum failure: a push that cannot reach W copies fails cleanly and can be retried.

Real processes (3 nodes, one gateway). With too few nodes for the write quorum:

- every write answers HTTP 503 with the OCI error JSON (`UNAVAILABLE`) and `Retry-After`:
  a monolithic blob upload, a streamed PATCH, and a manifest PUT whose blobs exist;
- nothing of it becomes visible, neither while the nodes are down nor after they return:
  the blob 404s (`BLOB_UNKNOWN`), the manifest and its tag 404 (`MANIFEST_UNKNOWN`), the
  tag is not listed. The gateway writes chunks first and commits metadata only after W
  acknowledgements, so a failed write never reaches Raft;
- once the nodes are back, the very same push succeeds and reads back byte-identical.

Two ways to lose the quorum: W=3 with one node down (Raft still has its majority, so the
"nothing visible" checks are linearizable reads taken while the node is down), and the
default W=2 with two of three nodes down (no chunk quorum and no Raft majority).

A third case is different on purpose: W=1 with the Raft majority lost. The chunks reach W,
the metadata commit cannot be acknowledged: 503, but with an UNKNOWN outcome (the ex-leader
may have logged the command and commits it when its peers return). There the test demands
atomicity (each write afterwards wholly visible or wholly absent) and a successful retry.
"""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import MANIFEST_TYPE, ImageSpec, random_image
from cluster.shapes import CHUNK
from cluster.summary import RecordSummary
from cluster.verify import verify_images

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


def request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def assert_unavailable(answer: tuple[int, dict[str, str], bytes], what: str) -> None:
    status, headers, body = answer
    assert status == 503, f"{what}: {status} {body[:300]!r}"
    assert headers.get("Content-Type", "").startswith("application/json"), what
    assert int(headers["Retry-After"]) >= 1, what
    errors = json.loads(body)["errors"]
    assert errors and errors[0]["code"] == "UNAVAILABLE" and errors[0]["message"], errors


def push_blob(base: str, repo: str, digest: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    return request(
        base,
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={digest}",
        data,
        {"Content-Type": "application/octet-stream"},
    )


def with_retries(
    send: Callable[[], tuple[int, dict[str, str], bytes]], limit: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """What a registry client does with a 503: wait `Retry-After`, try again (the gateway
    may need a moment to reconnect to a node that just came back)."""
    deadline = time.monotonic() + limit
    while True:
        answer = send()
        if answer[0] != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(min(float(answer[1].get("Retry-After", 1)), 1.0))


def push_image(base: str, spec: ImageSpec) -> None:
    for _, digest, data in spec.blobs():
        status, _, body = with_retries(lambda d=digest, b=data: push_blob(base, spec.repo, d, b))
        assert status == 201, body[:300]
    status, headers, body = with_retries(
        lambda: request(
            base,
            "PUT",
            f"/v2/{spec.repo}/manifests/{spec.tag}",
            spec.manifest(),
            {"Content-Type": MANIFEST_TYPE},
        )
    )
    assert status == 201, body[:300]
    assert headers["Docker-Content-Digest"] == spec.digest


def failed_writes(base: str, spec: ImageSpec, stored: ImageSpec) -> None:
    """Every kind of write of `spec` answers 503; `stored`'s blobs exist already, so its
    manifest PUT fails on the manifest bytes' own chunk quorum."""
    _, digest, data = spec.blobs()[2]  # the multi-chunk layer
    assert_unavailable(push_blob(base, spec.repo, digest, data), "monolithic blob upload")
    status, headers, _ = request(base, "POST", f"/v2/{spec.repo}/blobs/uploads/")
    assert status == 202
    assert_unavailable(
        request(
            base, "PATCH", headers["Location"], data, {"Content-Type": "application/octet-stream"}
        ),
        "PATCH",
    )
    assert_unavailable(
        request(
            base,
            "PUT",
            f"/v2/{stored.repo}/manifests/{stored.tag}",
            stored.manifest(),
            {"Content-Type": MANIFEST_TYPE},
        ),
        "manifest PUT",
    )


def nothing_visible(base: str, spec: ImageSpec, stored: ImageSpec) -> None:
    _, digest, _ = spec.blobs()[2]
    status, _, body = request(base, "GET", f"/v2/{spec.repo}/blobs/{digest}")
    assert status == 404 and b"BLOB_UNKNOWN" in body, (status, body[:200])
    for ref in (stored.tag, stored.digest):
        status, _, body = request(
            base, "GET", f"/v2/{stored.repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPE}
        )
        assert status == 404 and b"MANIFEST_UNKNOWN" in body, (ref, status, body[:200])
    status, _, body = request(base, "GET", f"/v2/{stored.repo}/tags/list")
    assert status == 404 or stored.tag not in json.loads(body)["tags"], body[:200]


def _scenario(cluster: LocalCluster, down: list[int], check_while_down: bool) -> None:
    rng = random.Random()
    base = cluster.gateway_url
    spec = random_image(rng, "quorum/blob", CHUNK)
    stored = random_image(rng, "quorum/manifest", CHUNK)
    for _, digest, data in stored.blobs():  # the manifest's blobs exist beforehand
        assert push_blob(base, stored.repo, digest, data)[0] == 201
    for i in down:
        cluster.kill_node(i)
    failed_writes(base, spec, stored)
    if check_while_down:
        nothing_visible(base, spec, stored)
    for i in down:
        cluster.start_node(i)
    cluster.wait_ready(60)
    nothing_visible(base, spec, stored)
    # The same pushes, retried, now succeed.
    push_image(base, spec)
    push_image(base, stored)
    result = verify_images([base], [spec, stored], settle=30)
    assert result.images == 2


def test_below_write_quorum_with_raft_alive(
    make_cluster: Callable[..., LocalCluster], record_summary: RecordSummary
) -> None:
    cluster = make_cluster(nodes=3, gateways=1, replicas=3, write_quorum=3, chunk_size=CHUNK)
    leader = cluster.leader_index()
    follower = next(i for i in range(3) if i != leader)
    _scenario(cluster, [follower], check_while_down=True)
    record_summary(
        "5a. quorum: W=3 with one of three nodes down",
        {
            "writes answered 503 UNAVAILABLE + Retry-After": "blob POST, PATCH, manifest PUT",
            "visible afterwards": "nothing (checked while down and after return)",
            "same push retried after the node returned": "201, byte-identical",
        },
    )


def test_two_of_three_nodes_down(
    make_cluster: Callable[..., LocalCluster], record_summary: RecordSummary
) -> None:
    cluster = make_cluster(nodes=3, gateways=1, chunk_size=CHUNK)
    _scenario(cluster, random.sample(range(3), 2), check_while_down=False)
    record_summary(
        "5b. quorum: W=2 with two of three nodes down",
        {
            "writes answered 503 UNAVAILABLE + Retry-After": "blob POST, PATCH, manifest PUT",
            "visible afterwards": "nothing (checked after return)",
            "same push retried after the nodes returned": "201, byte-identical",
        },
    )


def test_raft_majority_lost_outcome_is_all_or_nothing(
    make_cluster: Callable[..., LocalCluster], record_summary: RecordSummary
) -> None:
    """W=1, so chunks still reach their quorum on the one live node, but Raft has no
    majority: the commit cannot be acknowledged and the client gets 503. Its outcome is
    *unknown*, not "failed": the ex-leader may have appended the command, and it commits
    when the others return (Raft's rule; every command is idempotent, so the client's retry
    is safe). What must hold is atomicity: afterwards each write is either wholly visible
    (byte-identical) or wholly absent, and the retried push succeeds."""
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        replicas=3,
        write_quorum=1,
        chunk_size=CHUNK,
        extra={"node": {"raft_command_timeout": 2.0}, "gateway": {"rpc_timeout_seconds": 6.0}},
    )
    rng = random.Random()
    base = cluster.gateway_url
    spec = random_image(rng, "quorum/raft", CHUNK)
    stored = random_image(rng, "quorum/raft-manifest", CHUNK)
    for _, digest, data in stored.blobs():
        assert push_blob(base, stored.repo, digest, data)[0] == 201
    leader = cluster.leader_index()
    followers = [i for i in range(3) if i != leader]
    for i in followers:
        cluster.kill_node(i)
    _, digest, data = spec.blobs()[2]
    assert_unavailable(push_blob(base, spec.repo, digest, data), "blob upload, no majority")
    assert_unavailable(
        request(
            base,
            "PUT",
            f"/v2/{stored.repo}/manifests/{stored.tag}",
            stored.manifest(),
            {"Content-Type": MANIFEST_TYPE},
        ),
        "manifest PUT, no majority",
    )
    for i in followers:
        cluster.start_node(i)
    cluster.wait_ready(60)
    status, _, body = with_retries(lambda: request(base, "GET", f"/v2/{spec.repo}/blobs/{digest}"))
    assert (status, body) in ((200, data), (404, body)), (status, body[:200])
    if status == 404:
        assert b"BLOB_UNKNOWN" in body
    blob_later = status == 200
    status, headers, body = with_retries(
        lambda: request(
            base,
            "GET",
            f"/v2/{stored.repo}/manifests/{stored.tag}",
            headers={"Accept": MANIFEST_TYPE},
        )
    )
    if status == 200:
        assert body == stored.manifest()
        assert headers["Docker-Content-Digest"] == stored.digest
    else:
        assert status == 404 and b"MANIFEST_UNKNOWN" in body, (status, body[:200])
    manifest_later = status == 200
    push_image(base, spec)
    push_image(base, stored)
    assert verify_images([base], [spec, stored], settle=30).images == 2
    record_summary(
        "5c. quorum: W=1, Raft majority lost (two followers down)",
        {
            "writes answered 503 UNAVAILABLE + Retry-After": "blob POST, manifest PUT",
            "blob visible after the nodes returned": blob_later,
            "manifest/tag visible after the nodes returned": manifest_later,
            "meaning": "a 503 after a Raft timeout is an unknown outcome, resolved atomically",
            "same push retried": "201, byte-identical",
        },
    )
