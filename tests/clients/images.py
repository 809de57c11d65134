"""Test images built offline: no registry, no network, only the host's busybox-static.

`busybox_base()` packs the static /bin/busybox (Debian's busybox-static) and its applet
symlinks into a rootfs tarball and `docker import`s it. `build_layered()` then runs
`docker build` on top of it with three extra layers whose files have known content:

    /data/hello.txt   a short text naming the image (its own layer)
    /data/small.bin   64 KiB of seeded pseudo-random bytes
    /data/big.bin     9 MiB of seeded pseudo-random bytes: more than two 4 MiB chunks

The returned `LayeredImage` knows every file's bytes, so tests can check a pulled or
run image against them. Images get unique tags; `remove()` deletes them.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import tarfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from clients.tools import docker, run

BASE_TAG = "cargohold-test/busybox:latest"
APPLETS = ("sh", "cat", "ls", "sha256sum", "echo", "true", "test", "wc", "sleep")
KiB = 1024
MiB = 1024 * KiB
_base_lock = threading.Lock()


def _busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            # Only the static build runs in an empty rootfs.
            out = run(["file", "-L", str(path)], check=False) if shutil.which("file") else ""
            if not out or "statically linked" in out or "static-pie" in out:
                return path
    raise FileNotFoundError("static busybox not found: apt-get install busybox-static")


def _rootfs_tar(busybox: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "data", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def busybox_base() -> str:
    """Import the busybox base image once per machine; return its tag."""
    with _base_lock:
        if docker("image", "inspect", "-f", "{{.Id}}", BASE_TAG, check=False).startswith("sha256:"):
            return BASE_TAG
        tar = _rootfs_tar(_busybox_binary())
        run(
            [
                "docker",
                "import",
                "--change",
                'CMD ["/bin/sh"]',
                "--change",
                "ENV PATH=/bin",
                "-",
                BASE_TAG,
            ],
            input_bytes=tar,
        )
        return BASE_TAG


def seeded_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class LayeredImage:
    """A local image with three known layers on top of the busybox base."""

    tag: str
    files: dict[str, bytes] = field(default_factory=dict)
    extra_tags: list[str] = field(default_factory=list)

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def remove(self) -> None:
        for tag in [*self.extra_tags, self.tag]:
            docker("rmi", "-f", tag, check=False)


def build_layered(
    workdir: Path, name: str | None = None, seed: str | None = None, big_size: int = 9 * MiB
) -> LayeredImage:
    """`docker build` a fresh three-layer image (unique content per seed) offline."""
    base = busybox_base()
    seed = seed or uuid.uuid4().hex
    tag = name or f"cargohold-test/layered:{seed[:12]}"
    ctx = workdir / f"ctx-{seed[:12]}"
    ctx.mkdir(parents=True, exist_ok=True)
    files = {
        "/data/hello.txt": f"hello from cargohold test image {seed}\n".encode(),
        "/data/small.bin": seeded_bytes(seed + "-small", 64 * KiB),
        "/data/big.bin": seeded_bytes(seed + "-big", big_size),
    }
    for path, data in files.items():
        (ctx / Path(path).name).write_bytes(data)
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY hello.txt /data/hello.txt\n"
        "COPY small.bin /data/small.bin\n"
        "COPY big.bin /data/big.bin\n"
        'CMD ["/bin/cat", "/data/hello.txt"]\n'
    )
    docker("build", "-q", "-t", tag, str(ctx), timeout=600)
    shutil.rmtree(ctx, ignore_errors=True)
    return LayeredImage(tag=tag, files=files)
