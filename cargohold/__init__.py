"""Cargohold: shared domain (digests, names, placement, config, errors, logging, CLI)."""

__version__ = "0.1.0"
