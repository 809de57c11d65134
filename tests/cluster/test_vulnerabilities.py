"""Vulnerability matching on a real cluster (3 nodes, 1 gateway; docs/supply-chain.md): an
image pushed with skopeo gets a CycloneDX SBOM referrer (made here, in the scanner's
format); an OSV `Debian.zip` made here affects one of its packages at its version.

- `cargohold admin vulndb import` + `admin scan show` (and the admin HTTP API) list the
  finding with its severity;
- `block_severity=high` refuses the pull (403 DENIED naming the CVE, for HEAD and GET, and
  for skopeo), while the SBOM and the report referrers stay pullable; the refusal is in
  the activity log;
- the allowlist (the CVE id) lets skopeo pull it again;
- importing a database where that version is fixed re-matches without a push or a pull
  (the gateway's background pass replaces the stored report), and the pull works again;
- `unscanned=deny` refuses an image that has no SBOM.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clients.oci_layout import write_image_layout
from clients.tools import ToolError, have, skopeo

from cargohold_cli.devcluster import LocalCluster
from cluster.registry_client import RegistryClient
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.test_audit_log import records, wait_for
from cluster.vulnkit import (
    FAST_POLICY,
    HIGH_CVSS,
    OCI_MANIFEST,
    admin_cli,
    advisory,
    get_status,
    osv_zip,
    refused_body,
    reports,
    status_is,
    until,
)

pytestmark = pytest.mark.cluster

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
SBOM_TYPE = "application/vnd.cyclonedx+json"
EMPTY = b"{}"
CVE = "CVE-2099-0001"
ZLIB_VERSION = "1:1.2.13.dfsg-1"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sbom_document(repo: str, digest: str) -> bytes:
    """A CycloneDX 1.5 SBOM as the scanner writes it (docs/supply-chain.md)."""

    def deb(name: str, version: str, source: str | None = None) -> dict[str, Any]:
        purl = f"pkg:deb/debian/{name}@{version.replace(':', '%3A').replace('+', '%2B')}"
        props = [{"name": "cargohold:package-type", "value": "deb"}]
        if source:
            props.append({"name": "cargohold:source", "value": source})
        return {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": f"{purl}?arch=amd64&distro=debian-12",
            "properties": props,
        }

    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": {"type": "container", "name": repo, "version": digest}},
        "components": [
            deb("base-files", "12.4+deb12u5"),
            deb("libc6", "2.36-9+deb12u4", "glibc"),
            deb("zlib1g", ZLIB_VERSION, "zlib"),
        ],
    }
    return json.dumps(doc, sort_keys=True).encode()


def debian_zip(path: Path, fixed: str) -> Path:
    """OSV's `Debian.zip`: this advisory affects the source package zlib of Debian 12
    before `fixed` (CVSS 7.5: high); another names a package not in the image."""
    summary = "zlib: test advisory made by the cluster test"
    return osv_zip(
        path,
        [
            advisory(
                CVE,
                "zlib",
                fixed,
                summary=summary,
                severity=[{"type": "CVSS_V3", "score": HIGH_CVSS}],
            ),
            advisory("CVE-2099-0002", "openssl", "9.9"),
        ],
    )


async def attach_sbom(client: RegistryClient, base: str, repo: str, image: dict[str, Any]) -> str:
    body = sbom_document(repo, image["digest"])
    for blob in (EMPTY, body):
        await client.push_blob(base, repo, sha256(blob), blob, monolithic=True)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(EMPTY),
            "size": 2,
        },
        "layers": [{"mediaType": SBOM_TYPE, "digest": sha256(body), "size": len(body)}],
        "subject": image,
    }
    data = json.dumps(manifest).encode()
    return await client.put_manifest(base, repo, sha256(data), data)


async def test_a_vulnerable_image_is_reported_blocked_allowlisted_then_fixed_by_a_new_db(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "audit": {"flush_seconds": 0.2},
            "policy": dict(FAST_POLICY),
        },
    )
    base = cluster.gateway_url
    host = base.removeprefix("http://")
    repo = "prod/app"
    client = RegistryClient(http)
    admin_cli(cluster, "namespaces", "add", "prod")
    src = write_image_layout(tmp_path / "src", uuid.uuid4().hex, big_size=128 * 1024)
    skopeo("copy", "--quiet", *NO_TLS, f"oci:{src.path}:v1", f"docker://{host}/{repo}:v1")
    digest = src.top_digest
    image = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(src.blobs[digest])}
    sbom = await attach_sbom(client, base, repo, image)

    # Before any database: not scanned.
    shown = admin_cli(cluster, "scan", "show", f"{repo}@{digest}")
    assert "not scanned (no database)" in shown.stdout
    imported = admin_cli(
        cluster,
        "vulndb",
        "import",
        str(debian_zip(tmp_path / "Debian.zip", "1:1.2.13.dfsg-1+deb12u1")),
    )
    assert "generation 1: 2 advisories (Debian:12 2;" in imported.stdout
    status = json.loads(admin_cli(cluster, "vulndb", "status", "--json").stdout)
    assert (status["generation"], status["source"]) == (1, "Debian.zip")
    first_db = status["digest"]

    # The report lists the one affected package, with its severity.
    shown = json.loads(admin_cli(cluster, "scan", "show", f"{repo}:v1", "--json").stdout)
    found = [(v["id"], v["severity"], v["package"], v["version"]) for v in shown["vulnerabilities"]]
    assert found == [(CVE, "high", "zlib1g", ZLIB_VERSION)]
    assert shown["summary"]["high"] == 1 and shown["sboms"] == [sbom]
    text = admin_cli(cluster, "scan", "show", f"{repo}@{digest}").stdout
    assert (
        f"high     {CVE}" in text
        and "zlib1g 1:1.2.13.dfsg-1 (fixed: 1:1.2.13.dfsg-1+deb12u1)" in text
    )

    # The admin HTTP API answers the same report, and the database's status.
    api = f"{base}/_cargohold/api/v1"
    async with http.get(f"{api}/repositories/{repo}/vulnerabilities/v1") as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert (answer["digest"], answer["scanned"], answer["summary"]["high"]) == (digest, True, 1)
    assert [(v["id"], v["severity"]) for v in answer["vulnerabilities"]] == [(CVE, "high")]
    async with http.get(f"{api}/vulndb") as resp:
        assert (await resp.json())["generation"] == 1
    async with http.get(f"{api}/repositories/{repo}/vulnerabilities/nope") as resp:
        assert resp.status == 404

    # The gateway's background pass stores the report as a referrer of the image.
    async def stored_for(db: str) -> list[Any]:
        found = await reports(http, base, repo, digest)
        ok = [r for r in found if r["annotations"]["dev.cargohold.vulndb.digest"] == db]
        return found if ok and len(found) == 1 else []

    stored = await until(lambda: stored_for(first_db))
    assert stored, await reports(http, base, repo, digest)
    (report,) = stored
    assert report["annotations"]["dev.cargohold.vulnerabilities"].startswith("critical=0,high=1")

    # block_severity=high: the pull is refused, naming the CVE; artifacts stay pullable.
    admin_cli(cluster, "trust", "vuln-policy", "prod", "--block-severity", "high")
    url = f"{base}/v2/{repo}/manifests/v1"

    async def refused() -> Any:
        got = await get_status(http, url)
        return got if got[0] == 403 else None

    _status, body = await until(refused)
    (error,) = body["errors"]
    assert error["code"] == "DENIED"
    assert CVE in error["message"] and "zlib1g" in error["message"], error
    assert error["detail"]["vulnerabilities"] == [CVE]
    assert (await get_status(http, f"{base}/v2/{repo}/manifests/{digest}", "HEAD"))[0] == 403
    with pytest.raises(ToolError) as denied:
        skopeo(
            "copy", "--quiet", *NO_TLS, f"docker://{host}/{repo}:v1", f"oci:{tmp_path / 'out1'}:v1"
        )
    assert CVE in denied.value.output
    for artifact in (sbom, report["digest"]):
        assert (await get_status(http, f"{base}/v2/{repo}/manifests/{artifact}"))[0] == 200

    # The refusal is in the activity log, by rule.
    def logged() -> list[dict[str, Any]]:
        return [r for r in records(cluster) if r["action"] == "policy"]

    (decision, *_) = await wait_for(logged)
    assert decision["result"] == "denied" and decision["repository"] == repo
    assert decision["detail"].startswith("vulnerability: vulnerable at or above high: " + CVE)

    # A threshold above the finding lets it through: critical does not block a high one.
    admin_cli(cluster, "trust", "vuln-policy", "prod", "--block-severity", "critical")
    assert await until(lambda: status_is(http, url, 200))
    # The allowlist unblocks it at high.
    admin_cli(cluster, "trust", "vuln-policy", "prod", "--block-severity", "high", "--allow", CVE)
    assert await until(lambda: status_is(http, url, 200))
    skopeo("copy", "--quiet", *NO_TLS, f"docker://{host}/{repo}:v1", f"oci:{tmp_path / 'out2'}:v1")
    admin_cli(cluster, "trust", "vuln-policy", "prod", "--block-severity", "high")
    assert await until(lambda: status_is(http, url, 403))

    # A database where this version is fixed: re-matched without a push (nor a pull).
    fixed_db = debian_zip(tmp_path / "fixed" / "Debian.zip", ZLIB_VERSION)
    admin_cli(cluster, "vulndb", "import", str(fixed_db))
    second_db = json.loads(admin_cli(cluster, "vulndb", "status", "--json").stdout)["digest"]
    assert second_db != first_db
    stored = await until(lambda: stored_for(second_db))
    assert stored, await reports(http, base, repo, digest)
    (report2,) = stored
    assert report2["annotations"]["dev.cargohold.vulnerabilities"].startswith("critical=0,high=0")
    assert report2["digest"] != report["digest"]  # the old report was replaced, not kept
    shown = json.loads(admin_cli(cluster, "scan", "show", f"{repo}@{digest}", "--json").stdout)
    assert shown["vulnerabilities"] == [] and shown["report"] == report2["digest"]
    assert await until(lambda: status_is(http, url, 200))
    skopeo("copy", "--quiet", *NO_TLS, f"docker://{host}/{repo}:v1", f"oci:{tmp_path / 'out3'}:v1")

    # unscanned=deny: an image without an SBOM is refused, saying why.
    other = write_image_layout(tmp_path / "other", uuid.uuid4().hex, big_size=64 * 1024)
    skopeo("copy", "--quiet", *NO_TLS, f"oci:{other.path}:v1", f"docker://{host}/prod/other:v1")
    admin_cli(
        cluster, "trust", "vuln-policy", "prod", "--block-severity", "high", "--unscanned", "deny"
    )
    _status, body = await until(lambda: refused_body(http, f"{base}/v2/prod/other/manifests/v1"))
    assert "not scanned" in body["errors"][0]["message"]
    assert (await get_status(http, url))[0] == 200  # the scanned one still pulls
    listed = admin_cli(cluster, "trust", "list", "--json").stdout
    (policy,) = json.loads(listed)
    assert (policy["block_severity"], policy["unscanned"]) == ("high", "deny")


async def test_the_scanners_sbom_is_matched_per_ecosystem_without_a_push(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With the real scanner: an image with a dpkg (gzip), an apk (zstd) and a Python layer
    is scanned on push; a directory of OSV JSON (Debian, Alpine, PyPI advisories made here)
    imported afterwards is matched against the stored SBOM by each gateway's background
    pass (no push, no pull) and the pull policy refuses it naming all three."""
    from cluster.sbomkit import Image, gzip_layer, tar_of, wait_scan, zstd_layer

    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "scanner": {"enabled": True, "poll_seconds": 0.2},
            "policy": dict(FAST_POLICY),
        },
    )
    base, repo = cluster.gateway_url, "team/svc"
    dpkg = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n"
    dpkg += b"Source: glibc\nVersion: 2.36-9+deb12u4\n"
    site = "usr/lib/python3.11/site-packages"
    image = Image(
        [
            gzip_layer(
                tar_of(
                    {
                        "var/lib/dpkg/status": dpkg,
                        "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\n',
                    }
                )
            ),
            zstd_layer(
                tar_of(
                    {
                        "lib/apk/db/installed": b"P:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n",
                        f"{site}/requests-2.31.0.dist-info/METADATA": (
                            b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\n"
                        ),
                    }
                )
            ),
        ]
    )
    digest = await image.push(RegistryClient(http), base, repo, "v1")
    assert (await wait_scan(cluster, repo, digest)).state == "done"

    def advisory(ident: str, eco: str, name: str, events: list[Any], **extra: Any) -> None:
        doc = {
            "id": ident,
            "affected": [
                {
                    "package": {"ecosystem": eco, "name": name},
                    "ranges": [{"type": "ECOSYSTEM", "events": events}],
                }
            ],
            **extra,
        }
        folder = tmp_path / "osv" / eco.split(":")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{ident}.json").write_text(json.dumps(doc))

    high = {
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"}]
    }
    advisory(
        "CVE-2099-1000",
        "Debian:12",
        "glibc",
        [{"introduced": "0"}, {"fixed": "2.36-9+deb12u7"}],
        **high,
    )
    advisory(
        "CVE-2099-1001", "Debian:12", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u4"}]
    )
    advisory(
        "ALPINE-CVE-2099-2000",
        "Alpine:v3.19",
        "openssl",
        [{"introduced": "0"}, {"fixed": "3.1.4-r6"}],
        aliases=["CVE-2099-2000"],
        database_specific={"severity": "CRITICAL"},
    )
    advisory(
        "GHSA-aaaa-bbbb-cccc",
        "PyPI",
        "Requests",
        [{"introduced": "2.3.0"}, {"fixed": "2.32.0"}],
        aliases=["CVE-2099-3000"],
        database_specific={"severity": "MODERATE"},
    )
    admin_cli(cluster, "namespaces", "add", "team")
    admin_cli(cluster, "vulndb", "import", str(tmp_path / "osv"))
    db = json.loads(admin_cli(cluster, "vulndb", "status", "--json").stdout)["digest"]

    async def stored() -> list[Any]:
        found = await reports(http, base, repo, digest)
        current = [r for r in found if r["annotations"]["dev.cargohold.vulndb.digest"] == db]
        return current

    (report,) = await until(stored)
    counts = report["annotations"]["dev.cargohold.vulnerabilities"]
    assert counts == "critical=1,high=1,medium=1,low=0,unknown=0"
    shown = json.loads(admin_cli(cluster, "scan", "show", f"{repo}:v1", "--json").stdout)
    assert shown["report"] == report["digest"]  # the stored one: the CLI did not match
    got = [(v["id"], v["severity"], v["package"], v["ecosystem"]) for v in shown["vulnerabilities"]]
    assert got == [
        ("ALPINE-CVE-2099-2000", "critical", "libcrypto3", "Alpine"),
        ("CVE-2099-1000", "high", "libc6", "Debian:12"),
        ("GHSA-aaaa-bbbb-cccc", "medium", "requests", "PyPI"),
    ]
    admin_cli(cluster, "trust", "vuln-policy", "team", "--block-severity", "medium")
    # Both gateways refuse it, naming the CVE ids.
    for gateway in cluster.gateway_urls:
        _status, body = await until(
            lambda g=gateway: refused_body(http, f"{g}/v2/{repo}/manifests/v1")
        )
        message = body["errors"][0]["message"]
        for cve in ("CVE-2099-1000", "CVE-2099-2000", "CVE-2099-3000"):
            assert cve in message, message
