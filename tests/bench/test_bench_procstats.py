"""bench.procstats against real processes: CPU grows with work, RSS peaks, gone is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from bench import procstats


def test_cpu_meter_counts_a_busy_child_and_its_own_children() -> None:
    # The child spins ~0.3 s itself and waits for a grandchild that spins ~0.3 s too.
    code = (
        "import subprocess, sys, time\n"
        "spin = 'import time\\nt=time.process_time()\\nwhile time.process_time()-t<0.3: pass'\n"
        "subprocess.run([sys.executable, '-c', spin], check=True)\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        meter = procstats.CpuMeter({"busy": proc.pid})
        # Wait until both spins are done (the child then blocks on stdin); bounded.
        deadline = time.monotonic() + 60
        while (procstats.cpu_seconds(proc.pid) or 0) < 0.55 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = meter.used()
        assert set(used) == {"busy"}
        # The grandchild's 0.3 s is in cstime/cutime: without them this stays near 0.3.
        assert used["busy"] >= 0.5
        assert meter.total() >= used["busy"]
        peaks = procstats.peak_rss_mib({"busy": proc.pid})
        assert peaks["busy"] > 1.0
    finally:
        proc.communicate(b"")
    # Gone: absent, never an error.
    assert procstats.cpu_seconds(proc.pid) is None
    assert procstats.peak_rss_bytes(proc.pid) is None
    assert meter.used() == {"busy": 0.0}


def test_own_process_and_per_gb() -> None:
    assert (procstats.cpu_seconds(os.getpid()) or 0) > 0
    assert procstats.cpu_s_per_gb(2.0, 4 * 10**9) == 0.5
    assert procstats.cpu_s_per_gb(1.0, 0) is None


def test_threads_are_read_one_by_one() -> None:
    stop = threading.Event()
    tids: list[int] = []

    def spin() -> None:
        tids.append(threading.get_native_id())
        while not stop.is_set():
            pass

    before = {"me": procstats.thread_cpu_seconds(os.getpid())}
    started = time.perf_counter()
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while (
            not tids or procstats.thread_cpu_seconds(os.getpid()).get(tids[0], ("", 0.0))[1] < 0.2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        threads = procstats.thread_cpu_seconds(os.getpid())
        # The main thread's tid is the pid; the spinning thread has its own, and its time.
        assert os.getpid() in threads and tids[0] in threads
        assert threads[tids[0]][1] >= 0.2
        busy = procstats.busy_threads({"me": os.getpid()}, before, time.perf_counter() - started)
    finally:
        stop.set()
        worker.join()
    # The spinner, started after `before`, counts from zero and is labelled by name and tid.
    assert any(p == "me" and label.endswith(f" {tids[0]}") and pct > 2 for p, label, pct in busy)
    assert procstats.thread_cpu_seconds(2**22 + 12345) == {}
