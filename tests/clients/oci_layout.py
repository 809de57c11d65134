"""Write OCI image layouts by hand (no daemon, no network) for skopeo to copy.

`write_image_layout(dir, seed)` produces a layout whose `index.json` names one image
manifest (tag `v1`) with three gzip layers of known content — the largest (9 MiB of
seeded random bytes, incompressible) spans several 4 MiB chunks — and an image config.
`write_index_layout` adds an OCI image index over two such manifests (two platforms) for
`skopeo copy --all`; `write_artifact_layout` holds one given manifest and its blobs.
Every blob is kept in `OciLayout.blobs`, digest → bytes, so a copy
that came back out of a registry can be compared byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MiB = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class OciLayout:
    path: Path
    # The top object `index.json` points to for tag v1 (a manifest or an index).
    top_digest: str = ""
    top_media_type: str = ""
    manifest_digests: list[str] = field(default_factory=list)
    layer_digests: list[str] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add_blob(self, data: bytes) -> dict[str, Any]:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        blob_dir = self.path / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def write_index_json(self, tag: str = "v1") -> None:
        descriptor = {
            "mediaType": self.top_media_type,
            "digest": self.top_digest,
            "size": len(self.blobs[self.top_digest]),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (self.path / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": [descriptor]})
        )


def _tar_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(gzip bytes, uncompressed tar bytes) of a layer holding `files`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), tar_bytes


def _add_image(layout: OciLayout, seed: str, arch: str, big_size: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{arch}")
    layer_files = [
        {"data/hello.txt": f"hello {seed} {arch}\n".encode()},
        {"data/small.bin": rng.randbytes(64 * 1024)},
        {"data/big.bin": rng.randbytes(big_size)},
    ]
    layers, diff_ids = [], []
    for files in layer_files:
        gz, raw = _tar_layer(files)
        desc = layout.add_blob(gz)
        layout.layer_digests.append(desc["digest"])
        layers.append({"mediaType": MT_LAYER_GZIP, **desc})
        diff_ids.append(sha256_digest(raw))
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    }
    config_desc = layout.add_blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, **config_desc},
        "layers": layers,
        "annotations": {"org.example.seed": seed},
    }
    manifest_desc = layout.add_blob(json.dumps(manifest, indent=2).encode())
    layout.manifest_digests.append(manifest_desc["digest"])
    return {
        "mediaType": MT_MANIFEST,
        **manifest_desc,
        "platform": {"architecture": arch, "os": "linux"},
    }


def write_image_layout(path: Path, seed: str, big_size: int = 9 * MiB) -> OciLayout:
    layout = OciLayout(path)
    desc = _add_image(layout, seed, "amd64", big_size)
    layout.top_digest, layout.top_media_type = desc["digest"], MT_MANIFEST
    layout.write_index_json()
    return layout


def write_index_layout(path: Path, seed: str, big_size: int = 1 * MiB) -> OciLayout:
    layout = OciLayout(path)
    children = [_add_image(layout, seed, arch, big_size) for arch in ("amd64", "arm64")]
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": children}
    desc = layout.add_blob(json.dumps(index, indent=2).encode())
    layout.top_digest, layout.top_media_type = desc["digest"], MT_INDEX
    layout.write_index_json()
    return layout


def write_artifact_layout(path: Path, manifest: bytes, blobs: list[bytes], tag: str) -> OciLayout:
    """A layout holding one manifest given as bytes (a signature, say) and its blobs, so
    `skopeo copy --preserve-digests` pushes exactly those bytes."""
    layout = OciLayout(path)
    for blob in blobs:
        layout.add_blob(blob)
    layout.top_digest = layout.add_blob(manifest)["digest"]
    layout.top_media_type = str(json.loads(manifest).get("mediaType", MT_MANIFEST))
    layout.write_index_json(tag)
    return layout


def read_blobs(path: Path) -> dict[str, bytes]:
    """Every blob of a layout on disk, digest → bytes."""
    return {
        f"sha256:{p.name}": p.read_bytes()
        for p in (path / "blobs" / "sha256").iterdir()
        if p.is_file()
    }
