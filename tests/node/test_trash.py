"""The trash (node/metadata/trash.py through node/metadata/state.py, and what garbage
collection in node/gc.py does with it): delete -> trash -> restore, purge after the
retention, tag overwrites, indexes and their children, and the blobs a trashed manifest
holds (never reclaimed before a purge)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import time
from typing import Any

import pytest

from cargohold import metadata_api as api
from cargohold.config import Config
from cargohold.errors import (
    BlobUnknown,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    TagImmutable,
    TrashConflict,
)
from node.gc import GcRole, mark, unlinked_blobs
from node.memstore import MemoryChunkStore
from node.metadata import state as state_module
from node.metadata.state import MetadataState

REPO = "lib/app"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DAY = 86400.0


def chunk(name: str) -> bytes:
    return hashlib.sha256(b"chunk:" + name.encode()).digest()


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def recipe(name: str, size: int = 100) -> api.Recipe:
    return {"size": size, "chunks": [[chunk(name).hex(), size]]}


def blob(st: MetadataState, name: str, repo: str = REPO) -> str:
    st.execute(api.BlobCommit(repo, dg(name), recipe(name), None, 1.0))
    return dg(name)


def manifest(
    st: MetadataState,
    name: str,
    tag: str | None = None,
    blobs: tuple[str, ...] | None = None,
    children: tuple[str, ...] = (),
    subject: str | None = None,
    repo: str = REPO,
    immutable: tuple[str, ...] = (),
) -> str:
    if blobs is None:
        blobs = (blob(st, f"{name}-config", repo), blob(st, f"{name}-layer", repo))
    st.execute(
        api.ManifestPut(
            repo,
            dg(name),
            INDEX if children else MANIFEST,
            recipe(name),
            blobs=blobs,
            manifests=children,
            subject=subject,
            tag=tag,
            now=2.0,
            immutable=immutable,
        )
    )
    return dg(name)


def delete(st: MetadataState, digest: str, now: float = 10.0, repo: str = REPO) -> None:
    st.execute(api.ManifestDelete(repo, digest, (), now=now, trash=True))


def restore(st: MetadataState, digest: str | None = None, tag: str | None = None, **kw: Any):
    return st.execute(api.TrashRestore(REPO, digest, tag, **kw))


def visible(st: MetadataState, digest: str) -> bool:
    try:
        st.execute(api.ManifestGet(REPO, digest))
    except ManifestUnknown:
        return False
    return True


def tag_of(st: MetadataState, tag: str) -> str | None:
    try:
        return st.execute(api.TagGet(REPO, tag)).digest
    except (ManifestUnknown, NameUnknown):
        return None


def recounted(st: MetadataState) -> api.MetadataStatus:
    copy = MetadataState()
    copy.load(st.dump())
    return copy.execute(api.Status())


@pytest.fixture
def st() -> MetadataState:
    return MetadataState()


# -- delete -> trash -> restore -------------------------------------------------------------
def test_a_trashed_manifest_is_invisible_then_restored_with_its_tags(st: MetadataState) -> None:
    subject = manifest(st, "base", tag="base")
    d = manifest(st, "app", tag="v1", subject=subject)
    config, layer = dg("app-config"), dg("app-layer")
    manifest(st, "app", tag="latest", blobs=(config, layer), subject=subject)
    delete(st, d, now=100.0)
    # Exactly as deleted: by digest, by tag, in the tag list, in the referrers.
    assert not visible(st, d)
    assert tag_of(st, "v1") is None and tag_of(st, "latest") is None
    assert st.execute(api.TagsList(REPO)).items == ["base"]
    assert st.execute(api.Referrers(REPO, subject)) == []
    with pytest.raises(BlobUnknown):  # its own bytes are unlinked as they were
        st.execute(api.BlobGet(REPO, d))
    assert [(e.kind, e.digest, e.tag, e.deleted_at) for e in st.execute(api.TrashList())] == [
        ("manifest", d, None, 100.0),
        ("tag", d, "latest", 100.0),
        ("tag", d, "v1", 100.0),
    ]
    # A stolen credential also deleted the layers: the trash still holds their recipes.
    st.execute(api.BlobUnlink(REPO, config))
    st.execute(api.BlobUnlink(REPO, layer))

    restored = restore(st, digest=d)
    assert restored == api.TrashRestored([d], ["latest", "v1"])
    assert visible(st, d) and tag_of(st, "v1") == d and tag_of(st, "latest") == d
    assert st.execute(api.TagsList(REPO)).items == ["base", "latest", "v1"]
    assert [r["digest"] for r in st.execute(api.Referrers(REPO, subject))] == [d]
    for b in (config, layer, d):  # pullable again: every blob linked in the repository
        assert st.execute(api.BlobGet(REPO, b)) == st.execute(api.BlobRecipe(b))
    assert st.execute(api.TrashList()) == []
    assert st.execute(api.Status()) == recounted(st)
    # Restored means out of the trash: a repeat says so (a retry reads it as success).
    with pytest.raises(ManifestUnknown, match="not in the trash"):
        restore(st, digest=d)


def test_an_operators_restore_and_purge_are_in_the_activity_log(st: MetadataState) -> None:
    actor: api.Actor = {"time": 70.0, "actor": "cli:root", "actor_kind": "admin"}
    d = manifest(st, "app", tag="v1")
    delete(st, d, now=60.0)
    st.execute(api.TrashRestore(REPO, None, "v1", False, (), 70.0, actor))
    delete(st, d, now=80.0)
    assert st.execute(api.TrashPurge(90.0, 0.0, None, actor)) == 2
    lines = [json.loads(line) for line in st.execute(api.AuditTail(0)).lines]
    events = [(e[7], e[8], e[9], e[10], e[12]) for e in lines]  # [seq, prev, *event]
    assert events == [
        ("restore", REPO, "v1", d, "from the trash; tags v1"),
        ("purge", REPO, "trash", "", "2 trash entries deleted over 0 s ago"),
    ]


def test_a_trashed_tag_comes_back_alone(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    st.execute(api.TagDelete(REPO, "v1", now=50.0, trash=True))
    assert tag_of(st, "v1") is None and visible(st, d)  # untagged, still there
    assert restore(st, tag="v1") == api.TrashRestored([], ["v1"])
    assert tag_of(st, "v1") == d
    with pytest.raises(ManifestUnknown, match="tag v1 of lib/app is not in the trash"):
        restore(st, tag="v1")


def test_restoring_a_tag_brings_its_trashed_manifest_back(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    st.execute(api.ManifestPut(REPO, d, MANIFEST, recipe("app"), tag="v2", now=3.0))
    delete(st, d)
    assert restore(st, tag="v1") == api.TrashRestored([d], ["v1"])
    assert visible(st, d) and tag_of(st, "v1") == d and tag_of(st, "v2") is None
    # v2 stays in the trash, restorable on its own.
    assert [(e.kind, e.tag) for e in st.execute(api.TrashList(REPO))] == [("tag", "v2")]
    assert restore(st, tag="v2") == api.TrashRestored([], ["v2"])


def test_a_repository_whose_last_manifest_is_trashed_leaves_the_catalog(
    st: MetadataState,
) -> None:
    d = manifest(st, "app", tag="v1", blobs=())
    delete(st, d)
    assert st.execute(api.Catalog()).items == []
    with pytest.raises(NameUnknown):
        st.execute(api.TagsList(REPO))
    restore(st, digest=d)
    assert st.execute(api.Catalog()).items == [REPO]
    assert st.execute(api.Status()) == recounted(st)


def test_a_delete_without_trash_is_final_as_before(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    st.execute(api.ManifestDelete(REPO, d))  # an older gateway, an old log entry
    assert st.execute(api.TrashList()) == []
    with pytest.raises(ManifestUnknown):
        restore(st, digest=d)


def test_pushing_a_trashed_digest_again_takes_it_out(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    delete(st, d)
    manifest(st, "app")  # the same bytes pushed by digest
    assert visible(st, d)
    assert [(e.kind, e.tag) for e in st.execute(api.TrashList())] == [("tag", "v1")]
    assert restore(st, digest=d) == api.TrashRestored([], ["v1"])
    # Pushed again with its old tag: nothing left to restore.
    st.execute(api.TagDelete(REPO, "v1", now=20.0, trash=True))
    manifest(st, "app", tag="v1")
    assert st.execute(api.TrashList()) == []


# -- tag overwrite --------------------------------------------------------------------------
def test_a_tag_moved_since_refuses_the_restore_unless_forced(st: MetadataState) -> None:
    old = manifest(st, "old", tag="v1")
    delete(st, old)
    new = manifest(st, "new", tag="v1")  # the owner pushed a fix meanwhile
    before = st.dump()
    with pytest.raises(TrashConflict) as refused:
        restore(st, digest=old)
    assert f"tag v1 of {REPO} now points to {new}" in refused.value.message
    assert refused.value.detail == {"tag": "v1", "current": new, "digest": old}
    assert st.dump() == before  # all or nothing: the manifest did not come back alone
    assert restore(st, digest=old, force=True) == api.TrashRestored([old], ["v1"])
    assert tag_of(st, "v1") == old and visible(st, new)


def test_force_never_moves_an_immutable_tag(st: MetadataState) -> None:
    rules = ("lib/*:v*",)
    old = manifest(st, "old", tag="v1")
    st.execute(api.TagDelete(REPO, "v1", now=5.0, trash=True))  # no rule yet when deleted
    new = manifest(st, "new", tag="v1", immutable=rules)
    with pytest.raises(TagImmutable, match=r"rule lib/\*:v\*"):
        restore(st, tag="v1", force=True, immutable=rules)
    assert tag_of(st, "v1") == new
    # Restoring onto a free immutable tag is a first push of it: allowed.
    st2 = MetadataState()
    d = manifest(st2, "old", tag="v1")
    st2.execute(api.TagDelete(REPO, "v1", now=5.0, trash=True))
    st2.execute(api.TrashRestore(REPO, None, "v1", False, rules))
    assert st2.execute(api.TagGet(REPO, "v1")).digest == d == old


def test_a_tag_deleted_twice_restores_to_where_it_pointed_last(st: MetadataState) -> None:
    a = manifest(st, "a", tag="v1")
    st.execute(api.TagDelete(REPO, "v1", now=5.0, trash=True))
    b = manifest(st, "b", tag="v1")
    st.execute(api.TagDelete(REPO, "v1", now=6.0, trash=True))
    restore(st, tag="v1")
    assert tag_of(st, "v1") == b != a


# -- indexes ------------------------------------------------------------------------------
def test_an_index_comes_back_with_its_trashed_children(st: MetadataState) -> None:
    amd, arm = manifest(st, "amd64"), manifest(st, "arm64")
    index = manifest(st, "index", tag="v1", blobs=(), children=(amd, arm))
    delete(st, index)
    delete(st, amd)
    delete(st, arm)
    restored = restore(st, tag="v1")
    assert restored == api.TrashRestored(sorted([index, amd, arm]), ["v1"])
    assert all(visible(st, d) for d in (index, amd, arm))
    assert st.execute(api.TrashList()) == []


def test_an_index_with_a_live_child_restores_only_itself(st: MetadataState) -> None:
    amd, arm = manifest(st, "amd64"), manifest(st, "arm64")
    index = manifest(st, "index", tag="v1", blobs=(), children=(amd, arm))
    delete(st, index)
    delete(st, arm)
    assert restore(st, digest=index) == api.TrashRestored(sorted([index, arm]), ["v1"])
    assert visible(st, amd)


def test_an_index_whose_child_is_gone_is_refused(st: MetadataState) -> None:
    amd, arm = manifest(st, "amd64"), manifest(st, "arm64")
    index = manifest(st, "index", tag="v1", blobs=(), children=(amd, arm))
    delete(st, index)
    delete(st, amd)
    st.execute(api.ManifestDelete(REPO, arm))  # deleted outright: not restorable
    before = st.dump()
    with pytest.raises(ManifestBlobUnknown, match=f"child {arm} is neither in {REPO}"):
        restore(st, digest=index)
    assert st.dump() == before
    assert restore(st, digest=amd) == api.TrashRestored([amd], [])


# -- purge and garbage collection -----------------------------------------------------------
def test_purge_after_the_retention_with_an_injected_now(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    delete(st, d, now=1000.0)
    e = manifest(st, "other", tag="v2")
    st.execute(api.TagDelete(REPO, "v2", now=1000.0 + DAY / 2, trash=True))
    assert st.execute(api.TrashPurge(1000.0 + DAY - 1, DAY)) == 0
    assert st.execute(api.TrashPurge(1000.0 + DAY, DAY)) == 2  # the manifest and its v1
    assert [(x.kind, x.tag) for x in st.execute(api.TrashList())] == [("tag", "v2")]
    with pytest.raises(ManifestUnknown, match="not in the trash"):
        restore(st, digest=d)
    # Retention 0 (trash turned off): everything goes at the next purge.
    assert st.execute(api.TrashPurge(1000.0 + DAY / 2, 0.0)) == 1
    assert visible(st, e) and st.execute(api.TrashList()) == []


def test_a_tag_whose_manifest_was_purged_says_so(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    st.execute(api.TagDelete(REPO, "v1", now=100.0, trash=True))
    delete(st, d, now=50.0)  # its manifest went into the trash earlier... in time order
    st.execute(api.TrashPurge(60.0, 0.0))  # ...and was purged: the tag entry stays
    with pytest.raises(ManifestUnknown, match="no longer in the trash"):
        restore(st, tag="v1")


def test_purge_by_repository(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    o = manifest(st, "app", tag="v1", repo="lib/other")
    delete(st, d)
    delete(st, o, repo="lib/other")
    assert st.execute(api.TrashPurge(100.0, 0.0, "lib/other")) == 2
    assert {e.repo for e in st.execute(api.TrashList())} == {REPO}


def test_gc_holds_what_the_trash_needs_until_the_purge(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1")
    config, layer = dg("app-config"), dg("app-layer")
    delete(st, d)
    st.execute(api.BlobUnlink(REPO, config))
    st.execute(api.BlobUnlink(REPO, layer))
    snap = st.snapshot()
    # Nothing to prune, every chunk marked (the manifest's own from its trashed record).
    assert unlinked_blobs(snap) == {}
    assert mark(snap) >= {chunk("app"), chunk("app-config"), chunk("app-layer")}
    # Even a prune that names them (chosen before the delete) forgets nothing.
    assert st.execute(api.GcPrune((d, config, layer))) == 0
    st.execute(api.TrashPurge(100.0, 0.0))
    assert set(unlinked_blobs(st.snapshot())) == {d, config, layer}
    assert st.execute(api.GcPrune((d, config, layer))) == 3
    assert chunk("app-layer") not in mark(st.snapshot())


def test_restore_is_refused_if_a_blob_was_reclaimed(st: MetadataState) -> None:
    """Cannot happen through the commands (the test above); if a state ever held a trashed
    manifest without one of its blobs' recipes, the restore says which and changes nothing."""
    d = manifest(st, "app", tag="v1")
    delete(st, d)
    st.execute(api.BlobUnlink(REPO, dg("app-layer")))
    del st.blobs[dg("app-layer")]  # a corrupted state, by hand
    before = st.dump()
    with pytest.raises(BlobUnknown, match=f"blobs of {d} were reclaimed") as refused:
        restore(st, digest=d)
    assert refused.value.detail == {"missing": [dg("app-layer")]}
    assert st.dump() == before


def test_random_deletes_prunes_and_restores_never_lose_a_held_blob() -> None:
    """Whatever order pushes, deletes, blob deletes, GC prunes (of everything unlinked)
    and restores come in, a blob recorded when its manifest went into the trash is still
    recorded while it is there, so its restore never fails for a reclaimed blob. (A blob
    pruned while its manifest was still live, unlinked under it, is another story: the
    restore then refuses, naming it.)"""
    rng = random.Random(12)
    st = MetadataState()
    names = [f"img{i}" for i in range(8)]
    recorded_at_delete: dict[str, set[str]] = {}
    restores = 0
    for step in range(2000):
        name = rng.choice(names)
        d = dg(name)
        op = rng.randrange(6)
        try:
            if op == 0:
                manifest(st, name, tag=rng.choice(["a", "b", None]))
            elif op == 1:
                blobs = st.manifests.get(REPO, {}).get(d)
                delete(st, d, now=float(step))
                assert blobs is not None
                recorded_at_delete[d] = {b for b in blobs.blobs if b in st.blobs}
            elif op == 2:
                st.execute(api.BlobUnlink(REPO, dg(f"{name}-layer")))
            elif op == 3:
                st.execute(api.GcPrune(tuple(unlinked_blobs(st.snapshot()))))
            elif op == 4:
                restore(st, digest=d, force=rng.random() < 0.5)
                restores += 1
            else:
                st.execute(api.TagDelete(REPO, rng.choice("ab"), now=float(step), trash=True))
        except (ManifestUnknown, NameUnknown, TrashConflict):
            pass
        except BlobUnknown as exc:
            # Unlinking an unlinked blob, or restoring what lost a blob while still live.
            trashed = st.trash.manifests.get(REPO, {}).get(d)
            assert op == 2 or (
                op == 4
                and trashed is not None
                and set(trashed.manifest.blobs) - recorded_at_delete[d]
            ), f"step {step}: {exc}"
        except ManifestBlobUnknown as exc:
            assert op == 0, f"step {step}: {exc}"  # a push whose layer was unlinked
        for digest in st.trash.manifests.get(REPO, {}):
            assert recorded_at_delete[digest] <= st.blobs.keys(), f"step {step}"
    assert restores > 50
    assert st.execute(api.Status()) == recounted(st)


# -- snapshots --------------------------------------------------------------------------------
def test_the_trash_survives_a_snapshot_as_version_4(st: MetadataState) -> None:
    d = manifest(st, "app", tag="v1", subject=manifest(st, "base"))
    delete(st, d, now=42.0)
    data = st.dump()
    assert pickle.load(io.BytesIO(data))["version"] == 4
    copy = MetadataState()
    copy.load(data)
    assert copy.execute(api.TrashList()) == st.execute(api.TrashList())
    assert copy.execute(api.TrashRestore(REPO, d)) == api.TrashRestored([d], ["v1"])
    assert copy.execute(api.TagGet(REPO, "v1")).subject == dg("base")


def test_a_version_4_snapshot_written_before_the_trash_loads_with_an_empty_one() -> None:
    st = MetadataState()
    manifest(st, "app", tag="v1")  # push times: version 4
    snap = st.snapshot()
    names = [n for n in state_module._SECTIONS if n not in ("trash", "trash_tags")]
    stream = [pickle.dumps({"version": 4, "blob_bytes": snap["blob_bytes"], "sections": names})]
    for name in names:
        stream += [pickle.dumps(list(state_module._flatten(name, snap[name]))), pickle.dumps(None)]
    copy = MetadataState()
    copy.load(b"".join(stream))
    assert copy.execute(api.TrashList()) == [] and tag_of(copy, "v1") == dg("app")


# -- garbage collection passes ----------------------------------------------------------------
class _Raft:
    """A one-node Raft member over the real state machine (as tests/node/test_gc.py)."""

    def __init__(self) -> None:
        self.state = MetadataState()

    async def barrier(self) -> None:
        return None

    def state_snapshot(self) -> tuple[dict[str, Any], int]:
        return self.state.snapshot(), 0

    def is_leader(self) -> bool:
        return True

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        return self.state.apply(op, json.loads(json.dumps(args)))

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        return self.state.query(op, json.loads(json.dumps(args)))


def _cfg(retention: float) -> Config:
    cfg = Config()
    cfg.lifecycle.gc_grace_seconds = 0.0
    cfg.lifecycle.gc_rate_chunks = 0
    cfg.lifecycle.trash_retention_seconds = retention
    return cfg


async def _push(store: MemoryChunkStore, raft: _Raft) -> tuple[str, set[bytes]]:
    """An image whose three chunks are in the store: (manifest digest, its chunk ids)."""
    recipes: dict[str, api.Recipe] = {}
    for name in ("app", "app-config", "app-layer"):
        payload = name.encode() * 50
        cid = hashlib.sha256(payload).digest()
        await store.put(cid, payload)
        recipes[name] = {"size": len(payload), "chunks": [[cid.hex(), len(payload)]]}
    for name in ("app-config", "app-layer"):
        raft.state.execute(api.BlobCommit(REPO, dg(name), recipes[name], None, 1.0))
    blobs = (dg("app-config"), dg("app-layer"))
    raft.state.execute(
        api.ManifestPut(REPO, dg("app"), MANIFEST, recipes["app"], blobs, tag="v1", now=1.0)
    )
    ids = {bytes.fromhex(r["chunks"][0][0]) for r in recipes.values()}
    return dg("app"), ids


async def _delete_everything(raft: _Raft, digest: str, now: float) -> None:
    """What a thief (or a clean-up script) does: the manifest, then its blobs."""
    meta = api.Metadata(raft)
    await meta.manifest_delete(REPO, digest, (), now=now, trash=True)
    await meta.blob_unlink(REPO, dg("app-config"))
    await meta.blob_unlink(REPO, dg("app-layer"))


async def _held(store: MemoryChunkStore) -> set[bytes]:
    return {cid for cid, _ in await store.list_ids(b"", 1000)}


async def test_a_gc_pass_reclaims_a_trashed_image_only_after_its_retention() -> None:
    store, raft = MemoryChunkStore(), _Raft()
    digest, ids = await _push(store, raft)
    gc = GcRole(_cfg(retention=DAY), store, raft)
    await _delete_everything(raft, digest, time.time())
    await gc.run_pass()
    await gc.run_pass()  # grace 0: a second pass would prune whatever the first saw
    assert gc.stats.pruned_blobs == 0 and gc.stats.purged_trash == 0
    assert await _held(store) >= ids
    assert await api.Metadata(raft).trash_restore(api.TrashRestore(REPO, digest)) == (
        api.TrashRestored([digest], ["v1"])
    )
    # Deleted again a retention ago (an injected deletion time): purged, then reclaimed.
    await _delete_everything(raft, digest, time.time() - DAY - 1)
    await gc.run_pass()
    assert gc.stats.purged_trash == 2 and gc.stats.pruned_blobs == 3
    assert not (await _held(store)) & ids
    assert gc.stats.purged_trash_total == 2


async def test_retention_zero_means_the_next_pass_empties_the_trash() -> None:
    store, raft = MemoryChunkStore(), _Raft()
    digest, ids = await _push(store, raft)
    await _delete_everything(raft, digest, time.time())
    gc = GcRole(_cfg(retention=0.0), store, raft)
    await gc.run_pass(dry_run=True)
    assert gc.stats.purged_trash == 2 and await _held(store) >= ids  # counted, kept
    await gc.run_pass()
    assert gc.stats.purged_trash == 2
    assert not (await _held(store)) & ids
