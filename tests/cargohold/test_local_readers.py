"""The local-reader mark: a node sees a gateway's shared lock on its store while, and only
while, some process holds it; a process killed with SIGKILL holds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cargohold import local_readers
from cargohold.local_readers import LocalReaders, ReaderMark


@pytest.fixture(autouse=True)
def no_recheck_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_readers, "RECHECK_SECONDS", 0.0)


def test_marks_of_this_process_are_seen_until_the_last_goes(tmp_path: Path) -> None:
    readers = LocalReaders(str(tmp_path))
    try:
        assert readers.present() is False
        first, second = ReaderMark(str(tmp_path)), ReaderMark(str(tmp_path))  # two workers
        assert first.held and second.held
        assert readers.present() is True
        first.close()
        assert readers.present() is True
        second.close()
        assert readers.present() is False
    finally:
        readers.close()
    assert readers.present() is False  # closed: no probe, the last answer


def test_the_answer_is_kept_between_rechecks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = LocalReaders(str(tmp_path))
    try:
        assert readers.present() is False
        monkeypatch.setattr(local_readers, "RECHECK_SECONDS", 3600.0)
        mark = ReaderMark(str(tmp_path))
        assert readers.present() is False  # not asked again within the hour
        mark.close()
    finally:
        readers.close()


def test_no_file_no_mark(tmp_path: Path) -> None:
    assert not ReaderMark(str(tmp_path / "absent")).held


def test_a_reader_killed_holds_nothing(tmp_path: Path) -> None:
    readers = LocalReaders(str(tmp_path))
    code = (
        "import sys, time\n"
        "from cargohold.local_readers import ReaderMark\n"
        f"mark = ReaderMark({str(tmp_path)!r})\n"
        "print(mark.held, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"True"
        assert readers.present() is True
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        for _ in range(100):  # the kernel lets the lock go as the process is reaped
            if not readers.present():
                break
            time.sleep(0.01)
        assert readers.present() is False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        readers.close()
