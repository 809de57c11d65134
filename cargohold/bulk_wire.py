"""The bulk put protocol: chunk Puts framed on a plain TCP connection, both ends' framing.

A gRPC Put of a 4 MiB chunk costs the receiving node ~0.6 CPU-s per GB and the sender
~0.4 (grpcio builds each received message as a bytes object per slice, appends them to a
bytearray and copies that once more; the sender's request is copied into slices): the
same bytes read straight into their final buffer with `recv_into` cost ~0.14 and ~0.2
(bench/README.md, "Bulk puts"). So a node whose gRPC port is plaintext also listens on a
bulk port (`node.bulk_listen`, advertised by `Chunks.BulkAddress`), and gateways send
chunk Puts of `gateway.bulk_min_bytes` or more there. Everything else (Has, Get, packs of
small Puts, metadata) stays on gRPC.

One connection carries one request at a time, in order:

    client -> node   hello:  b"CHBH" | u16 token length | token (ascii)
    node -> client   reply:  u32 length | PackItem  (code 0: accepted; else refused, closed)
    client -> node   put:    b"CHBP" | u16 request id length | u32 data length |
                             request id (utf-8) | chunk id (32) | checksum (16) | data
    node -> client   reply:  u32 length | PackItem  (what `Chunks.Put` would have answered)

The token is the per-call token of cargohold/cluster_auth.py, signed for the pseudo-method
`BULK_METHOD`, checked once per connection against the same role matrix as a Put
(node/access.py). A PackItem (protos/registry.proto) is a Put's outcome either way: code 0
with a serialized PutChunkReply, or the status code, details and detail JSON the gRPC call
would have ended with (cargohold/pack_items.py), so the gateway handles both paths alike.
The chunk id and checksum sit right before the data so the node stores `checksum || data`
as received, with no copy to join them. Integers are big-endian.
"""

from __future__ import annotations

import struct

# The role matrix entry of a bulk connection (node/access.py RPC_ROLES).
BULK_METHOD = "/cargohold.v1.Chunks/BulkPut"

HELLO_MAGIC = b"CHBH"
PUT_MAGIC = b"CHBP"
HELLO = struct.Struct(">4sH")
PUT = struct.Struct(">4sHI")
REPLY = struct.Struct(">I")
CHUNK_ID_LEN = 32  # sha256
CHECKSUM_LEN = 16  # xxh3-128 (cargohold.digests.checksum_of)
# A put frame's fixed part after its request id: chunk id, then checksum.
PREFIX_LEN = CHUNK_ID_LEN + CHECKSUM_LEN
TOKEN_MAX = 1024
REQUEST_ID_MAX = 256
# Largest reply a client accepts: a PackItem with a details string and detail JSON.
REPLY_MAX = 1 << 20


def hello(token: str) -> bytes:
    raw = token.encode("ascii")
    if len(raw) > TOKEN_MAX:
        raise ValueError("token too long")
    return HELLO.pack(HELLO_MAGIC, len(raw)) + raw


def put_header(request_id: str, chunk_id: bytes, checksum: bytes, length: int) -> bytes:
    """Everything of a put frame before its data."""
    rid = request_id.encode()[:REQUEST_ID_MAX]
    if len(chunk_id) != CHUNK_ID_LEN or len(checksum) != CHECKSUM_LEN:
        raise ValueError("chunk id or checksum of the wrong length")
    return PUT.pack(PUT_MAGIC, len(rid), length) + rid + chunk_id + checksum


def reply(item: bytes) -> bytes:
    return REPLY.pack(len(item)) + item
