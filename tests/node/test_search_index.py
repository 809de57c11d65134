"""The search index (node/metadata/search_index.py) through the state's `search` query:
filters, sorting, paging with cursors, access filtering, incremental upkeep after pushes,
tag moves, deletes and pulls, and the index rebuilt after a snapshot load."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from cargohold.errors import RequestInvalid
from cargohold.search import SearchSpec
from node.metadata import search_index
from node.metadata.search_index import SearchIndex
from node.metadata.state import MetadataState

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def blob(st: MetadataState, repo: str, name: str, size: int) -> str:
    digest = dg(name)
    chunk = hashlib.sha256(b"c" + name.encode()).hexdigest()
    st.apply(
        "blob_commit",
        {
            "repo": repo,
            "digest": digest,
            "recipe": {"size": size, "chunks": [[chunk, size]]},
            "upload": None,
            "now": 1.0,
        },
    )
    return digest


def push(
    st: MetadataState,
    repo: str,
    name: str,
    tag: str | None,
    now: float,
    layer: int = 1000,
    info: dict[str, Any] | None = None,
    **kw: Any,
) -> str:
    blobs = kw.pop("blobs", None)
    if blobs is None:
        blobs = [blob(st, repo, name + "-config", 100), blob(st, repo, name + "-layer", layer)]
    digest = dg(name)
    chunk = hashlib.sha256(b"m" + name.encode()).hexdigest()
    args: dict[str, Any] = {
        "repo": repo,
        "digest": digest,
        "media_type": kw.pop("media_type", OCI),
        "recipe": {"size": 10, "chunks": [[chunk, 10]]},
        "blobs": blobs,
        "tag": tag,
        "now": now,
        **kw,
    }
    if info is not None:
        args["info"] = info
    st.apply("manifest_put", args)
    return digest


def search(st: MetadataState, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = st.query("search", {"spec": spec})
    return result


def names(result: dict[str, Any]) -> list[str]:
    return [
        f"{i['repository']}:{i['tag']}"
        if "tag" in i and isinstance(i["tag"], str)
        else i["repository"]
        for i in result["items"]
    ]


@pytest.fixture
def st() -> MetadataState:
    state = MetadataState()
    amd = {"platforms": ["linux/amd64"], "labels": {"org.opencontainers.image.vendor": "acme"}}
    arm = {"platforms": ["linux/arm64/v8"], "labels": {"tier": "web"}}
    push(state, "team/web", "web1", "1.0", now=100, layer=5000, info=amd)
    push(state, "team/web", "web2", "2.0", now=300, layer=9000, info=arm)
    push(state, "team/api", "api1", "latest", now=200, layer=1000, info=amd)
    push(state, "public/tool", "tool1", "v1", now=50, layer=200)
    push(
        state,
        "public/tool",
        "sbom1",
        None,
        now=60,
        blobs=[],
        artifact_type="application/spdx+json",
        annotations={"org.opencontainers.image.created": "2026-01-01"},
        subject=dg("tool1"),
    )
    return state


def test_name_substring_glob_and_namespace(st: MetadataState) -> None:
    assert names(search(st, q="web")) == ["team/web:1.0", "team/web:2.0"]
    assert names(search(st, q="team/*")) == ["team/api:latest", "team/web:1.0", "team/web:2.0"]
    assert names(search(st, q="*/a?i")) == ["team/api:latest"]
    assert names(search(st, namespace="team")) == [
        "team/api:latest",
        "team/web:1.0",
        "team/web:2.0",
    ]
    assert names(search(st, namespace="tea")) == []
    assert names(search(st, repository="team/web", desc=True)) == ["team/web:2.0", "team/web:1.0"]
    assert names(search(st, repository="team/we")) == []
    assert names(search(st, tag="*.0")) == ["team/web:1.0", "team/web:2.0"]


def test_labels_annotations_platforms_media_types(st: MetadataState) -> None:
    assert names(search(st, labels=["org.opencontainers.image.vendor=acme"])) == [
        "team/api:latest",
        "team/web:1.0",
    ]
    assert names(search(st, labels=["tier"])) == ["team/web:2.0"]
    assert names(search(st, labels=["tier=db"])) == []
    assert names(search(st, platform="linux/arm64")) == ["team/web:2.0"]
    assert names(search(st, platform="linux/arm64/v8")) == ["team/web:2.0"]
    assert names(search(st, platform="linux/amd64", q="api")) == ["team/api:latest"]
    assert names(search(st, media_type=OCI, namespace="public")) == ["public/tool:v1"]
    # An untagged artifact is no tag result; tag it and it is one.
    assert search(st, artifact_type="application/spdx+json")["items"] == []
    st.apply(
        "manifest_put",
        {
            "repo": "public/tool",
            "digest": dg("sbom1"),
            "media_type": OCI,
            "recipe": {"size": 10, "chunks": [[hashlib.sha256(b"msbom1").hexdigest(), 10]]},
            "blobs": [],
            "artifact_type": "application/spdx+json",
            "annotations": {"org.opencontainers.image.created": "2026-01-01"},
            "subject": dg("tool1"),
            "tag": "sbom",
            "now": 70,
        },
    )
    found = search(st, annotations=["org.opencontainers.image.created=2026-01-01"])
    assert names(found) == ["public/tool:sbom"]
    assert found["items"][0]["artifact_type"] == "application/spdx+json"


def test_times_sizes_and_sorting(st: MetadataState) -> None:
    assert names(search(st, pushed_after=100, pushed_before=300)) == [
        "team/api:latest",
        "team/web:1.0",
    ]
    assert names(search(st, sort="pushed")) == [
        "public/tool:v1",
        "team/web:1.0",
        "team/api:latest",
        "team/web:2.0",
    ]
    assert names(search(st, sort="pushed", desc=True))[0] == "team/web:2.0"
    # Image size: manifest (10) + config (100) + layer.
    item = search(st, q="api")["items"][0]
    assert item["size"] == 10 + 100 + 1000
    assert item["platforms"] == ["linux/amd64"]
    assert names(search(st, min_size=5000)) == ["team/web:1.0", "team/web:2.0"]
    assert names(search(st, sort="size", desc=True, n=2)) == ["team/web:2.0", "team/web:1.0"]
    with pytest.raises(RequestInvalid):
        search(st, min_size=10, max_size=1)


def test_pulled_times_follow_pull_records(st: MetadataState) -> None:
    assert search(st, pulled_after=0)["items"] == []
    search(st)  # the index exists: what follows is upkeep, not a first build
    push(st, "team/api", "api1", "stable", now=210, blobs=[dg("api1-config"), dg("api1-layer")])
    st.apply("pull_record", {"pulls": [["team/api", dg("api1"), "stable", 450.0] + [None] * 3]})
    assert names(search(st, pulled_after=400)) == ["team/api:latest", "team/api:stable"]
    st.apply("tag_delete", {"repo": "team/api", "tag": "stable"})
    st.apply(
        "pull_record",
        {"pulls": [["team/api", dg("api1"), "latest", 500.0, None, None, None]]},
    )
    found = search(st, pulled_after=400)
    assert names(found) == ["team/api:latest"]
    assert found["items"][0]["pulled"] == 500.0
    assert names(search(st, sort="pulled", desc=True, n=1)) == ["team/api:latest"]


@pytest.mark.parametrize("sort", ["name", "pushed", "size", "pulled"])
@pytest.mark.parametrize("desc", [False, True])
def test_paging_visits_every_row_once(sort: str, desc: bool) -> None:
    st = MetadataState()
    for i in range(57):
        push(st, f"ns{i % 5}/repo{i % 7}", f"m{i}", f"t{i}", now=float(i % 11), layer=i % 13 + 1)
    full = names(search(st, sort=sort, desc=desc, n=1000))
    assert len(full) == 57
    seen: list[str] = []
    cursor = None
    while True:
        spec: dict[str, Any] = {"sort": sort, "desc": desc, "n": 8}
        if cursor:
            spec["cursor"] = cursor
        page = search(st, **spec)
        seen += names(page)
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == full
    # Through the sorted-candidates path too (a platform filter names a posting).
    for i in range(57, 70):
        push(st, "x/y", f"m{i}", f"t{i}", now=1.0, info={"platforms": ["linux/s390x"]})
    pages, cursor = [], None
    while True:
        spec = {"sort": sort, "desc": desc, "n": 4, "platform": "linux/s390x"}
        if cursor:
            spec["cursor"] = cursor
        page = search(st, **spec)
        pages += names(page)
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(pages) == sorted(f"x/y:t{i}" for i in range(57, 70))
    assert len(pages) == 13


def test_repository_results(st: MetadataState) -> None:
    found = search(st, kind="repository")
    assert names(found) == ["public/tool", "team/api", "team/web"]
    web = found["items"][2]
    assert web["tags"] == 2 and web["pushed"] == 300 and web["size"] == 9110
    assert sorted(web["platforms"]) == ["linux/amd64", "linux/arm64/v8"]
    assert names(search(st, kind="repository", labels=["tier=web"])) == ["team/web"]
    assert names(search(st, kind="repository", sort="pushed", desc=True)) == [
        "team/web",
        "team/api",
        "public/tool",
    ]
    first = search(st, kind="repository", n=2)
    assert names(first) == ["public/tool", "team/api"]
    assert names(search(st, kind="repository", n=2, cursor=first["next"])) == ["team/web"]
    back = search(st, kind="repository", n=1, desc=True)
    assert names(back) == ["team/web"]
    assert names(search(st, kind="repository", n=5, desc=True, cursor=back["next"])) == [
        "team/api",
        "public/tool",
    ]
    by_time = search(st, kind="repository", sort="pushed", n=1)
    assert names(by_time) == ["public/tool"]
    # Ascending, a repository sorts by its oldest matching push (team/web: 100).
    assert names(search(st, kind="repository", sort="pushed", cursor=by_time["next"])) == [
        "team/web",
        "team/api",
    ]


@pytest.mark.parametrize("sort", ["name", "pushed", "size", "pulled"])
@pytest.mark.parametrize("desc", [False, True])
def test_repository_pages_list_each_repository_once(sort: str, desc: bool) -> None:
    st = MetadataState()
    for i in range(60):
        push(st, f"ns{i % 3}/r{i % 13}", f"m{i}", f"t{i}", now=float((i * 7) % 23), layer=i + 1)
    full = names(search(st, kind="repository", sort=sort, desc=desc, n=1000))
    assert sorted(full) == sorted({f"ns{i % 3}/r{i % 13}" for i in range(60)})
    seen: list[str] = []
    cursor = None
    while True:
        spec: dict[str, Any] = {"kind": "repository", "sort": sort, "desc": desc, "n": 4}
        if cursor:
            spec["cursor"] = cursor
        page = search(st, **spec)
        seen += names(page)
        if not (cursor := page["next"]):
            break
    assert seen == full
    assert sum(i["tags"] for i in search(st, kind="repository", n=1000)["items"]) == 60


def test_access_longest_namespace_decides(st: MetadataState) -> None:
    access = {"default": False, "namespaces": [["team", True], ["team/web", False]]}
    assert names(search(st, access=access)) == ["team/api:latest"]
    access = {"default": True, "namespaces": [["team", False]]}
    assert names(search(st, access=access, kind="repository")) == ["public/tool"]


def test_index_follows_moves_deletes_and_loads(st: MetadataState) -> None:
    assert names(search(st, q="web")) == ["team/web:1.0", "team/web:2.0"]
    # Move 1.0 onto the arm64 image: its row follows.
    st.apply(
        "manifest_put",
        {
            "repo": "team/web",
            "digest": dg("web2"),
            "media_type": OCI,
            "recipe": {"size": 10, "chunks": [[hashlib.sha256(b"mweb2").hexdigest(), 10]]},
            "blobs": [dg("web2-config"), dg("web2-layer")],
            "tag": "1.0",
            "now": 400,
        },
    )
    assert names(search(st, platform="linux/arm64")) == ["team/web:1.0", "team/web:2.0"]
    st.apply("tag_delete", {"repo": "team/web", "tag": "2.0"})
    assert names(search(st, q="web")) == ["team/web:1.0"]
    st.apply("manifest_delete", {"repo": "team/web", "digest": dg("web2")})
    assert names(search(st, q="web")) == []
    assert search(st, labels=["tier"])["items"] == []
    # A snapshot load rebuilds it from the loaded state (labels included).
    copy = MetadataState()
    copy.load(st.dump())
    assert names(search(copy, labels=["org.opencontainers.image.vendor=acme"])) == [
        "team/api:latest"
    ]
    assert copy.image_info == st.image_info
    compact = MetadataState()
    compact.load(b"".join(MetadataState.encode_snapshot(st.snapshot(), compact=True)))
    assert compact.image_info == st.image_info
    assert search(compact, labels=["org.opencontainers.image.vendor=acme"]) == search(
        st, labels=["org.opencontainers.image.vendor=acme"]
    )


def test_index_children_platforms_and_bad_specs(st: MetadataState) -> None:
    push(
        st,
        "team/web",
        "multi",
        "multi",
        now=500,
        blobs=[],
        media_type=INDEX,
        manifests=[dg("web1"), dg("web2")],
    )
    item = search(st, tag="multi")["items"][0]
    assert item["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert item["size"] == 10 + (10 + 100 + 5000) + (10 + 100 + 9000)
    for bad in (
        {"kind": "blob"},
        {"sort": "random"},
        {"n": 0},
        {"n": 5000},
        {"platform": "linux"},
        {"labels": "a=b"},
        {"cursor": "%%%"},
        {"pushed_after": -1},
        {"what": 1},
    ):
        with pytest.raises(RequestInvalid):
            search(st, **bad)


def test_info_is_bounded() -> None:
    st = MetadataState()
    with pytest.raises(RequestInvalid):
        push(st, "a/b", "x", "t", now=1, info={"labels": {"k": "v" * 300}})
    with pytest.raises(RequestInvalid):
        push(st, "a/b", "y", "t", now=1, info={"other": 1})


def test_image_info_backfill_records_what_old_pushes_lack(st: MetadataState) -> None:
    # web1 and web2 were pushed without info (before search recorded it), also in a second
    # repository: their rows have no labels.
    for digest in (dg("web1"), dg("web2"), dg("tool1")):
        st.image_info.pop(digest, None)
    push(st, "mirror/web", "web1", "1.0", now=500, blobs=[])
    st._search = None
    assert names(search(st, labels=["tier"])) == []
    missing = st.query("image_info_missing", {"limit": 2})
    assert len(missing["items"]) == 2 and missing["next"] is not None
    assert missing["items"][0] == ["mirror/web", dg("web1"), OCI]
    walked: list[list[str]] = []
    after = None
    while True:  # one at a time: the cursor resumes inside a repository and across them
        page = st.query("image_info_missing", {"limit": 1, "after": after})
        walked += page["items"]
        if page["next"] is None:
            break
        after = page["next"]
    assert sorted((r, d) for r, d, _ in walked) == sorted(
        [
            ("mirror/web", dg("web1")),
            ("public/tool", dg("sbom1")),
            ("public/tool", dg("tool1")),
            ("team/web", dg("web1")),
            ("team/web", dg("web2")),
        ]
    )
    arm = {"platforms": ["linux/arm64/v8"], "labels": {"tier": "web"}}
    amd = {"platforms": ["linux/amd64"]}
    entries = [
        ["team/web", dg("web2"), arm],
        ["mirror/web", dg("web1"), amd],  # recorded by digest: team/web's row follows too
        ["public/tool", dg("sbom1"), None],  # looked at, nothing to index
        ["team/web", dg("gone"), amd],  # not there: ignored
    ]
    assert st.apply("image_info_backfill", {"entries": entries}) == {"recorded": 3}
    assert names(search(st, labels=["tier"])) == ["team/web:2.0"]
    assert names(search(st, platform="linux/amd64")) == [
        "mirror/web:1.0",
        "team/api:latest",
        "team/web:1.0",
    ]
    assert st.image_info[dg("sbom1")] == "{}"
    # Never overwrites (a replay, or a second gateway's pass, changes nothing).
    again = [["team/web", dg("web2"), amd], ["public/tool", dg("sbom1"), amd]]
    assert st.apply("image_info_backfill", {"entries": again}) == {"recorded": 0}
    assert names(search(st, labels=["tier"])) == ["team/web:2.0"]
    left = st.query("image_info_missing", {"limit": 100})
    assert left == {"items": [["public/tool", dg("tool1"), OCI]], "next": None}
    # The markers survive a snapshot, and the index rebuilt from it agrees.
    copy = MetadataState()
    copy.load(st.dump())
    assert copy.image_info == st.image_info
    assert search(copy, platform="linux/amd64") == search(st, platform="linux/amd64")


def test_a_build_given_a_tag_twice_keeps_one_row_and_reuses_freed_ids(st: MetadataState) -> None:
    index = SearchIndex(st, building=True)
    assert index.add_tags("team/web", ["1.0", "2.0", "gone"]) == 2
    assert index.add_tags("team/web", ["2.0"]) == 1  # the builder never does; finish copes
    index.add_tags("team/api", ["latest"])
    index.finish()
    index.sync()
    index.ready = True
    page = index.search(SearchSpec(n=10))
    assert [(i["repository"], i["tag"]) for i in page.items] == [
        ("team/api", "latest"),
        ("team/web", "1.0"),
        ("team/web", "2.0"),
    ]
    assert len(index) == 3
    # A moved tag's row is dropped and made again under a freed id; orders stay consistent.
    for now in (400.0, 500.0):
        push(st, "team/web", "web1", "2.0", now=now, blobs=[dg("web1-config"), dg("web1-layer")])
        index.touch("team/web", "2.0")
        by_push = index.search(SearchSpec(sort="pushed", desc=True, n=1))
        assert [(i["tag"], i["pushed"]) for i in by_push.items] == [("2.0", now)]
    assert len(index) == 3


def test_marks_stay_bounded_on_a_node_nobody_searches(
    st: MetadataState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_index, "_PENDING_LIMIT", 3)
    search(st)  # the index is built and ready: from now on commands mark rows
    index = st.search_index()
    assert index is not None
    for i in range(30):
        push(st, f"team/r{i % 4}", f"x{i}", f"t{i % 7}", now=1000.0 + i, layer=i + 1)
        if i % 5 == 0:
            pulls = [[f"team/r{i % 4}", dg(f"x{i}"), f"t{i % 7}", 2000.0 + i, None, None, None]]
            st.apply("pull_record", {"pulls": pulls})
        assert index.pending() <= 3 + 1
    st.apply("tag_delete", {"repo": "team/r1", "tag": "t1"})
    # What was recomputed early agrees with an index built from the state now.
    copy = MetadataState()
    copy.load(st.dump())
    for spec in ({}, {"sort": "pulled", "desc": True}, {"sort": "size"}, {"kind": "repository"}):
        assert search(st, n=100, **spec) == search(copy, n=100, **spec)
