"""The one error table (cargohold/errors.py): how a refusal for lack of space travels from
a node over gRPC to the gateway, and what it becomes in HTTP."""

from __future__ import annotations

from cargohold.errors import (
    DETAIL_TRAILER,
    MetadataStorageFull,
    NotFound,
    StorageFull,
    Unavailable,
    from_grpc_details,
    grpc_status_name,
    to_grpc_details,
    to_grpc_trailer,
)


def test_storage_full_is_507_denied_and_resource_exhausted() -> None:
    err = StorageFull()
    assert (err.status, err.code) == (507, "DENIED")
    assert "storage is full" in err.message
    assert grpc_status_name(err) == "RESOURCE_EXHAUSTED"
    assert grpc_status_name(Unavailable()) == "UNAVAILABLE"


def test_detail_crosses_grpc_in_the_trailer() -> None:
    sent = StorageFull("node n2 has no space", detail={"node": "n2", "free_bytes": 17})
    trailer = to_grpc_trailer(sent)
    assert [k for k, _ in trailer] == [DETAIL_TRAILER]
    got = from_grpc_details(to_grpc_details(sent), trailer)
    assert isinstance(got, StorageFull)
    assert got.message == "node n2 has no space"
    assert got.detail == {"node": "n2", "free_bytes": 17}


def test_no_trailer_still_decodes_and_odd_details_are_not_ours() -> None:
    got = from_grpc_details(to_grpc_details(NotFound("gone")))
    assert isinstance(got, NotFound) and got.detail is None
    assert to_grpc_trailer(NotFound()) == ()
    assert to_grpc_trailer(NotFound(detail={"x": "y" * 10_000})) == ()  # too big for a header
    assert from_grpc_details("Received RST_STREAM") is None
    assert from_grpc_details("NoSuchError:x") is None


def test_metadata_storage_full_says_the_same_as_storage_full() -> None:
    err = MetadataStorageFull(detail={"node": "n1", "free_bytes": 0})
    assert (err.status, err.code) == (507, "DENIED")
    assert "storage is full" in err.message
    assert grpc_status_name(err) == "RESOURCE_EXHAUSTED"
    got = from_grpc_details(to_grpc_details(err), to_grpc_trailer(err))
    assert isinstance(got, MetadataStorageFull) and got.detail == err.detail
