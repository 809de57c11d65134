"""Vulnerability reports and the vulnerability pull policy (docs/supply-chain.md)."""
