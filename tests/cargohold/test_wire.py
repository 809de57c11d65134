"""cargohold.wire against the protobuf runtime: same bytes out, same fields in."""

from __future__ import annotations

import os

import pytest

from cargohold.digests import checksum_of, chunk_id_of
from cargohold.wire import (
    decode_bytes_fields,
    decode_get_reply,
    encode_bytes_fields,
    encode_put,
    read_varint,
    varint,
)
from protos import registry_pb2 as pb


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32 + 5, 2**63 - 1])
def test_varint_round_trip(value: int) -> None:
    encoded = varint(value)
    assert read_varint(memoryview(encoded + b"tail"), 0) == (value, len(encoded))


@pytest.mark.parametrize("size", [0, 1, 200, 70_000])
def test_encode_matches_protobuf(size: int) -> None:
    data, checksum = os.urandom(size), os.urandom(16)
    expected = pb.GetChunkReply(data=data, checksum=checksum).SerializeToString()
    half = memoryview(data)[: size // 2], memoryview(data)[size // 2 :]
    assert encode_bytes_fields([(1, half), (2, [checksum])]) == expected


@pytest.mark.parametrize("size", [0, 5, 70_000])
def test_decode_reads_what_protobuf_wrote(size: int) -> None:
    request = pb.PutChunkRequest(id=os.urandom(32), data=os.urandom(size), checksum=os.urandom(16))
    fields = decode_bytes_fields(request.SerializeToString())
    assert bytes(fields[1]) == request.id
    assert bytes(fields.get(2, b"")) == request.data
    assert bytes(fields[3]) == request.checksum
    # Varint fields are skipped (MetadataRequest.linearizable is field 3, a bool).
    meta = pb.MetadataRequest(op="x", args=b"{}", linearizable=True).SerializeToString()
    assert {k: bytes(v) for k, v in decode_bytes_fields(meta).items()} == {1: b"x", 2: b"{}"}


@pytest.mark.parametrize("raw", [b"\x0a", b"\x0a\x05ab", b"\x0d\x00\x00\x00\x00", b"\x80"])
def test_decode_refuses_truncated_or_foreign_wire_types(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_bytes_fields(raw)


@pytest.mark.parametrize("size", [1, 127, 128, 300, 70_000, 4 * 1024 * 1024])
def test_encode_put_matches_protobuf(size: int) -> None:
    data = os.urandom(size)
    cid, checksum = chunk_id_of(data), checksum_of(data)
    pieces = [memoryview(data)[i : i + 1000] for i in range(0, size, 1000)]
    expected = pb.PutChunkRequest(id=cid, data=data, checksum=checksum).SerializeToString()
    assert encode_put(cid, pieces, checksum) == expected


@pytest.mark.parametrize("size", [0, 1, 200, 4 * 1024 * 1024])
def test_decode_get_reply_matches_protobuf(size: int) -> None:
    data = os.urandom(size)
    raw = pb.GetChunkReply(data=data, checksum=checksum_of(data)).SerializeToString()
    got, checksum = decode_get_reply(raw)
    assert got == data and checksum == checksum_of(data)
    with pytest.raises(ValueError):
        decode_get_reply(raw[:-1] if raw else b"\x0a")


def test_encode_put_of_an_empty_chunk_matches_protobuf() -> None:
    cid, checksum = chunk_id_of(b""), checksum_of(b"")
    expected = pb.PutChunkRequest(id=cid, data=b"", checksum=checksum).SerializeToString()
    assert encode_put(cid, [], checksum) == expected
