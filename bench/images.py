"""Images for the workloads: a config blob, some layers (`BlobSpec`s) and the manifest.

`Image.build` computes every digest (blocking: call through `asyncio.to_thread`), so a push
or pull only moves bytes. `push_image` and `pull_image` do what docker does: layers in
parallel (`layer_parallelism`), then the manifest by tag; HEAD by tag, GET by digest, then
layers in parallel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.blobdata import BlobSpec, digest_of
from bench.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, OciClient


@dataclass(frozen=True)
class Image:
    config: bytes
    config_digest: str
    layers: tuple[tuple[BlobSpec, str], ...]
    manifest: bytes
    digest: str

    @property
    def layer_bytes(self) -> int:
        return sum(spec.size for spec, _ in self.layers)

    @classmethod
    def build(cls, name: str, layers: list[BlobSpec]) -> Image:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench": name}},
                "rootfs": {"type": "layers", "diff_ids": []},
            },
            sort_keys=True,
        ).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        with_digests = tuple((spec, digest_of(spec)) for spec in layers)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": d, "size": spec.size}
                    for spec, d in with_digests
                ],
            },
            indent=2,
        ).encode()
        return cls(
            config,
            config_digest,
            with_digests,
            manifest,
            "sha256:" + hashlib.sha256(manifest).hexdigest(),
        )


async def push_image(
    client: OciClient, repo: str, tag: str, image: Image, layer_parallelism: int = 5
) -> int:
    """Push config, layers and manifest; returns the bytes pushed."""
    gate = asyncio.Semaphore(layer_parallelism)

    async def one(spec: BlobSpec, digest: str) -> int:
        async with gate:
            return await client.push_blob(repo, spec, digest)

    sizes = await asyncio.gather(
        client.push_bytes(repo, image.config, image.config_digest),
        *(one(spec, d) for spec, d in image.layers),
    )
    got = await client.put_manifest(repo, tag, image.manifest)
    if got != image.digest:
        raise RuntimeError(f"registry computed manifest digest {got}, expected {image.digest}")
    return sum(sizes) + len(image.manifest)


BlobFetch = Callable[[str, str], Awaitable[int]]


async def pull_image(
    client: OciClient,
    repo: str,
    tag: str,
    layer_parallelism: int = 3,
    fetch: BlobFetch | None = None,
) -> int:
    """Resolve the tag, fetch the manifest by digest, fetch every layer; returns bytes.
    `fetch(repo, digest)` replaces `client.pull_blob` for the blobs (a cheaper reader)."""
    digest = await client.head_manifest(repo, tag)
    manifest = json.loads(await client.get_manifest(repo, digest))
    gate = asyncio.Semaphore(layer_parallelism)
    get = fetch or client.pull_blob

    async def one(d: str) -> int:
        async with gate:
            return await get(repo, d)

    blobs = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
    sizes = await asyncio.gather(*(one(d) for d in blobs))
    return sum(sizes)
