"""The pull-through cache: proxy namespaces served from upstream registries
(`upstream.py` the client, `fetch.py` single-flight streamed downloads, `proxy.py` tags,
manifests and what is stored; docs/mirroring.md)."""
