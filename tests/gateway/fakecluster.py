"""An in-process stand-in for `gateway.cluster.ClusterClient` for the API-surface tests.

Only the transport is fake: `command`/`query` send the JSON a node would receive to the
real `MetadataState` (node/metadata/state.py) and bring back its JSON answer, and a refusal
crosses as the gRPC details string the real node sends (so the gateway sees what it would
see from a cluster). Chunks live in a dict by sha256. `InProcessMetadata` is the same
transport for fakes that serve the metadata over real gRPC (fakenodes.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cargohold.errors import RegistryError, from_grpc_details, to_grpc_details
from cargohold.metadata_api import BlobCommit, ManifestDelete, ManifestPut, Metadata, Recipe
from node.metadata.state import MetadataState

EMPTY_RECIPE: Recipe = {"size": 0, "chunks": []}


def _wire(value: Any) -> Any:
    """`value` as it arrives on the other side of the wire (JSON-encoded and decoded)."""
    return json.loads(json.dumps(value))


def _as_received(err: RegistryError) -> RegistryError:
    """The error as the caller of a real node decodes it from the gRPC details."""
    decoded = from_grpc_details(to_grpc_details(err))
    return decoded if decoded is not None else err


class InProcessMetadata:
    """The real metadata state machine behind a fake (in-process, JSON) transport."""

    def __init__(self) -> None:
        self.state = MetadataState()

    def command(self, op: str, args: dict[str, Any]) -> Any:
        try:
            return _wire(self.state.apply(op, _wire(args)))
        except RegistryError as err:
            raise _as_received(err) from None

    def query(self, op: str, args: dict[str, Any]) -> Any:
        try:
            return _wire(self.state.query(op, _wire(args)))
        except RegistryError as err:
            raise _as_received(err) from None


class FakeCluster:
    """An in-memory cluster: chunks by sha256, the real metadata state, recorded calls."""

    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.metadata = InProcessMetadata()
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        # (op, linearizable) of every query, in order (a real node barriers the True ones).
        self.query_modes: list[tuple[str, bool]] = []
        # A test may answer a non-linearizable query itself (a node behind): op -> error.
        self.stale_reads: dict[str, Exception] = {}
        self.fail_next: Exception | None = None
        self.stored_bytes = 0  # store_bytes calls (each writes a body's chunks)

    @property
    def state(self) -> MetadataState:
        return self.metadata.state

    # -- test helpers (straight to the state, not recorded) -------------------------------
    def link_blob(self, repo: str, digest: str, recipe: Recipe | None = None) -> None:
        """Commit a blob into `repo`, as a finished upload would."""
        self.state.execute(BlobCommit(repo, digest, recipe or EMPTY_RECIPE, None, 0.0))

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest as another gateway would."""
        self.state.execute(ManifestDelete(repo, digest))

    def tag(self, repo: str, tag: str, digest: str) -> None:
        """Point `tag` at a manifest `digest` (stored with an empty body if not there yet)."""
        self.state.execute(
            ManifestPut(
                repo, digest, "application/vnd.oci.image.manifest.v1+json", EMPTY_RECIPE, tag=tag
            )
        )

    def meta_api(self) -> Metadata:
        """The typed metadata facade over this fake (as a GatewayContext builds it)."""
        return Metadata(self)  # type: ignore[arg-type]

    def ops(self, kind: str) -> list[str]:
        return [op for k, op, _ in self.calls if k == kind]

    # -- ClusterClient API ----------------------------------------------------------------
    async def close(self) -> None:
        return None

    async def store_bytes(self, data: bytes) -> dict[str, Any]:
        self.stored_bytes += 1
        chunk = hashlib.sha256(data).hexdigest()
        self.chunks[chunk] = bytes(data)
        return await self.recipe_of(data)

    async def recipe_of(self, data: bytes) -> dict[str, Any]:
        chunk = hashlib.sha256(data).hexdigest()
        return {"size": len(data), "chunks": [[chunk, len(data)]] if data else []}

    async def read_all(self, recipe: dict[str, Any]) -> bytes:
        return b"".join(self.chunks[c] for c, _ in recipe["chunks"])

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append(("command", op, _wire(args)))
        self._maybe_fail()
        return self.metadata.command(op, args)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        self.calls.append(("query", op, _wire(args)))
        self.query_modes.append((op, linearizable))
        self._maybe_fail()
        if not linearizable and op in self.stale_reads:
            raise self.stale_reads[op]
        return self.metadata.query(op, args)

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
