"""The dev cluster's port choices (cargohold_cli/devcluster.py): no port handed out twice."""

from __future__ import annotations

from cargohold_cli.devcluster import claim_ports, free_port


def test_claimed_ports_are_never_handed_out_again() -> None:
    port = free_port()
    # A range that takes in a port free_port handed out is refused as a whole...
    assert not claim_ports([port + 1000, port])
    # ... and claims nothing: its other port is still free to claim.
    assert claim_ports([port + 1000])
    assert not claim_ports([port + 1000])
