"""skopeo against the registry: push an OCI layout, mount it into another repository
through the other gateway, copy it back out, and compare every blob byte for byte;
inspect, list-tags, delete; and a two-platform index with `--all`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from clients.oci_layout import read_blobs, write_image_layout, write_index_layout
from clients.registries import RegistryTarget
from clients.tools import ToolError, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


def _copy(src: str, dest: str, *extra: str) -> None:
    skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, *extra, src, dest)


def _inspect(ref: str, *extra: str) -> str:
    return skopeo("inspect", "--tls-verify=false", *extra, ref)


def _tags(ref: str) -> list[str]:
    try:
        out = skopeo("list-tags", "--tls-verify=false", ref)
    except ToolError as exc:
        # A repository left with no tag may answer NAME_UNKNOWN (Distribution does).
        if "NAME_UNKNOWN" in exc.output or "name unknown" in exc.output.lower():
            return []
        raise
    return sorted(json.loads(out)["Tags"] or [])


def test_copy_mount_roundtrip_inspect_list_delete(
    registry_target: RegistryTarget, skopeo_tool: None, tmp_path: Path, unique_repo: str
) -> None:
    seed = uuid.uuid4().hex
    src = write_image_layout(tmp_path / "src", seed)
    repo_a = f"{unique_repo}/a"
    repo_b = f"{unique_repo}/b"
    host, other = registry_target.host, registry_target.other_host

    _copy(f"oci:{src.path}:v1", f"docker://{host}/{repo_a}:v1")
    _copy(f"oci:{src.path}:v1", f"docker://{host}/{repo_a}:v2")
    # Registry to registry, through the other gateway: skopeo mounts the known blobs.
    _copy(f"docker://{host}/{repo_a}:v1", f"docker://{other}/{repo_b}:v1")

    out = tmp_path / "out"
    _copy(f"docker://{other}/{repo_b}:v1", f"oci:{out}:v1")
    pulled = read_blobs(out)
    assert set(src.blobs) <= set(pulled), "blobs missing after the round trip"
    for digest, data in src.blobs.items():
        assert pulled[digest] == data, f"blob {digest} changed in the round trip"

    info = json.loads(_inspect(f"docker://{other}/{repo_b}:v1"))
    assert info["Digest"] == src.top_digest
    assert info["Layers"] == src.layer_digests
    assert info["Labels"] == {"seed": seed}
    raw = _inspect(f"docker://{host}/{repo_a}:v2", "--raw")
    assert raw.encode() == src.blobs[src.top_digest]

    assert _tags(f"docker://{host}/{repo_a}") == ["v1", "v2"]
    assert _tags(f"docker://{other}/{repo_b}") == ["v1"]

    # Delete by digest: the manifest and both its tags go, in this repository only.
    skopeo("delete", "--tls-verify=false", f"docker://{host}/{repo_a}@{src.top_digest}")
    assert _tags(f"docker://{other}/{repo_a}") == []
    with pytest.raises(ToolError):
        _inspect(f"docker://{other}/{repo_a}:v1")
    info_b = json.loads(_inspect(f"docker://{host}/{repo_b}:v1"))
    assert info_b["Digest"] == src.top_digest


def test_copy_all_platforms_of_an_index(
    registry_target: RegistryTarget, skopeo_tool: None, tmp_path: Path, unique_repo: str
) -> None:
    src = write_index_layout(tmp_path / "src", uuid.uuid4().hex)
    host, other = registry_target.host, registry_target.other_host

    _copy(f"oci:{src.path}:v1", f"docker://{host}/{unique_repo}:multi", "--all")
    raw = _inspect(f"docker://{other}/{unique_repo}:multi", "--raw")
    assert raw.encode() == src.blobs[src.top_digest]

    out = tmp_path / "out"
    _copy(f"docker://{other}/{unique_repo}:multi", f"oci:{out}:v1", "--all")
    pulled = read_blobs(out)
    for digest, data in src.blobs.items():
        assert pulled.get(digest) == data, f"blob {digest} differs after the round trip"
    # Each platform's manifest is addressable by digest.
    for digest in src.manifest_digests:
        child = _inspect(f"docker://{host}/{unique_repo}@{digest}", "--raw")
        assert child.encode() == src.blobs[digest]
