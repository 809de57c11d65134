"""The exit statuses of `cargohold` commands, and their words for humans.

    0    stopped normally
    1    failed after starting (a cluster that did not become ready, an admin call failed)
    2    configuration or usage error (ConfigError, argparse)
    3    data directory in use by another process (DataDirInUse)
    4    a listen address is taken (AddressInUse)
    5    another startup error (StartupError: unreadable TLS files, ...)
    130  interrupted (Ctrl-C before the process installed its own handler)

The values of 2 to 5 are the `exit_code` of the error classes in cargohold/errors.py;
README.md ("Exit codes") repeats this table for operators.
"""

from __future__ import annotations

import signal

from cargohold.errors import AddressInUse, ConfigError, DataDirInUse, StartupError

MEANING: dict[int, str] = {
    0: "stopped",
    1: "failed",
    ConfigError.exit_code: "configuration error",
    DataDirInUse.exit_code: "data directory in use",
    AddressInUse.exit_code: "address in use",
    StartupError.exit_code: "startup error",
    130: "interrupted",
}
# A process that exits with one of these failed before it served anything.
STARTUP_EXITS = frozenset(
    {ConfigError.exit_code, DataDirInUse.exit_code, AddressInUse.exit_code, StartupError.exit_code}
)


def describe_exit(status: int | None) -> str:
    """'exit 4: address in use', 'killed by SIGKILL', 'exit 1: failed'."""
    if status is None:
        return "running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit {status}: {MEANING.get(status, 'failed')}"
