"""Cargohold's shared domain: digests, names, placement, config, errors, logging, wire.

Used by `node/` and `gateway/`; imports neither of them, nor the entry layer
`cargohold_cli/` (tests/test_layers.py checks it; docs/packaging.md).
"""

import os

__version__ = "0.1.0"

# gRPC's fork handlers off, before any module loads grpc (every entry point imports this
# package first). With them on (grpcio's default), a child forked by a process that serves
# gRPC runs gRPC's post-fork handler, which restarts gRPC threads in the child; the Raft
# snapshot child (node/metadata/raft.py) then died with SIGSEGV (reproduced: 35 of 150
# forks of a busy grpc.aio server; 0 of 150 with this setting). Nothing here uses gRPC in
# a forked child, and a fork followed by exec needs no handler. An operator's own value of
# the variable is kept.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
