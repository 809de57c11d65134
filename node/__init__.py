"""The storage node process: chunk store (LMDB), its gRPC services, the metadata Raft member
and the background roles (repair, scrub), one module per role. Garbage collection is not
written yet; it will be one more role beside them (docs/architecture.md)."""
