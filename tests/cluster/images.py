"""Small random OCI images for the cluster tests, reproducible from a seed.

An `ImageSpec` is a config and two layers (one under a chunk, one of 2-3 chunks with a
partial last chunk) whose bytes are regenerated from its seed whenever needed, so a test
can acknowledge thousands of images without keeping their bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageSpec:
    """A small random image, reproducible from its seed (bytes are never kept)."""

    repo: str
    tag: str
    seed: int
    layer_sizes: tuple[int, ...]

    def blobs(self) -> list[tuple[str, str, bytes]]:
        """(media type, digest, bytes) of the config and every layer."""
        rng = random.Random(self.seed)
        layers = [rng.randbytes(size) for size in self.layer_sizes]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "seed": self.seed,
                "rootfs": {"type": "layers", "diff_ids": [sha256(b) for b in layers]},
            }
        ).encode()
        return [
            (CONFIG_TYPE, sha256(config), config),
            *[(LAYER_TYPE, sha256(b), b) for b in layers],
        ]

    def manifest(self) -> bytes:
        blobs = self.blobs()
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "mediaType": blobs[0][0],
                    "digest": blobs[0][1],
                    "size": len(blobs[0][2]),
                },
                "layers": [{"mediaType": t, "digest": d, "size": len(b)} for t, d, b in blobs[1:]],
            },
            separators=(",", ":"),
        ).encode()

    @property
    def digest(self) -> str:
        return sha256(self.manifest())

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for _, _, b in self.blobs()) + len(self.manifest())


def random_image(rng: random.Random, repo: str, chunk_size: int) -> ImageSpec:
    """Config + one sub-chunk layer + one layer of 2-3 chunks (a partial last chunk)."""
    small = rng.randint(1, chunk_size // 2)
    multi = rng.randint(chunk_size + 1, 3 * chunk_size - 1)
    return ImageSpec(
        repo=repo,
        tag=f"t{uuid.uuid4().hex[:10]}",
        seed=rng.getrandbits(48),
        layer_sizes=(small, multi),
    )
