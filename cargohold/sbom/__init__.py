"""Software bills of materials: what an image contains, read from its layers.

`layers` streams one layer (tar, gzip or zstd) and keeps only the few files package
databases live in, and merges layers in order with their whiteouts; `packages` turns those
files into package records; `cyclonedx` writes the CycloneDX document and the OCI referrer
manifest that carries it (the contract: docs/supply-chain.md). Pure and blocking: the
gateway's scanner (gateway/scanner/) runs them in a worker thread.
"""
