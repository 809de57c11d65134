"""tags_list and catalog pages stay exact while tags and repositories come and go, with the
orders kept by the commands (node/metadata/sorted_names.py) rather than re-sorted."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from node.metadata.state import MetadataState


def _digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _put(st: MetadataState, repo: str, key: str, tag: str | None) -> None:
    digest = _digest(key)
    st.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": digest,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "recipe": {"size": 10, "chunks": [[digest[7:], 10]]},
            "tag": tag,
        },
    )


def _all_pages(st: MetadataState, op: str, args: dict[str, Any], n: int) -> list[str]:
    key = "tags" if op == "tags_list" else "repositories"
    out: list[str] = []
    last = None
    while True:
        page = st.query(op, {**args, "n": n, "last": last})
        out += page[key]
        if not page["more"]:
            return out
        last = page[key][-1]


def test_pages_follow_every_change() -> None:
    rng = random.Random(20)
    st = MetadataState()
    repos = [f"team/app{i}" for i in range(6)]
    for step in range(3000):
        repo = rng.choice(repos)
        roll = rng.random()
        tags = st.tags.get(repo, {})
        if roll < 0.6:
            _put(st, repo, f"{repo}-{rng.randrange(50)}", f"v{rng.randrange(400):03d}")
        elif roll < 0.8 and tags:
            st.apply("tag_delete", {"repo": repo, "tag": rng.choice(sorted(tags))})
        elif roll < 0.9 and st.manifests.get(repo):
            digest = rng.choice(sorted(st.manifests[repo]))
            st.apply("manifest_delete", {"repo": repo, "digest": digest})
        if step % 50 == 0:
            for name in repos:
                if name in st.manifests:
                    n = rng.choice([1, 7, 100, 1000])
                    got = _all_pages(st, "tags_list", {"repo": name}, n)
                    assert got == sorted(st.tags.get(name, {})), (step, name)
            assert _all_pages(st, "catalog", {}, 2) == sorted(st.manifests)


def test_a_loaded_state_lists_the_same_and_keeps_its_orders() -> None:
    st = MetadataState()
    for i in range(300):
        _put(st, f"r{i % 3}", f"m{i}", f"t{i:04d}")
    first = _all_pages(st, "tags_list", {"repo": "r1"}, 30)
    again = MetadataState()
    again.load(st.dump())
    assert _all_pages(again, "tags_list", {"repo": "r1"}, 30) == first
    _put(again, "r1", "new", "t0000-new")
    assert "t0000-new" in _all_pages(again, "tags_list", {"repo": "r1"}, 1000)
    assert _all_pages(again, "catalog", {}, 1) == ["r0", "r1", "r2"]
