"""cargohold_cli/lifeline.py: a child stops when its launcher's pipe closes, and not when
the thread that spawned it ends (what a parent-death signal would have done)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

CHILD = (
    "import sys, time\n"
    "from cargohold_cli.lifeline import watch\n"
    "watch(int(sys.argv[1]), 10.0)\n"
    "print('watching', flush=True)\n"
    "time.sleep(120)\n"
)


def test_the_child_outlives_its_spawning_thread_and_not_the_pipe() -> None:
    read_fd, write_fd = os.pipe()
    spawned: list[subprocess.Popen[str]] = []

    def spawn() -> None:
        spawned.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(read_fd)],
                pass_fds=(read_fd,),
                stdout=subprocess.PIPE,
                text=True,
            )
        )

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    os.close(read_fd)
    child = spawned[0]
    try:
        assert child.stdout is not None and child.stdout.readline() == "watching\n"
        assert child.poll() is None  # its spawning thread is gone; it runs on
        os.close(write_fd)  # what the kernel does when the launcher dies
        assert child.wait(timeout=30) == -signal.SIGTERM  # the orderly stop signal
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
