"""A small in-memory OCI registry (aiohttp) for replication's unit tests: manifests,
blobs, uploads (monolithic, chunked, cross-repository mount), tags, catalog, optional
referrers API, optional Docker token auth, manifest deletes (by digest; by tag unless
`tag_deletes` is off, as in Distribution 2.x; none with `deletes` off: 405, as
Distribution without `storage.delete.enabled`). It checks every digest like a registry
would and counts the requests it answered (`calls`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from cargohold.config import Config, ProxyConfig
from gateway.mirror.upstream import Upstream
from gateway.replication.sides import RemoteRegistry

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    def __init__(self, referrers_api: bool = True, token: bool = False) -> None:
        self.referrers_api = referrers_api
        self.token = token
        self.deletes = True
        self.tag_deletes = True
        self.blobs: dict[str, dict[str, bytes]] = {}  # repo -> digest -> bytes
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.uploads: dict[str, tuple[str, bytearray]] = {}
        self.calls: Counter[str] = Counter()
        self.token_scopes: list[str] = []
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> FakeRegistry:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_get("/token", self._token)
        r.add_get("/v2/_catalog", self._catalog)
        r.add_route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        r.add_route("*", "/v2/{name:.+}/blobs/uploads/", self._upload_start)
        r.add_route("*", "/v2/{name:.+}/blobs/uploads/{id}", self._upload)
        r.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        r.add_get("/v2/{name:.+}/tags/list", self._tags)
        r.add_get("/v2/{name:.+}/referrers/{digest}", self._referrers)
        self.server = TestServer(app)
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    # -- storage helpers for tests --------------------------------------------------------
    def put_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        self.blobs.setdefault(repo, {})[digest] = data
        return digest

    def put_manifest(self, repo: str, body: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha(body)
        self.manifests.setdefault(repo, {})[digest] = (body, media_type)
        if tag:
            self.tags.setdefault(repo, {})[tag] = digest
        return digest

    # -- HTTP -----------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = f"{request.method} {request.path.split('/')[-2] if '/' in request.path else ''}"
        self.calls[key] += 1
        if self.token and request.path.startswith("/v2/"):
            if request.headers.get("Authorization") != "Bearer good":
                realm = f"http://{request.host}/token"
                return web.Response(
                    status=401,
                    headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'},
                )
        return await handler(request)

    async def _token(self, request: web.Request) -> web.Response:
        self.token_scopes.append(request.query.get("scope", ""))
        return web.json_response({"token": "good", "expires_in": 300})

    async def _catalog(self, request: web.Request) -> web.Response:
        names = sorted(set(self.manifests) | set(self.tags))
        return web.json_response({"repositories": names})

    async def _tags(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.tags:
            return web.Response(status=404)
        return web.json_response({"name": name, "tags": sorted(self.tags[name])})

    async def _referrers(self, request: web.Request) -> web.Response:
        if not self.referrers_api:
            return web.Response(status=404, text="404 page not found")
        name, subject = request.match_info["name"], request.match_info["digest"]
        found = []
        for digest, (body, media_type) in self.manifests.get(name, {}).items():
            doc = json.loads(body)
            if (doc.get("subject") or {}).get("digest") == subject:
                found.append({"mediaType": media_type, "digest": digest, "size": len(body)})
        return web.json_response({"schemaVersion": 2, "mediaType": INDEX, "manifests": found})

    async def _manifest(self, request: web.Request) -> web.Response:
        name, ref = request.match_info["name"], request.match_info["ref"]
        if request.method == "PUT":
            body = await request.read()
            digest = sha(body)
            if ":" in ref and ref != digest:
                return web.Response(status=400, text="DIGEST_INVALID")
            doc = json.loads(body)
            for child in doc.get("manifests") or []:
                if child["digest"] not in self.manifests.get(name, {}):
                    return web.Response(status=400, text="MANIFEST_BLOB_UNKNOWN")
            for blob in [doc.get("config"), *(doc.get("layers") or [])]:
                if blob and blob["digest"] not in self.blobs.get(name, {}):
                    return web.Response(status=400, text="MANIFEST_BLOB_UNKNOWN")
            self.put_manifest(name, body, request.content_type, None if ":" in ref else ref)
            return web.Response(status=201, headers={"Docker-Content-Digest": digest})
        if request.method == "DELETE":
            return self._delete(name, ref)
        digest = ref if ":" in ref else self.tags.get(name, {}).get(ref)
        found = self.manifests.get(name, {}).get(digest or "")
        if found is None:
            return web.Response(status=404)
        body, media_type = found
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest or ""}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(body))})
        return web.Response(body=body, headers=headers)

    def _delete(self, name: str, ref: str) -> web.Response:
        if not self.deletes:
            return web.Response(status=405, text="UNSUPPORTED")
        tags = self.tags.get(name, {})
        if ":" not in ref:
            if not self.tag_deletes:
                return web.Response(status=400, text="DIGEST_INVALID")
            if tags.pop(ref, None) is None:
                return web.Response(status=404)
            return web.Response(status=202)
        if self.manifests.get(name, {}).pop(ref, None) is None:
            return web.Response(status=404)
        for tag in [t for t, d in tags.items() if d == ref]:  # its tags go with it
            del tags[tag]
        return web.Response(status=202)

    async def _blob(self, request: web.Request) -> web.Response:
        name, digest = request.match_info["name"], request.match_info["digest"]
        data = self.blobs.get(name, {}).get(digest)
        if data is None:
            return web.Response(status=404)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        return web.Response(body=data)

    async def _upload_start(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        mount, source = request.query.get("mount"), request.query.get("from")
        if mount and source and mount in self.blobs.get(source, {}):
            self.blobs.setdefault(name, {})[mount] = self.blobs[source][mount]
            self.calls["mounted"] += 1
            return web.Response(status=201)
        upload = uuid.uuid4().hex
        self.uploads[upload] = (name, bytearray())
        return web.Response(
            status=202, headers={"Location": f"/v2/{name}/blobs/uploads/{upload}?_state=x"}
        )

    async def _upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["id"]
        if upload not in self.uploads:
            return web.Response(status=404)
        name, buffer = self.uploads[upload]
        if request.method == "DELETE":
            del self.uploads[upload]
            return web.Response(status=204)
        data = await request.read()
        if request.method == "PATCH":
            start = int(request.headers["Content-Range"].split("-")[0])
            if start != len(buffer):
                return web.Response(status=416)
            buffer += data
            location = f"/v2/{name}/blobs/uploads/{upload}?_state=y"
            return web.Response(status=202, headers={"Location": location})
        buffer += data
        digest = request.query["digest"]
        if sha(bytes(buffer)) != digest:
            return web.Response(status=400, text="DIGEST_INVALID")
        self.blobs.setdefault(name, {})[digest] = bytes(buffer)
        del self.uploads[upload]
        return web.Response(status=201, headers={"Docker-Content-Digest": digest})


def remote_side(cfg: Config, reg: FakeRegistry) -> RemoteRegistry:
    """`reg` as replication's remote side (close it when done)."""
    upstream = Upstream(ProxyConfig("t", reg.url), cfg.mirror)
    return RemoteRegistry(upstream, cfg.replication.upload_chunk_bytes, 4 * 1024 * 1024)


def image(reg: FakeRegistry, repo: str, seed: str, layers: int = 2) -> tuple[bytes, str]:
    """An image manifest (and its blobs) stored in `reg` by digest; (body, digest)."""
    config = json.dumps({"seed": seed}).encode()
    layer_data = [f"{seed}-layer-{i}".encode() * 100 for i in range(layers)]
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": reg.put_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": reg.put_blob(repo, d),
                "size": len(d),
            }
            for d in layer_data
        ],
    }
    body = json.dumps(doc).encode()
    return body, reg.put_manifest(repo, body, MANIFEST)


def index(reg: FakeRegistry, repo: str, children: list[tuple[bytes, str]], tag: str) -> str:
    doc = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": arch},
            }
            for (body, digest), arch in zip(children, ("amd64", "arm64"), strict=False)
        ],
    }
    return reg.put_manifest(repo, json.dumps(doc).encode(), INDEX, tag)


def referrer(reg: FakeRegistry, repo: str, subject: str, subject_size: int) -> str:
    """An OCI artifact (an SBOM-like blob) whose subject is `subject`."""
    payload = b'{"sbom": true}'
    empty = b"{}"
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": reg.put_blob(repo, empty),
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/spdx+json",
                "digest": reg.put_blob(repo, payload),
                "size": len(payload),
            }
        ],
        "subject": {"mediaType": INDEX, "digest": subject, "size": subject_size},
    }
    return reg.put_manifest(repo, json.dumps(doc).encode(), MANIFEST)
