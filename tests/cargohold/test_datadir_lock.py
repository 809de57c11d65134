"""cargohold/datadir_lock.py: one holder per directory, named to whoever else tries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cargohold import datadir_lock
from cargohold.datadir_lock import DataDirLock
from cargohold.errors import DataDirInUse


def test_a_second_claim_names_the_holder_until_it_lets_go(tmp_path: Path) -> None:
    directory = tmp_path / "n1"
    assert datadir_lock.holder(directory) is None  # no directory, no file: nobody
    lock = DataDirLock.acquire(directory, "node n1", grpc="127.0.0.1:7001")
    held = datadir_lock.holder(directory)
    assert held is not None and held.pid == os.getpid() and held.role == "node n1"
    assert held.about == {"grpc": "127.0.0.1:7001"}
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock.acquire(directory, "node intruder")
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and "node n1" in message and str(directory) in message
    assert refused.value.exit_code == 3
    lock.release()
    # The file stays behind and means nothing: the kernel says nobody holds it.
    assert (directory / "LOCK").exists() and datadir_lock.holder(directory) is None
    with DataDirLock.acquire(directory, "node n1 again"):
        assert datadir_lock.holder(directory).role == "node n1 again"  # type: ignore[union-attr]
