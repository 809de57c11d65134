"""Replication rules: copies to and from other registries (`sides.py` the two ends,
`copy.py` what one tag's copy does, `runner.py` leases, triggers, cursors and retries;
cargohold/replication.py the rules; docs/mirroring.md "Replication")."""
