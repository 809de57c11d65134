"""Protobuf wire format for the chunk messages, without copying chunk bytes.

The chunk RPCs (`Chunks.Put`, `Chunks.Get`) carry MiB-sized `bytes` fields. The protobuf
runtime copies such a field on parse, again on attribute access, and again on serialize
(ten times the cost of one memcpy: bench/README.md, "Figures behind choices in the code").
These helpers read and write the few messages whose fields are all length-delimited or
varints, as protobuf itself emits them (fields in number order), so the chunk's bytes are
copied once where they must be (into a socket or LMDB) and otherwise passed as views.
The messages stay exactly `protos/registry.proto`'s; tests check both directions against
the protobuf runtime (tests/cargohold/test_wire.py, tests/node/test_chunk_service.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative int."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; ValueError when truncated."""
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError("truncated varint")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_bytes_fields(fields: Sequence[tuple[int, Sequence[bytes | memoryview]]]) -> bytes:
    """A message of length-delimited fields, each given as pieces joined on the wire.

    Fields whose pieces are all empty are left out, as protobuf does for proto3 `bytes`.
    One copy of every piece, into the returned buffer.
    """
    out: list[bytes | memoryview] = []
    for number, pieces in fields:
        size = sum(len(p) for p in pieces)
        if not size:
            continue
        out.append(varint(number << 3 | 2))
        out.append(varint(size))
        out.extend(pieces)
    return b"".join(out)


def _length_delimited(raw: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, view of its bytes) of each length-delimited field, in wire order.

    Varint fields are skipped; any other wire type is ValueError (none of the chunk
    messages has one).
    """
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        key, pos = read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(view, pos)
        elif wire == 2:
            size, pos = read_varint(view, pos)
            if pos + size > len(view):
                raise ValueError("truncated field")
            yield number, view[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire}")


def decode_bytes_fields(raw: bytes | memoryview) -> dict[int, memoryview]:
    """{field number: view of its bytes} of the length-delimited fields of a message.

    Varint fields are skipped; any other wire type is ValueError (none of the chunk
    messages has one). A repeated field keeps its last value, like a singular field.
    """
    return dict(_length_delimited(raw))


def decode_repeated_fields(raw: bytes | memoryview) -> dict[int, list[memoryview]]:
    """{field number: views of its values, in order}: `decode_bytes_fields` for repeated
    `bytes`/`string` fields (a PutManyRequest's puts stay views of the received bytes)."""
    found: dict[int, list[memoryview]] = {}
    for number, value in _length_delimited(raw):
        found.setdefault(number, []).append(value)
    return found


def encode_put(chunk_id: bytes, pieces: Sequence[bytes | memoryview], checksum: bytes) -> bytes:
    """A serialized PutChunkRequest{id, data, checksum}, the data given as pieces.

    One copy of the chunk, straight from the body's pieces into the request that goes to
    all R replicas (protobuf would want it joined first, then copy it again).
    """
    return encode_bytes_fields([(1, [chunk_id]), (2, pieces), (3, [checksum])])


def decode_get_reply(raw: bytes | memoryview) -> tuple[memoryview, bytes]:
    """(data, checksum) of a serialized GetChunkReply; `data` is a view, not a copy."""
    fields = decode_bytes_fields(raw)
    return fields.get(1, memoryview(b"")), bytes(fields.get(2, b""))


def encode_put_many(puts: Sequence[bytes], request_ids: Sequence[str]) -> bytes:
    """A serialized PutManyRequest{puts, request_ids} framing already serialized
    PutChunkRequests (`encode_put`): one copy of each into the pack, none by protobuf.
    Unlike `encode_bytes_fields`, empty values are kept (a repeated field's place counts).
    """
    out: list[bytes] = []
    for number, values in ((1, puts), (2, [r.encode() for r in request_ids])):
        tag = varint(number << 3 | 2)
        for value in values:
            out.append(tag)
            out.append(varint(len(value)))
            out.append(value)
    return b"".join(out)
