"""The SBOM of a real image and a real match: the project's own debootstrap base image
(`make base-image`, Debian bookworm) copied with skopeo from the Docker engine into one
cluster with scanning on (pushed once for the module; docs/supply-chain.md).

- its CycloneDX referrer lists exactly the packages and versions `dpkg-query -W` prints
  inside a container of that image;
- an OSV advisory made here for one of its source packages (glibc, ecosystem `Debian:12`)
  at exactly the version the SBOM lists, imported with `cargohold admin vulndb import`, is
  listed by `admin scan show` with its severity; `block_severity=high` makes skopeo's
  inspect of the image fail with 403 DENIED naming the CVE; the allowlist lets it through; a
  second database where that version is fixed re-matches the stored SBOM without a push
  and the image is pullable again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster.sbomkit import sboms_of, wait_scan
from cluster.shapes import QUIET_ROLES
from cluster.vulnkit import (
    FAST_POLICY,
    HIGH_CVSS,
    admin_cli,
    advisory,
    osv_zip,
    refused_body,
    reports,
    status_is,
    until,
)
from packageurl import PackageURL

from cargohold_cli.devcluster import LocalCluster
from clients.tools import ToolError, docker, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.docker, pytest.mark.cluster, pytest.mark.slow]

BASE_IMAGE = "cargohold-base:bookworm"
NAMESPACE = "base"
REPO = f"{NAMESPACE}/debian"
TAG = "bookworm"
CVE = "CVE-2099-4242"


@dataclass(frozen=True)
class PushedBase:
    """The module's cluster and the base image pushed into it (scanned)."""

    cluster: LocalCluster
    host: str
    digest: str

    @property
    def base(self) -> str:
        return self.cluster.gateway_url


@functools.cache
def _dpkg_query() -> dict[str, str]:
    """{package: version} of every installed package, as dpkg inside the image says."""
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        BASE_IMAGE,
        "dpkg-query",
        "-W",
        "-f",
        "${Package}\\t${Version}\\t${db:Status-Status}\\n",
    )
    found = {}
    for line in out.splitlines():
        name, version, status = line.split("\t")
        if status == "installed":
            found[name] = version
    return found


@pytest.fixture(scope="module")
def pushed_base(
    docker_engine: None, skopeo_tool: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PushedBase]:
    if not docker("image", "inspect", BASE_IMAGE, check=False).lstrip().startswith("["):
        pytest.fail(f"{BASE_IMAGE} missing: `make base-image` builds it (make test does)")
    cluster = LocalCluster(
        tmp_path_factory.mktemp("base-image"),
        nodes=3,
        gateways=1,
        extra={
            "node": dict(QUIET_ROLES),
            "scanner": {"enabled": True, "poll_seconds": 0.2},
            "policy": dict(FAST_POLICY),
        },
    )
    try:
        cluster.start(timeout=90)
        admin_cli(cluster, "namespaces", "add", NAMESPACE)
        host = cluster.gateway_url.removeprefix("http://")
        pushed_at = time.monotonic()
        skopeo(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            f"docker-daemon:{BASE_IMAGE}",
            f"docker://{host}/{REPO}:{TAG}",
        )
        digest = _inspect(host).strip()
        record = asyncio.run(wait_scan(cluster, REPO, digest, wait=300))
        assert record.state == "done", record
        print(f"base image scanned {time.monotonic() - pushed_at:.1f} s after the push started")
        yield PushedBase(cluster, host, digest)
    finally:
        cluster.stop()


def _inspect(host: str) -> str:
    """skopeo's inspect of the pushed image (a manifest GET by tag): its digest."""
    return skopeo(
        "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{host}/{REPO}:{TAG}"
    )


async def _sbom_components(pushed: PushedBase) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        [sbom] = await sboms_of(http, pushed.base, REPO, pushed.digest)
    return list(sbom["document"]["components"])


async def test_base_image_sbom_matches_dpkg_query(pushed_base: PushedBase) -> None:
    components = await _sbom_components(pushed_base)
    deb = {c["name"]: c["version"] for c in components if c["purl"].startswith("pkg:deb/")}
    expected = await asyncio.to_thread(_dpkg_query)
    assert len(expected) > 50  # a real Debian system, not an empty answer
    assert deb == expected
    # Every dpkg component carries the Debian purl of the contract.
    for c in (c for c in components if c["purl"].startswith("pkg:deb/")):
        purl = PackageURL.from_string(c["purl"])
        assert (purl.namespace, purl.name, purl.version) == ("debian", c["name"], c["version"])
        assert purl.qualifiers == {"arch": purl.qualifiers["arch"], "distro": "debian-12"}
    libc = next(c for c in components if c["name"] == "libc6")
    assert {"name": "cargohold:source", "value": "glibc"} in libc["properties"]


def _props(component: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties") or []}


async def test_a_real_package_is_matched_blocked_allowlisted_then_fixed(
    pushed_base: PushedBase, tmp_path: Path
) -> None:
    cluster, host, digest, base = (
        pushed_base.cluster,
        pushed_base.host,
        pushed_base.digest,
        pushed_base.base,
    )
    # The advisory names the source package, as Debian's do, at libc6's version in the SBOM
    # (the version dpkg-query prints; glibc's binaries carry their source's version).
    components = await _sbom_components(pushed_base)
    libc = next(c for c in components if c["name"] == "libc6")
    version = libc["version"]
    assert version == (await asyncio.to_thread(_dpkg_query))["libc6"]
    assert _props(libc).get("cargohold:source-version", version) == version
    glibc = sorted(
        c["name"]
        for c in components
        if _props(c).get("cargohold:source") == "glibc"
        and c["purl"].startswith("pkg:deb/")
        and c["version"] == version
    )
    assert "libc6" in glibc and "libc-bin" in glibc  # both binaries of the one source
    affected = advisory(
        CVE,
        "glibc",
        f"{version}+1",  # the next upload after this one fixes it
        summary="glibc: test advisory made by the client test",
        severity=[{"type": "CVSS_V3", "score": HIGH_CVSS}],
    )
    affected["affected"][0]["ranges"][0]["events"][0] = {"introduced": version}
    first = tmp_path / f"{CVE}.json"
    first.write_text(json.dumps(affected))
    admin_cli(cluster, "vulndb", "import", str(first))
    first_db = json.loads(admin_cli(cluster, "vulndb", "status", "--json").stdout)["digest"]

    # `scan show` lists the finding, with its severity, for every glibc binary package.
    ref = f"{REPO}@{digest}"
    shown = json.loads(admin_cli(cluster, "scan", "show", ref, "--json").stdout)
    found = sorted(
        (v["id"], v["severity"], v["package"], v["version"]) for v in shown["vulnerabilities"]
    )
    assert found == [(CVE, "high", name, version) for name in glibc]
    assert shown["summary"]["high"] == len(glibc)
    text = admin_cli(cluster, "scan", "show", ref).stdout
    assert f"high     {CVE}" in text and f"libc6 {version}" in text, text

    async with aiohttp.ClientSession() as http:

        async def stored_for(db: str) -> list[Any]:
            found = await reports(http, base, REPO, digest)
            ok = [r for r in found if r["annotations"]["dev.cargohold.vulndb.digest"] == db]
            return found if ok and len(found) == 1 else []

        assert await until(lambda: stored_for(first_db)), await reports(http, base, REPO, digest)

        # block_severity=high: skopeo is refused with 403 DENIED naming the CVE.
        admin_cli(cluster, "trust", "vuln-policy", NAMESPACE, "--block-severity", "high")
        url = f"{base}/v2/{REPO}/manifests/{TAG}"
        refused = await until(lambda: refused_body(http, url))
        assert refused, "the policy never refused the pull"
        status, body = refused
        (error,) = body["errors"]
        assert status == 403
        assert error["code"] == "DENIED" and CVE in error["message"], error
        with pytest.raises(ToolError) as denied:
            await asyncio.to_thread(_inspect, host)
        # skopeo says `denied` (the OCI code of the 403) and passes the gateway's reason on.
        output = denied.value.output
        assert "denied: pull refused by the vulnerability policy" in output and CVE in output

        # The allowlist unblocks it.
        admin_cli(
            cluster, "trust", "vuln-policy", NAMESPACE, "--block-severity", "high", "--allow", CVE
        )
        assert await until(lambda: status_is(http, url, 200))
        assert (await asyncio.to_thread(_inspect, host)).strip() == digest
        admin_cli(cluster, "trust", "vuln-policy", NAMESPACE, "--block-severity", "high")
        assert await until(lambda: status_is(http, url, 403))

        # A database where this version is fixed: re-matched from the stored SBOM, no push.
        fixed = osv_zip(
            tmp_path / "fixed" / "Debian.zip",
            [advisory(CVE, "glibc", version, severity=[{"type": "CVSS_V3", "score": HIGH_CVSS}])],
        )
        admin_cli(cluster, "vulndb", "import", str(fixed))
        second_db = json.loads(admin_cli(cluster, "vulndb", "status", "--json").stdout)["digest"]
        assert second_db != first_db
        assert await until(lambda: stored_for(second_db)), await reports(http, base, REPO, digest)
        shown = json.loads(admin_cli(cluster, "scan", "show", ref, "--json").stdout)
        assert shown["vulnerabilities"] == [], shown["vulnerabilities"]
        assert await until(lambda: status_is(http, url, 200))
        assert (await asyncio.to_thread(_inspect, host)).strip() == digest
