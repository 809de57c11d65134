"""cargohold.grpc_status: every typed error travels as a gRPC status, the chunk codes too."""

from __future__ import annotations

import grpc

from cargohold.errors import (
    ChunkCorrupt,
    ChunkMissing,
    DigestInvalid,
    RegistryError,
    StorageFull,
    Unavailable,
)
from cargohold.grpc_status import grpc_status


def test_every_error_has_a_grpc_status() -> None:
    for cls in [RegistryError, *RegistryError.__subclasses__()]:
        assert isinstance(grpc_status(cls()), grpc.StatusCode)


def test_the_chunk_service_codes() -> None:
    assert grpc_status(ChunkMissing()) == grpc.StatusCode.NOT_FOUND
    assert grpc_status(ChunkCorrupt()) == grpc.StatusCode.DATA_LOSS
    assert grpc_status(DigestInvalid()) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(StorageFull()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(Unavailable()) == grpc.StatusCode.UNAVAILABLE
