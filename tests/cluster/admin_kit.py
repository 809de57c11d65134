"""`cargohold admin ...` from tests, in-process: the CLI's own `main` with the cluster's
admin config and node addresses (`--nodes` goes last, where every verb accepts it).
`admin_run` for plain tests; `admin` in a thread for async ones (the CLI runs its own
event loop). Both answer what the command printed and fail the test on a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

from cargohold_cli.cli import main
from cargohold_cli.devcluster import LocalCluster


def admin_run(cluster: LocalCluster, *argv: str, stdin: str = "") -> str:
    nodes = ",".join(cluster.node_grpc_addresses)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr("sys.stdin", io.StringIO(stdin))
        rc = main(["admin", "--config", str(cluster.admin_config_path()), *argv, "--nodes", nodes])
    assert rc == 0, f"cargohold admin {' '.join(argv)} exited {rc}: {out.getvalue()}"
    return out.getvalue()


async def admin(cluster: LocalCluster, *argv: str, stdin: str = "") -> str:
    return await asyncio.to_thread(admin_run, cluster, *argv, stdin=stdin)
