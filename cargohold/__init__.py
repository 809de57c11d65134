"""Cargohold's shared domain: digests, names, placement, config, errors, logging, wire.

Used by `node/` and `gateway/`; imports neither of them, nor the entry layer
`cargohold_cli/` (tests/test_layers.py checks it; docs/packaging.md).
"""

__version__ = "0.1.0"
