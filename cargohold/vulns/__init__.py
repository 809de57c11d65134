"""Vulnerability matching (docs/supply-chain.md): version comparison per ecosystem, the OSV
database's compact index, matching an SBOM against it, and the report format."""
