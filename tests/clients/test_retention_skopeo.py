"""Retention seen by a real client: skopeo pushes two images, `admin retention` keeps the
one its policy names, and skopeo pulls the survivor byte for byte while the other is gone
(`manifest unknown`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cargohold_cli.admin import admin_config, run_retention
from cargohold_cli.devcluster import LocalCluster
from clients.oci_layout import read_blobs, write_image_layout
from clients.tools import ToolError, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


def test_skopeo_pulls_the_survivor_of_a_retention_run(
    skopeo_tool: None, make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        extra={"lifecycle": {"retention": ["ret/*: keep_tags=keep-*"]}},
    )
    host = cluster.gateway_urls[0].removeprefix("http://")
    layouts = {}
    for tag in ("keep-1", "drop-1"):
        layouts[tag] = tmp_path / tag
        write_image_layout(layouts[tag], seed=uuid.uuid4().hex, big_size=512 * 1024)
        dest = f"docker://{host}/ret/app:{tag}"
        skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, f"oci:{layouts[tag]}:v1", dest)
    admin = admin_config(str(cluster.admin_config_path()))
    result = run_retention(cluster.node_grpc_addresses, False, admin)
    assert (result["tags_deleted"], result["manifests_deleted"]) == (1, 1), result
    out = tmp_path / "out"
    skopeo(
        "copy",
        "--quiet",
        "--preserve-digests",
        *NO_TLS,
        f"docker://{host}/ret/app:keep-1",
        f"oci:{out}:v1",
    )
    assert read_blobs(out) == read_blobs(layouts["keep-1"])
    with pytest.raises(ToolError) as gone:
        skopeo("inspect", "--tls-verify=false", f"docker://{host}/ret/app:drop-1", timeout=60)
    assert "manifest unknown" in gone.value.output.lower(), gone.value.output
