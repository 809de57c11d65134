"""gRPC's fork handlers are off in every process that imports cargohold (they crashed the
forked Raft snapshot child: cargohold/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_grpc_fork_handlers_are_off_once_the_cli_loaded_grpc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    code = (
        "import sys, os\n"
        "import cargohold_cli.cli\n"
        "assert 'grpc' in sys.modules\n"
        "print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0"


def test_an_operators_setting_is_kept() -> None:
    env = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="1")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cargohold, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"
