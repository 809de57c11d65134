"""The compact in-memory records of blobs and manifests (node/metadata/state.py holds them).

Every node keeps one record per blob and per manifest in RAM, so their size is the
registry's memory per manifest (docs/metadata.md, "Memory per manifest"). Both are
immutable and shaped for size:

- `Recipe` is the packed chunk list itself, a `bytes` subclass without a `__dict__`:
  40 bytes per chunk (`CHUNK`: 32-byte raw sha256 id, u64 big-endian length). Its size is
  the sum of the chunk lengths (a recipe whose size says otherwise is refused), so it is
  computed, not stored: one object of 73 bytes where `(size, packed)` took three objects
  and 168 bytes.
- `OneChunk` is the recipe of a blob stored as a single chunk whose id is the blob's own
  sha256 (a chunk is addressed by the sha256 of its bytes, so every sha256 blob up to the
  chunk size: configs, manifests, small layers). Only its size is kept, an `int` subclass
  of 28 bytes; the chunk list is rebuilt from the digest it is filed under
  (`chunks_for(digest)`). `make_recipe` picks the form, so equal chunk lists always make
  equal records. Records are immutable and a size says all of one, so every `OneChunk` of
  a size below `SHARED_SIZES` is one object, however it was built (a command, a snapshot
  of any version): a blob costs its table slot, not 48 more bytes of its own.
- `Manifest` is a tuple subclass: an image manifest (no children, subject or annotations)
  is `(media_type, recipe, artifact_type, *blobs)`, one object; any other is
  `(media_type, recipe, artifact_type, blobs, children, subject, annotations_json)` with the
  trailing empty fields (None, ()) left out (a subclass reads that layout). `size` is its
  recipe's. It is built with the field order of the named tuple it replaces, and reads by
  the same attribute names.

Snapshots of the row formats (versions 1-4) keep the plain-tuple rows every earlier
version wrote (`row()`, `from_row()`), so such a snapshot loads in any version. The compact
format (version 5, node/metadata/state.py) pickles the records themselves: a `Manifest`
through `restore_manifest` (its tuple as it is), a recipe through its base type's
constructor (`OneChunk(size)`, `Recipe(packed)`), so a load builds each record in one call
and shares every string the way the state in RAM did (a shared `OneChunk` is pickled once,
then referenced through the memo). Version 6 pickles a repository's manifests as one
flat list of their items (`flat_manifests`, `manifests_from_flat`): a version-5 load kept
one argument tuple per manifest in the unpickler's memo until it ended.
"""

from __future__ import annotations

import struct
from typing import Any

CHUNK = struct.Struct(">32sQ")
_LENGTHS = struct.Struct(">32xQ")


class Recipe(bytes):
    """A blob's chunk list, packed (module docstring); `size` is the sum of its lengths."""

    __slots__ = ()

    @property
    def size(self) -> int:
        if len(self) == CHUNK.size:
            return int(_LENGTHS.unpack_from(self)[0])
        return sum(length for (length,) in _LENGTHS.iter_unpack(self))

    @property
    def packed(self) -> bytes:
        return self

    def chunks_for(self, digest: str) -> bytes:
        """The packed chunk list (the same for any digest)."""
        return self

    def row(self, digest: str = "") -> tuple[int, bytes]:
        """The snapshot row of every earlier version: `(size, packed)`."""
        return self.size, bytes(self)


class OneChunk(int):
    """A one-chunk blob whose chunk id is its own sha256: its size (module docstring).

    Records of the same size below `SHARED_SIZES` are one object (module docstring)."""

    __slots__ = ()

    def __new__(cls, size: int = 0) -> OneChunk:
        record = _ONE_CHUNKS.get(size)
        if record is None:
            record = int.__new__(cls, size)
            if 0 <= size < SHARED_SIZES and cls is OneChunk:
                _ONE_CHUNKS[size] = record
        return record

    @property
    def size(self) -> int:
        return int(self)

    def chunks_for(self, digest: str) -> bytes:
        """The packed chunk list: the digest's hash as the chunk id, the size."""
        return CHUNK.pack(bytes.fromhex(digest[_SHA256_LEN:]), int(self))

    def row(self, digest: str) -> tuple[int, bytes]:
        """The snapshot row of every earlier version: `(size, packed)`."""
        return int(self), self.chunks_for(digest)


AnyRecipe = Recipe | OneChunk
# Sizes whose `OneChunk` is one shared object. Configs and manifests are a few hundred
# bytes to some tens of KiB, so at a million images almost every size below this bound
# recurs; the table holds at most this many records (~6 MB if every size occurred).
SHARED_SIZES = 1 << 16
_ONE_CHUNKS: dict[int, OneChunk] = {}
_SHA256 = "sha256:"
_SHA256_LEN = len(_SHA256)


def make_recipe(packed: bytes, digest: str) -> AnyRecipe:
    """The record of a chunk list filed under `digest` (sizes already checked)."""
    if (
        len(packed) == CHUNK.size
        and digest.startswith(_SHA256)
        and packed[:32] == bytes.fromhex(digest[_SHA256_LEN:])
    ):
        return OneChunk(_LENGTHS.unpack_from(packed)[0])
    return Recipe(packed)


def recipe_from_row(row: Any, digest: str) -> AnyRecipe:
    """A `(size, packed)` row (or a record, as version-1 snapshots pickled them)."""
    if isinstance(row, (Recipe, OneChunk)):
        return row
    size, packed = row
    recipe = make_recipe(packed, digest)
    if recipe.size != size:
        return _SizedRecipe(packed, size)
    return recipe


class _SizedRecipe(Recipe):
    """A recipe whose recorded size is not the sum of its chunks: never written by a version
    that checks recipes, kept as recorded if an old snapshot holds one."""

    def __new__(cls, packed: bytes, size: int) -> _SizedRecipe:
        recipe = super().__new__(cls, packed)
        recipe.__dict__["size"] = size
        return recipe

    @property
    def size(self) -> int:
        return int(self.__dict__["size"])

    def __getnewargs__(self) -> tuple[bytes, int]:  # type: ignore[override]
        return bytes(self), self.size


_FIELDS = (
    "media_type",
    "size",
    "recipe",
    "subject",
    "artifact_type",
    "annotations_json",
    "blobs",
    "children",
)


def _absent(value: Any) -> bool:
    return value is None or value == ()


class Manifest(tuple[Any, ...]):
    """A manifest present in a repository (module docstring for the layout)."""

    __slots__ = ()

    def __new__(
        cls,
        media_type: str,
        size: int,
        recipe: AnyRecipe,
        subject: str | None,
        artifact_type: str | None,
        annotations_json: str | None,
        blobs: tuple[str, ...],
        children: tuple[str, ...],
    ) -> Manifest:
        if not children and subject is None and annotations_json is None:
            return tuple.__new__(Manifest, (media_type, recipe, artifact_type, *blobs))
        fields = [media_type, recipe, artifact_type, blobs, children, subject, annotations_json]
        while _absent(fields[-1]):
            fields.pop()
        return tuple.__new__(_FullManifest, fields)

    @property
    def media_type(self) -> str:
        value: str = self[0]
        return value

    @property
    def recipe(self) -> AnyRecipe:
        value: AnyRecipe = self[1]
        return value

    @property
    def size(self) -> int:
        return self.recipe.size

    @property
    def artifact_type(self) -> str | None:
        value: str | None = self[2]
        return value

    @property
    def blobs(self) -> tuple[str, ...]:
        return self[3:]

    @property
    def children(self) -> tuple[str, ...]:
        return ()

    @property
    def subject(self) -> str | None:
        return None

    @property
    def annotations_json(self) -> str | None:
        return None

    def fields(self) -> tuple[Any, ...]:
        """The named tuple's fields, in its order (how `Manifest(...)` is called)."""
        return (
            self.media_type,
            self.size,
            self.recipe,
            self.subject,
            self.artifact_type,
            self.annotations_json,
            self.blobs,
            self.children,
        )

    def __getnewargs__(self) -> tuple[Any, ...]:
        return self.fields()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r:.80}" for n, v in zip(_FIELDS, self.fields(), strict=True))
        return f"Manifest({shown})"

    def row(self, digest: str) -> tuple[Any, ...]:
        """The snapshot row of every earlier version: the named tuple's fields, the recipe
        as its `(size, packed)` row."""
        f = self.fields()
        return (f[0], f[1], self.recipe.row(digest), *f[3:])

    @classmethod
    def from_row(cls, row: Any, digest: str) -> Manifest:
        """A row of `row()`'s layout (or a Manifest, as version-1 snapshots pickled it)."""
        if isinstance(row, Manifest):
            return row
        return cls(row[0], row[1], recipe_from_row(row[2], digest), *row[3:])


def restore_manifest(*items: Any) -> Manifest:
    """A `Manifest` from its own items (`reduce_manifest`) in one call: how the compact
    snapshot format rebuilds each record."""
    return tuple.__new__(Manifest, items)


def restore_full_manifest(*items: Any) -> Manifest:
    """`restore_manifest` of a manifest with children, a subject or annotations."""
    return tuple.__new__(_FullManifest, items)


def reduce_manifest(m: Manifest) -> tuple[Any, ...]:
    """pickle's reduction of a `Manifest` in the compact snapshot format: its items are
    the arguments (one tuple per record, which the pickle's memo keeps until the load
    ends: the fewer such temporaries, the less the load leaves behind)."""
    return restore_full_manifest if type(m) is _FullManifest else restore_manifest, tuple(m)


_ONE_CHUNK_ARGS: dict[int, tuple[int]] = {}


def reduce_one_chunk(r: OneChunk) -> tuple[Any, ...]:
    """pickle's reduction of a `OneChunk`: `OneChunk(size)`, the argument tuple shared by
    every record of that size (pickled once, referenced after)."""
    size = int(r)
    args = _ONE_CHUNK_ARGS.get(size)
    if args is None:
        if len(_ONE_CHUNK_ARGS) > 65536:
            _ONE_CHUNK_ARGS.clear()
        args = _ONE_CHUNK_ARGS[size] = (size,)
    return OneChunk, args


def flat_manifests(entries: dict[str, Manifest]) -> list[Any]:
    """{digest: Manifest} as one flat list, how the compact snapshot format of version 6
    writes a piece of a repository: per record its digest, its item count (negative for a
    manifest with children, a subject or annotations) and its items. Pickled as one list,
    it loads with no object per record beyond the record itself and what it holds
    (`manifests_from_flat`); version 5 pickled an argument tuple per record, which the
    unpickler's memo kept until the load ended (docs/metadata.md)."""
    flat: list[Any] = []
    extend = flat.extend
    for digest, m in entries.items():
        extend((digest, -len(m) if type(m) is _FullManifest else len(m)))
        extend(m)
    return flat


def manifests_from_flat(flat: list[Any]) -> dict[str, Manifest]:
    """The records of `flat_manifests`, in its order; `flat` is emptied (the unpickler's
    memo keeps the list object to the end of the load, not what it held)."""
    out: dict[str, Manifest] = {}
    new = tuple.__new__
    i, end = 0, len(flat)
    while i < end:
        count = flat[i + 1]
        if count >= 0:
            out[flat[i]] = new(Manifest, flat[i + 2 : i + 2 + count])
            i += 2 + count
        else:
            out[flat[i]] = new(_FullManifest, flat[i + 2 : i + 2 - count])
            i += 2 - count
    if i != end:
        raise ValueError("a flat manifest list ends inside a record")
    flat.clear()
    return out


class _FullManifest(Manifest):
    """A manifest with children, a subject or annotations (module docstring)."""

    __slots__ = ()

    @property
    def blobs(self) -> tuple[str, ...]:
        value: tuple[str, ...] = self[3]
        return value

    @property
    def children(self) -> tuple[str, ...]:
        value: tuple[str, ...] = self[4] if len(self) > 4 else ()
        return value

    @property
    def subject(self) -> str | None:
        value: str | None = self[5] if len(self) > 5 else None
        return value

    @property
    def annotations_json(self) -> str | None:
        value: str | None = self[6] if len(self) > 6 else None
        return value


# pickle's reductions of the compact snapshot format (a Pickler's `dispatch_table`).
REDUCERS = {Manifest: reduce_manifest, _FullManifest: reduce_manifest, OneChunk: reduce_one_chunk}
# What a compact snapshot may name (its unpickler resolves nothing else).
SNAPSHOT_GLOBALS = {
    ("node.metadata.records", "restore_manifest"): restore_manifest,
    ("node.metadata.records", "restore_full_manifest"): restore_full_manifest,
    ("node.metadata.records", "OneChunk"): OneChunk,
    ("node.metadata.records", "Recipe"): Recipe,
    ("node.metadata.records", "_SizedRecipe"): _SizedRecipe,
}
