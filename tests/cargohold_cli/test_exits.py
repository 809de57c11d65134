"""cargohold_cli/exits.py: the exit statuses come from the error classes, one each."""

from __future__ import annotations

import signal

from cargohold.errors import AddressInUse, ConfigError, DataDirInUse, StartupError
from cargohold_cli.exits import MEANING, STARTUP_EXITS, describe_exit


def test_each_startup_failure_has_its_own_status() -> None:
    codes = [ConfigError.exit_code, DataDirInUse.exit_code, AddressInUse.exit_code]
    codes.append(StartupError.exit_code)
    assert codes == [2, 3, 4, 5] and set(codes) == STARTUP_EXITS
    assert len(set(MEANING)) == len(MEANING)
    assert describe_exit(4) == "exit 4: address in use"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit 1: failed"
