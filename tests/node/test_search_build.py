"""The background build of the search index (node/metadata/search_build.py): commands apply
while it builds (the state's lock is free between slices), searches before it is ready are
answered UNAVAILABLE, the changes applied meanwhile are in the finished index, and a snapshot
load during a build starts it over."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cargohold.errors import Unavailable
from node.metadata.search_build import SearchIndexBuilder
from node.metadata.state import MetadataState
from tests.node.test_search_index import dg, names, push, search

# A hang guard for the test's own threads, never a measurement.
_HANG = 60.0

SPECS: list[dict[str, Any]] = [
    {"n": 1000},
    {"q": "big", "n": 1000},
    {"platform": "linux/arm64", "n": 1000},
    {"labels": ["tier=web"], "n": 1000},
    {"sort": "pushed", "desc": True, "n": 1000},
    {"sort": "pulled", "desc": True, "n": 1000},
    {"kind": "repository", "sort": "size", "n": 1000},
]


class PausingBuilder(SearchIndexBuilder):
    """Stops between two slices, with the lock released, until `resume` is set."""

    def __init__(self, *args: Any, pause_at: int = 2) -> None:
        super().__init__(*args)
        self.pause_at = pause_at
        self.slices = 0
        self.paused = threading.Event()
        self.resume = threading.Event()

    def _between_slices(self) -> None:
        self.slices += 1
        if self.slices == self.pause_at:
            self.paused.set()
            assert self.resume.wait(_HANG)


def corpus() -> MetadataState:
    st = MetadataState()
    arm = {"platforms": ["linux/arm64/v8"], "labels": {"tier": "web"}}
    for i in range(12):
        push(st, "team/big", f"big{i}", f"t{i}", now=100 + i, info=arm if i % 2 else None)
    for i in range(6):
        push(st, f"team/small{i}", f"small{i}", "latest", now=200 + i, layer=10 + i)
    return st


def run_build(builder: SearchIndexBuilder) -> tuple[threading.Thread, list[bool]]:
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(builder.build()), daemon=True)
    thread.start()
    return thread, outcome


def test_commands_apply_while_the_index_builds() -> None:
    st = corpus()
    lock = threading.Lock()
    builder = PausingBuilder(st, lock, 3, 0.0)
    assert st.search_inline is False
    thread, outcome = run_build(builder)
    assert builder.paused.wait(_HANG)
    # Mid-build (the first slice is in): the lock is free, so the Raft thread applies.
    assert lock.acquire(blocking=False)
    try:
        index = st.search_index()
        assert index is not None and not index.ready and 0 < len(index) < 18
        with pytest.raises(Unavailable, match="being built"):
            search(st)
        push(st, "team/new", "new1", "v1", now=500)  # a repository listed after the start
        st.apply("tag_delete", {"repo": "team/big", "tag": "t0"})  # a row already made
        st.apply("tag_delete", {"repo": "team/small5", "tag": "latest"})  # one not yet
        # t1 moves to an image without a platform; small0 is pulled.
        push(st, "team/big", "big2", "t1", now=600)
        pull = ["team/small0", dg("small0"), None, 700.0, None, None, None]
        st.apply("pull_record", {"pulls": [pull]})
    finally:
        lock.release()
    builder.resume.set()
    thread.join(_HANG)
    assert outcome == [True]
    assert builder.last_build["slices"] > 2
    # The finished index is the one a build of the final state in one go makes.
    whole = MetadataState()
    whole.load(st.dump())
    assert whole.search_inline
    for spec in SPECS:
        assert search(st, **spec) == search(whole, **spec), spec
    assert "team/new:v1" in names(search(st, n=1000))
    assert "team/big:t0" not in names(search(st, n=1000))
    assert "team/big:t1" not in names(search(st, platform="linux/arm64", n=1000))
    assert names(search(st, sort="pulled", desc=True, n=1)) == ["team/small0:latest"]


def test_a_snapshot_load_during_a_build_starts_it_over() -> None:
    st = corpus()
    lock = threading.Lock()
    builder = PausingBuilder(st, lock, 2, 0.0)
    thread, outcome = run_build(builder)
    assert builder.paused.wait(_HANG)
    other = MetadataState()
    push(other, "elsewhere/app", "e1", "1.0", now=10)
    with lock:  # what a snapshot sent by the leader does, on the Raft thread
        st.load(other.dump())
    builder.resume.set()
    thread.join(_HANG)
    assert outcome == [False]
    assert st.search_index() is None
    # The load asked for a new build: the builder's thread makes it.
    builder.start()
    try:
        asyncio.run(asyncio.wait_for(builder.wait_ready(), _HANG))
    finally:
        builder.stop()
    assert names(search(st)) == ["elsewhere/app:1.0"]


def test_wait_ready_is_bounded() -> None:
    st = corpus()
    builder = SearchIndexBuilder(st, threading.Lock(), 4, 0.0)
    # Never started: a search waits its bound, then the state says why it cannot answer.
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(builder.wait_ready(), 0.01))
    with pytest.raises(Unavailable, match=r"0 of about 18 tags"):
        search(st)
    assert builder.build()
    asyncio.run(asyncio.wait_for(builder.wait_ready(), _HANG))
    assert len(search(st, n=1000)["items"]) == 18


def test_a_finished_build_gives_its_free_heap_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's transient lists and sort keys are freed once it is done; the builder then
    trims the heap (malloc_trim) so RssAnon holds the index, not the build's leftovers. A
    build a snapshot load interrupted does not trim (the next one will)."""
    trims: list[bool] = []
    monkeypatch.setattr("node.metadata.search_build.release_memory", lambda: trims.append(True))
    st = corpus()
    lock = threading.Lock()
    builder = PausingBuilder(st, lock, 2, 0.0)
    thread, outcome = run_build(builder)
    assert builder.paused.wait(_HANG)
    with lock:  # a snapshot load replaces the index midway
        st.load(MetadataState().dump())
    builder.resume.set()
    thread.join(_HANG)
    assert outcome == [False] and trims == []
    push(st, "elsewhere/app", "e1", "1.0", now=10)
    assert SearchIndexBuilder(st, lock, 4, 0.0).build()
    assert trims == [True]
    assert names(search(st)) == ["elsewhere/app:1.0"]
