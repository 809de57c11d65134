"""The storage node process: chunk store (LMDB), its gRPC services, the metadata Raft member
and the background roles (repair, scrub, gc), one module per role (docs/architecture.md)."""
