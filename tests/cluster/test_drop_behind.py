"""Dropping behind writes where nobody reads (`node.drop_written_pages = "unread"`), with
real processes: three nodes at R=3 on one host and one gateway reading node n1's LMDB
directly (the bench's shape). n1 keeps the pages it writes cached (its gateway sends
fresh pushes from them); n2 and n3, which no gateway here reads, drop them after each
commit, until one of them serves a read over gRPC. What is stored never changes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import aiohttp
import pytest

from cargohold.mapped_pages import PAGE_SIZE
from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import chunk_ids, has, node_chunk, pull_blob, push_blob
from cluster.shapes import CHUNK
from tests.page_state import cached_pages

pytestmark = [pytest.mark.cluster]

REPO = "drop/behind"
BLOB = 8 * 1024 * 1024


def cached_bytes(cluster: LocalCluster, i: int) -> int:
    data_mdb = cluster.node_data_dir(i) / "chunks" / "data.mdb"
    return cached_pages(data_mdb, 0, os.path.getsize(data_mdb)) * PAGE_SIZE


async def all_held(cluster: LocalCluster, ids: list[bytes]) -> None:
    for _ in range(300):
        held = [await asyncio.to_thread(has, cluster, i, ids) for i in range(3)]
        if all(all(h) for h in held):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the third copies were not written")


async def test_only_nodes_nobody_reads_drop_what_they_write(
    quiet_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = quiet_cluster(nodes=3, replicas=3, write_quorum=2, local_reads=True)
    base = cluster.gateway_urls[0]
    data = os.urandom(BLOB)
    async with aiohttp.ClientSession() as http:
        digest = await push_blob(http, base, REPO, data)
        ids = chunk_ids(data, CHUNK)
        await all_held(cluster, ids)
        cached = [cached_bytes(cluster, i) for i in range(3)]
        # n1: every written page still cached; n2, n3: dropped behind. What stays is
        # the folios that also hold other pages (LMDB's meta and branch pages, the
        # index), which the next commit reads.
        assert cached[0] >= BLOB, cached
        assert cached[1] <= BLOB // 2 and cached[2] <= BLOB // 2, cached
        assert await pull_blob(http, base, REPO, digest) == data
        # Nothing stored changed: n2 serves every chunk right after the drop (where the
        # kernel reads the dropped pages from is not checked here).
        for chunk_id, start in zip(ids, range(0, BLOB, CHUNK), strict=True):
            copy = await asyncio.to_thread(node_chunk, cluster, 1, chunk_id)
            assert copy == data[start : start + CHUNK]
        # n2 has just served reads over gRPC: it now keeps what it writes, n3 still not.
        more = os.urandom(BLOB)
        before = cached_bytes(cluster, 1)
        await push_blob(http, base, REPO, more)
        await all_held(cluster, chunk_ids(more, CHUNK))
        assert cached_bytes(cluster, 1) >= before + BLOB // 2
        assert cached_bytes(cluster, 2) <= BLOB // 2
