"""The scanner's per-layer cache (gateway/scanner/layer_cache.py): hits by digest, least
recently used out first, bounded in bytes, an entry larger than the bound never kept."""

from __future__ import annotations

from cargohold.sbom.layers import LayerFiles
from gateway.scanner.layer_cache import LayerCache


def layer(size: int) -> LayerFiles:
    return LayerFiles(files={"var/lib/dpkg/status": b"x" * size}, whiteouts={"a/b"})


def test_hits_evictions_and_bounds() -> None:
    cache = LayerCache(max_bytes=3000)
    one, two, three = layer(1000), layer(1000), layer(1000)
    cache.put("sha256:1", one)
    cache.put("sha256:2", two)
    assert cache.get("sha256:1") is one  # now the most recently used
    cache.put("sha256:3", three)  # over the bound: the least recently used (2) goes
    assert cache.get("sha256:2") is None
    assert cache.get("sha256:1") is one and cache.get("sha256:3") is three
    assert cache.bytes <= cache.max_bytes
    cache.put("sha256:big", layer(10_000))  # larger than the whole cache: not kept
    assert cache.get("sha256:big") is None
    assert (len(cache), cache.hits, cache.misses) == (2, 3, 2)
