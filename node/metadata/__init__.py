"""Cluster metadata: the deterministic state machine (`state`), its Raft replication through
pysyncobj with the asyncio bridge and barrier reads (`raft`), and the gRPC `Metadata` service
over it (`service`). The catalogue of commands and queries is docs/metadata.md."""
