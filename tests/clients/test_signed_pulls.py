"""Signed images with real clients (docs/security.md "Signed images"): a dev cluster whose
namespace `prod` requires a signature by its registered key. Images are pushed with
skopeo (and the docker engine for one case); cosign-format signatures made by
tests/signing_kit.py are pushed with skopeo too, under the cosign tag `sha256-<hex>.sig`
and as an OCI 1.1 referrer. The signed images pull with skopeo, podman and docker; an
unsigned image, one signed by an unregistered key and one whose signature names another
digest are each refused (403 DENIED) with the reason in the client's output; the
signatures themselves stay pullable; every refusal is a `policy` record of the activity
log, and the log still verifies."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cluster.admin_kit import admin_run
from cluster.test_audit_log import admin_audit, records

from cargohold_cli.devcluster import LocalCluster
from clients.images import LayeredImage
from clients.oci_layout import (
    MT_MANIFEST,
    OciLayout,
    read_blobs,
    write_artifact_layout,
    write_image_layout,
)
from clients.tools import Podman, ToolError, have, run, skopeo
from tests import signing_kit as kit

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
REPO = "prod/app"
UNSIGNED = "unsigned: no signature found"
WRONG_KEY = "not signed by a registered key"
OTHER_DIGEST = "the signature names another digest"


@dataclass
class Protected:
    """A cluster whose namespace `prod` requires a signature by `key`."""

    cluster: LocalCluster
    host: str
    key: kit.PrivateKey
    workdir: Path

    def ref(self, tag_or_digest: str) -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"docker://{self.host}/{REPO}{sep}{tag_or_digest}"

    def push_layout(self, layout: Path, tag: str) -> None:
        skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, f"oci:{layout}:{tag}",
               self.ref(tag))  # fmt: skip

    def push_image(self, tag: str) -> OciLayout:
        """A fresh image (an OCI layout written here), pushed with skopeo as `tag`."""
        layout = write_image_layout(self.workdir / tag, uuid.uuid4().hex, big_size=256 * 1024)
        skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, f"oci:{layout.path}:v1",
               self.ref(tag))  # fmt: skip
        return layout

    def push_signature(
        self,
        digest: str,
        key: kit.PrivateKey,
        *,
        names: str | None = None,
        subject_size: int | None = None,
    ) -> kit.Signature:
        """A signature of `digest` by `key` (its payload naming `names`, by default that
        digest), pushed with skopeo: under the cosign tag, or with `subject_size` as an
        OCI 1.1 referrer of `digest` (under a plain tag)."""
        subject = None
        if subject_size is not None:
            subject = {"mediaType": MT_MANIFEST, "digest": digest, "size": subject_size}
        sig = kit.signature(key, f"{self.host}/{REPO}", names or digest, subject=subject)
        tag = kit.signature_tag(digest) if subject is None else f"sig-{uuid.uuid4().hex[:8]}"
        layout = self.workdir / f"sig-{uuid.uuid4().hex[:8]}"
        write_artifact_layout(layout, sig.manifest, sig.blobs, tag)
        self.push_layout(layout, tag)
        return sig


def _size(layout: OciLayout) -> int:
    return len(layout.blobs[layout.top_digest])


@pytest.fixture
def protected(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> Protected:
    cluster = make_cluster(nodes=3, gateways=1, extra={"audit": {"flush_seconds": 0.2}})
    key = kit.new_key()
    pem = tmp_path / "release.pem"
    pem.write_text(kit.public_pem(key))
    admin_run(cluster, "namespaces", "add", "prod")
    admin_run(cluster, "trust", "add-key", "prod", "release", "--file", str(pem))
    admin_run(cluster, "trust", "require-signature", "prod", "on")
    host = cluster.gateway_urls[0].removeprefix("http://")
    return Protected(cluster, host, key, tmp_path)


def refused_with(output: str, reason: str) -> bool:
    return "denied" in output.lower() and reason in output


def policy_refusals(cluster: LocalCluster, wanted: int) -> list[dict[str, Any]]:
    """The `policy` records of the activity log, once at least `wanted` are there."""
    found: list[dict[str, Any]] = []
    for _ in range(120):  # the gateway flushes every 0.2 s; poll, never assert a time
        found = [r for r in records(cluster, "--action", "policy") if r["result"] == "denied"]
        if len(found) >= wanted:
            break
        time.sleep(0.5)
    return found


def test_skopeo_and_podman_pull_only_what_the_policy_trusts(
    skopeo_tool: None, protected: Protected
) -> None:
    p = protected
    by_tag, by_referrer = p.push_image("signed"), p.push_image("referred")
    unsigned, wrong_key, copied = (
        p.push_image("unsigned"),
        p.push_image("wrong-key"),
        p.push_image("copied"),
    )
    tag_sig = p.push_signature(by_tag.top_digest, p.key)
    ref_sig = p.push_signature(by_referrer.top_digest, p.key, subject_size=_size(by_referrer))
    p.push_signature(wrong_key.top_digest, kit.new_key())
    # A valid signature by the registered key, of `signed`, put under `copied`'s tag.
    p.push_signature(copied.top_digest, p.key, names=by_tag.top_digest)

    # skopeo pulls the signed images, by tag and by digest, byte for byte.
    for layout, tag in ((by_tag, "signed"), (by_referrer, "referred")):
        for ref in (tag, layout.top_digest):
            out = p.workdir / f"out-{uuid.uuid4().hex[:8]}"
            skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, p.ref(ref), f"oci:{out}:v1")
            assert read_blobs(out) == read_blobs(layout.path)
    # ... and is refused the others, the reason in what it prints.
    for tag, reason in (("unsigned", UNSIGNED), ("wrong-key", WRONG_KEY), ("copied", OTHER_DIGEST)):
        with pytest.raises(ToolError) as refused:
            skopeo("copy", "--quiet", *NO_TLS, p.ref(tag), f"oci:{p.workdir / 'never'}:v1")
        assert refused_with(refused.value.output, reason), refused.value.output
        with pytest.raises(ToolError) as inspected:
            skopeo("inspect", "--tls-verify=false", p.ref(tag), timeout=60)
        assert refused_with(inspected.value.output, reason), inspected.value.output

    # The signatures stay pullable: the cosign tag, the referrer by digest, the listing.
    out = p.workdir / "sig-out"
    skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS,
           p.ref(kit.signature_tag(by_tag.top_digest)), f"oci:{out}:v1")  # fmt: skip
    assert tag_sig.payload in read_blobs(out).values()
    raw = skopeo("inspect", "--raw", "--tls-verify=false", p.ref(ref_sig.digest), timeout=60)
    assert json.loads(raw)["subject"]["digest"] == by_referrer.top_digest
    with urllib.request.urlopen(
        f"http://{p.host}/v2/{REPO}/referrers/{by_referrer.top_digest}", timeout=30
    ) as resp:
        listed = [m["digest"] for m in json.loads(resp.read())["manifests"]]
    assert ref_sig.digest in listed

    refusals = 6  # skopeo copy and inspect of each of three images
    if have("podman"):
        podman = Podman(p.workdir / "podman")
        try:
            podman("pull", "-q", "--tls-verify=false", f"{p.host}/{REPO}:signed")
            podman("pull", "-q", "--tls-verify=false", f"{p.host}/{REPO}:referred")
            for tag, reason in (("unsigned", UNSIGNED), ("copied", OTHER_DIGEST)):
                denied = podman("pull", "--tls-verify=false", f"{p.host}/{REPO}:{tag}", check=False)
                assert refused_with(denied, reason), denied
                refusals += 1
        finally:
            podman("rmi", "-a", "-f", check=False)
            podman.close()

    # Every refusal is in the activity log with its reason; the chain verifies.
    found = policy_refusals(p.cluster, refusals)
    reasons = {(r["reference"], r["digest"], r["detail"]) for r in found}
    assert reasons == {
        ("unsigned", unsigned.top_digest, f"signature: {UNSIGNED}"),
        ("wrong-key", wrong_key.top_digest, f"signature: {WRONG_KEY}"),
        ("copied", copied.top_digest, f"signature: {OTHER_DIGEST}"),
    }
    assert len(found) >= refusals
    assert all(r["repository"] == REPO and r["client"] for r in found)
    done = admin_audit(p.cluster, "verify")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.docker
def test_docker_pulls_once_signed(
    skopeo_tool: None, fresh_image: LayeredImage, protected: Protected
) -> None:
    p = protected
    ref = f"{p.host}/{REPO}:docker"
    run(["docker", "tag", fresh_image.tag, ref])
    fresh_image.extra_tags.append(ref)
    pushed = run(["docker", "push", ref])
    found = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
    assert found, pushed
    digest = found.group(1)
    run(["docker", "rmi", ref])
    with pytest.raises(ToolError) as refused:
        run(["docker", "pull", ref])
    assert UNSIGNED in refused.value.output, refused.value.output
    p.push_signature(digest, p.key)
    run(["docker", "pull", ref])
    out = run(["docker", "run", "--rm", "--network", "none", ref])
    assert out.strip().encode() == fresh_image.files["/data/hello.txt"].strip()
    # docker asks by HEAD, then GET: each refusal is recorded.
    found = [r for r in policy_refusals(p.cluster, 1) if r["reference"] == "docker"]
    assert found and all(r["digest"] == digest for r in found)
    assert all("docker" in r["user_agent"].lower() for r in found), found
