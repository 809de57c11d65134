"""Reading image layers for a scan: decompression, tar streaming, whiteouts.

`read_layer(stream, limits)` reads ONE layer front to back (a tar, gzip-compressed tar or
zstd-compressed tar, told apart by their magic bytes, not by the media type a client
claimed) and returns a `LayerFiles`: the bytes of the files a package scan needs
(`wanted`), the whiteouts of the layer and the wanted paths it replaced with something that
is not a regular file. Nothing else is kept, so memory is bounded by `Limits.max_file_bytes`
per file and `Limits.max_kept_bytes` per layer, whatever the layer's size; the unpacked
size is bounded too (`Limits.max_unpacked_bytes`: a decompression bomb fails the scan).

`FileSystem.apply(layer)` merges layers bottom to top as the OCI image spec says: a
`.wh..wh..opq` file makes its directory opaque (everything the lower layers had below it
is gone, the layer's own entries stay), `.wh.NAME` deletes NAME (and everything below it)
from the lower layers; then the layer's files win over what is left.

Blocking code (zlib, zstandard, tarfile): call it from a worker thread.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

import zstandard

from cargohold.errors import ScanError

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ = 256 * 1024
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

# The files a scan keeps, by path inside the image (no leading slash).
_EXACT = {
    "var/lib/dpkg/status": "dpkg",
    "lib/apk/db/installed": "apk",
    "etc/os-release": "os-release",
    "usr/lib/os-release": "os-release",
}
_PATTERNS = (
    (re.compile(r"var/lib/dpkg/status\.d/[^/.]+"), "dpkg"),  # distroless; not *.md5sums
    (re.compile(r".*\.dist-info/METADATA"), "pypi"),
    (re.compile(r".*\.egg-info/PKG-INFO"), "pypi"),
    (re.compile(r".*\.egg-info"), "pypi"),  # a PKG-INFO written as a single file
    (re.compile(r"(?:.*/)?node_modules/(?:@[^/]+/)?[^/@.][^/]*/package\.json"), "npm"),
)


def wanted(path: str) -> str | None:
    """The kind of package database at `path` ("dpkg", "apk", "pypi", "npm",
    "os-release"), or None when a scan does not need the file."""
    kind = _EXACT.get(path)
    if kind is not None:
        return kind
    for pattern, kind in _PATTERNS:
        if pattern.fullmatch(path):
            return kind
    return None


def normalise(name: str) -> str:
    """A tar member name as a path inside the image: no `./`, no leading `/`."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


@dataclass(frozen=True)
class Limits:
    """Bounds of one scan (the `[scanner]` settings)."""

    max_unpacked_bytes: int = 16 * 2**30
    max_file_bytes: int = 64 * 2**20
    max_kept_bytes: int = 256 * 2**20


@dataclass
class LayerFiles:
    """What one layer contributes: kept files, whiteouts and replaced wanted paths."""

    files: dict[str, bytes] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)
    unpacked_bytes: int = 0


class Reader(Protocol):
    """What a layer is read from: a file opened for binary reading, or a stream of pieces."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Prefixed:
    """`source` with the bytes already read from it (`head`) put back in front."""

    def __init__(self, head: bytes, source: Reader) -> None:
        self._head = head
        self._source = source

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return self._source.read(n if n > 0 else _READ)


class _Unpacked:
    """A file-like reader of the decompressed layer, counting what it returns."""

    def __init__(self, source: Reader, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.count = 0
        head = self._read_raw(4)
        if head.startswith(_GZIP_MAGIC):
            self._chunks = self._gunzip(head)
        elif head.startswith(_ZSTD_MAGIC):
            self._chunks = self._unzstd(head)
        else:
            self._chunks = self._plain(head)
        self._buf = b""
        self._pos = 0

    def _read_raw(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            piece = self._source.read(n - len(out))
            if not piece:
                break
            out += piece
        return out

    def _plain(self, head: bytes) -> Iterator[bytes]:
        yield head
        while piece := self._source.read(_READ):
            yield piece

    def _gunzip(self, head: bytes) -> Iterator[bytes]:
        # Multi-member gzip (pigz, concatenated streams) is one tar: start a new member
        # wherever the previous one ended.
        decomp = zlib.decompressobj(wbits=47)
        pending = head
        while True:
            if not pending:
                pending = self._source.read(_READ)
                if not pending:
                    if not decomp.eof:
                        raise ScanError("gzip stream truncated")
                    return
            try:
                out = decomp.decompress(pending, _READ)
            except zlib.error as exc:
                raise ScanError(f"bad gzip data: {exc}") from None
            pending = decomp.unconsumed_tail
            if out:
                yield out
            if decomp.eof:
                rest = decomp.unused_data + pending
                pending = rest.lstrip(b"\x00")  # padding after the last member
                if not pending:
                    pending = self._source.read(_READ)
                    if not pending:
                        return
                decomp = zlib.decompressobj(wbits=47)

    def _unzstd(self, head: bytes) -> Iterator[bytes]:
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _Prefixed(head, self._source)), read_size=_READ, read_across_frames=True
        )
        try:
            while piece := reader.read(_READ):
                yield piece
        except zstandard.ZstdError as exc:
            raise ScanError(f"bad zstd data: {exc}") from None

    def read(self, n: int = -1) -> bytes:
        # tarfile asks for small blocks: serve them from the current piece by offset.
        if self._pos >= len(self._buf):
            piece = next(self._chunks, b"")
            self.count += len(piece)
            if self.count > self._limit:
                raise ScanError(
                    f"a layer unpacks to more than scanner.max_unpacked_bytes ({self._limit})"
                )
            self._buf, self._pos = piece, 0
            if not piece:
                return b""
        if n < 0:
            n = len(self._buf) - self._pos
        if self._pos + n <= len(self._buf):
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out
        parts = [self._buf[self._pos :]]
        got = len(parts[0])
        self._pos = len(self._buf)
        while got < n:
            more = self.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)


def read_layer(stream: Reader, limits: Limits) -> LayerFiles:
    """Read one layer from `stream` to its end; keep only what a package scan needs."""
    unpacked = _Unpacked(stream, limits.max_unpacked_bytes)
    layer = LayerFiles()
    kept = 0
    try:
        with tarfile.open(fileobj=unpacked, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                path = normalise(member.name)
                if not path:
                    continue
                directory, base = posixpath.split(path)
                if base == _OPAQUE:
                    layer.opaque.add(directory)
                    continue
                if base.startswith(_WHITEOUT):
                    layer.whiteouts.add(posixpath.join(directory, base[len(_WHITEOUT) :]))
                    continue
                if wanted(path) is None:
                    continue
                if member.isdir():  # a directory over a directory merges: nothing replaced
                    continue
                if member.islnk():  # a hard link to a file kept earlier in this layer
                    target = layer.files.get(normalise(member.linkname))
                    if target is None:
                        layer.replaced.add(path)
                    else:
                        layer.files[path] = target
                    continue
                if not member.isreg():
                    layer.files.pop(path, None)
                    layer.replaced.add(path)
                    continue
                if member.size > limits.max_file_bytes:
                    raise ScanError(
                        f"/{path} ({member.size} bytes) is larger than scanner.max_file_bytes"
                    )
                kept += member.size
                if kept > limits.max_kept_bytes:
                    raise ScanError("package databases in one layer exceed scanner.max_kept_bytes")
                handle = tar.extractfile(member)
                layer.files[path] = handle.read() if handle is not None else b""
                layer.replaced.discard(path)
    except tarfile.TarError as exc:
        raise ScanError(f"not a tar layer: {exc}") from None
    # Read past the end-of-archive blocks, so a truncated compressed stream is noticed.
    while unpacked.read(_READ):
        pass
    layer.unpacked_bytes = unpacked.count
    return layer


def _under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


class FileSystem:
    """The wanted files of an image's merged filesystem, layer after layer."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def apply(self, layer: LayerFiles) -> None:
        gone = layer.opaque | layer.whiteouts | layer.replaced
        if gone:
            for path in [p for p in self.files if any(_under(p, top) for top in gone)]:
                del self.files[path]
        # An opaque directory hides only the lower layers: this layer's files stay.
        self.files.update(layer.files)

    def of_kind(self, kind: str) -> dict[str, bytes]:
        """The merged files of one kind ("dpkg", "apk", ...), by path."""
        return {p: data for p, data in sorted(self.files.items()) if wanted(p) == kind}
