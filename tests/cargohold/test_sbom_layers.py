"""The layer reader and package parsers of cargohold/sbom/: layers built here, in memory."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import zstandard
from cluster.sbomkit import tar_of as layer

from cargohold.errors import ScanError
from cargohold.sbom import cyclonedx
from cargohold.sbom.layers import FileSystem, Limits, read_layer, wanted
from cargohold.sbom.packages import packages_of

DPKG_STATUS = b"""Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Source: bash (5.2.15-2)

Package: oldthing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
APK_DB = b"""C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
o:musl
T:the musl c library

C:Q1def=
P:libcrypto3
V:3.1.4-r5
A:x86_64
o:openssl
"""
METADATA = b"Metadata-Version: 2.1\nName: Requests_Toolbelt\nVersion: 1.0.0\n\nName: body\n"


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def scan(*layers: bytes, limits: Limits | None = None) -> FileSystem:
    fs = FileSystem()
    for blob in layers:
        fs.apply(read_layer(io.BytesIO(blob), limits or Limits()))
    return fs


@pytest.mark.parametrize("compress", [lambda b: b, gz, zst], ids=["tar", "gzip", "zstd"])
def test_every_compression_reads_the_dpkg_status(compress) -> None:
    fs = scan(compress(layer({"./var/lib/dpkg/status": DPKG_STATUS, "etc/os-release": OS_RELEASE})))
    packages, release = packages_of(fs.files)
    assert release["VERSION_ID"] == "12"
    by_name = {p.name: p for p in packages}
    assert set(by_name) == {"libc6", "bash"}  # config-files only: not installed
    libc = by_name["libc6"]
    assert libc.version == "2.36-9+deb12u4"
    assert libc.purl == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
    assert ("cargohold:source", "glibc") in libc.properties
    bash = by_name["bash"]
    assert ("cargohold:source-version", "5.2.15-2") in bash.properties
    assert not any(k == "cargohold:source" for k, _ in bash.properties)


def test_multi_member_gzip_and_multi_frame_zstd_are_one_stream() -> None:
    tar = layer({"var/lib/dpkg/status": DPKG_STATUS, "pad.bin": b"x" * 300_000})
    half = len(tar) // 2
    assert scan(gz(tar[:half]) + gz(tar[half:])).files["var/lib/dpkg/status"] == DPKG_STATUS
    assert scan(zst(tar[:half]) + zst(tar[half:])).files["var/lib/dpkg/status"] == DPKG_STATUS


def test_whiteouts_delete_lower_files_in_layer_order() -> None:
    site = "usr/lib/python3/dist-packages"
    base = gz(
        layer(
            {
                "var/lib/dpkg/status": DPKG_STATUS,
                f"{site}/a-1.0.dist-info/METADATA": b"Name: a\nVersion: 1.0\n",
                f"{site}/b-2.0.dist-info/METADATA": b"Name: b\nVersion: 2.0\n",
                "lib/apk/db/installed": APK_DB,
            }
        )
    )
    upper = zst(
        layer(
            {
                # the file itself, and a whole directory, whited out
                "var/lib/dpkg/.wh.status": b"",
                f"{site}/.wh.a-1.0.dist-info": b"",
            },
            dirs=(site, f"{site}/b-2.0.dist-info"),  # a directory entry merges, not replaces
        )
    )
    fs = scan(base, upper)
    assert set(fs.files) == {f"{site}/b-2.0.dist-info/METADATA", "lib/apk/db/installed"}
    # A later layer may bring the file back.
    fs.apply(read_layer(io.BytesIO(layer({"var/lib/dpkg/status": b"Package: x\n"})), Limits()))
    assert "var/lib/dpkg/status" in fs.files


def test_opaque_directory_hides_only_lower_layers() -> None:
    site = "usr/local/lib/python3.11/site-packages"
    base = layer(
        {
            f"{site}/old-1.0.dist-info/METADATA": b"Name: old\nVersion: 1.0\n",
            "var/lib/dpkg/status": DPKG_STATUS,
        }
    )
    upper = layer(
        {
            f"{site}/.wh..wh..opq": b"",
            f"{site}/new-2.0.dist-info/METADATA": b"Name: new\nVersion: 2.0\n",
        }
    )
    fs = scan(base, upper)
    assert set(fs.files) == {f"{site}/new-2.0.dist-info/METADATA", "var/lib/dpkg/status"}


def test_a_symlink_replaces_a_lower_file() -> None:
    fs = scan(
        layer({"etc/os-release": OS_RELEASE, "usr/lib/os-release": b"ID=debian\nVERSION_ID=13\n"}),
        layer(symlinks={"etc/os-release": "../usr/lib/os-release"}),
    )
    assert "etc/os-release" not in fs.files
    _, release = packages_of(fs.files)
    assert release["VERSION_ID"] == "13"  # from /usr/lib/os-release then


def test_distroless_status_d_apk_python_and_npm() -> None:
    fs = scan(
        gz(
            layer(
                {
                    "var/lib/dpkg/status.d/base-files": b"Package: base-files\n"
                    b"Version: 12.4+deb12u5\nArchitecture: amd64\n",
                    "var/lib/dpkg/status.d/base-files.md5sums": b"abc  /etc/issue\n",
                    "var/lib/dpkg/status.d/libssl3": b"Package: libssl3\nSource: openssl\n"
                    b"Version: 3.0.11-1~deb12u2\nArchitecture: arm64\n",
                    "usr/lib/os-release": OS_RELEASE,
                }
            )
        ),
        zst(layer({"lib/apk/db/installed": APK_DB})),
        layer(
            {
                "usr/lib/python3/site-packages/Requests_Toolbelt-1.0.0.dist-info/METADATA": (
                    METADATA
                ),
                "opt/app/legacy.egg-info/PKG-INFO": b"Name: legacy\nVersion: 0.9\n",
                "usr/lib/python3/dist-packages/six-1.16.0.egg-info": b"Name: six\n"
                b"Version: 1.16.0\n",
                "app/node_modules/left-pad/package.json": json.dumps(
                    {"name": "left-pad", "version": "1.3.0"}
                ).encode(),
                "app/node_modules/@types/node/package.json": json.dumps(
                    {"name": "@types/node", "version": "20.1.0"}
                ).encode(),
                "app/node_modules/left-pad/lib/package.json": b"{}",  # not a package root
            }
        ),
    )
    packages, _ = packages_of(fs.files)
    purls = {p.purl for p in packages}
    assert purls == {
        "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=arm64&distro=debian-12",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64",
        "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64",
        "pkg:pypi/requests-toolbelt@1.0.0",
        "pkg:pypi/legacy@0.9",
        "pkg:pypi/six@1.16.0",
        "pkg:npm/left-pad@1.3.0",
        "pkg:npm/%40types/node@20.1.0",
    }
    by_purl = {p.purl: p for p in packages}
    assert by_purl["pkg:pypi/requests-toolbelt@1.0.0"].name == "Requests_Toolbelt"
    assert ("cargohold:source", "openssl") in by_purl[
        "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64"
    ].properties
    assert not by_purl["pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64"].properties


def test_only_wanted_files_are_kept() -> None:
    assert wanted("var/lib/dpkg/status.d/foo.md5sums") is None
    assert wanted("usr/bin/python3") is None
    fs = scan(gz(layer({"big.bin": b"\0" * 1_000_000, "var/lib/dpkg/status": DPKG_STATUS})))
    assert set(fs.files) == {"var/lib/dpkg/status"}


def test_limits_and_garbage_fail_the_scan() -> None:
    bomb = gz(layer({"zeros": b"\0" * 2_000_000}))
    with pytest.raises(ScanError, match="max_unpacked_bytes"):
        scan(bomb, limits=Limits(max_unpacked_bytes=1_000_000))
    with pytest.raises(ScanError, match="max_file_bytes"):
        scan(layer({"var/lib/dpkg/status": DPKG_STATUS}), limits=Limits(max_file_bytes=10))
    with pytest.raises(ScanError, match="not a tar"):
        scan(b"this is not a tar archive at all" * 40)
    with pytest.raises(ScanError, match="gzip"):
        scan(gz(layer({"var/lib/dpkg/status": DPKG_STATUS}))[:-30])
    with pytest.raises(ScanError, match="zstd"):
        scan(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)


def test_the_document_and_referrer_are_deterministic() -> None:
    fs = scan(layer({"var/lib/dpkg/status": DPKG_STATUS, "etc/os-release": OS_RELEASE}))
    packages, release = packages_of(fs.files)
    one = cyclonedx.document("lib/app", "sha256:" + "a" * 64, packages, release)
    two = cyclonedx.document("lib/app", "sha256:" + "a" * 64, packages, release)
    assert one == two
    doc = json.loads(one)
    assert doc["specVersion"] == "1.5" and doc["bomFormat"] == "CycloneDX"
    assert [c["name"] for c in doc["components"]] == ["bash", "libc6"]
    assert all({"name", "version", "purl"} <= set(c) for c in doc["components"])
    manifest = json.loads(
        cyclonedx.referrer_manifest(
            "application/vnd.oci.image.manifest.v1+json", "sha256:" + "a" * 64, 1234, one, 2
        )
    )
    assert manifest["artifactType"] == cyclonedx.SBOM_MEDIA_TYPE
    assert manifest["subject"]["digest"] == "sha256:" + "a" * 64
    assert manifest["layers"][0]["digest"] == cyclonedx.sha256(one)
    assert manifest["config"]["digest"] == cyclonedx.sha256(b"{}")
