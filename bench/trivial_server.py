"""A registry that does no work: the ceiling of the benchmark client on this machine.

It speaks just enough of the OCI protocol for the workloads (uploads, blob GET, manifest
PUT/GET/HEAD) and keeps only sizes and manifest bodies in memory: uploaded bytes are
counted and dropped, blob GETs stream a fixed buffer of the recorded size. Run as its own
process (`python -m bench.trivial_server --port N`) so that it does not share the
client's event loop or core.
"""

from __future__ import annotations

import argparse
import hashlib
import uuid

import uvloop
from aiohttp import web

_PIECE = bytes(1024 * 1024)


class TrivialRegistry:
    def __init__(self) -> None:
        self.uploads: dict[str, int] = {}
        self.blobs: dict[str, int] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str, str]] = {}

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    async def start_upload(self, request: web.Request) -> web.Response:
        upload = uuid.uuid4().hex
        self.uploads[upload] = 0
        name = request.match_info["name"]
        return web.Response(
            status=202,
            headers={
                "Location": f"/v2/{name}/blobs/uploads/{upload}",
                "Range": "0-0",
                "Docker-Upload-UUID": upload,
            },
        )

    async def patch_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        if upload not in self.uploads:
            return web.Response(status=404)
        size = self.uploads[upload]
        async for piece in request.content.iter_any():
            size += len(piece)
        self.uploads[upload] = size
        name = request.match_info["name"]
        return web.Response(
            status=202,
            headers={
                "Location": f"/v2/{name}/blobs/uploads/{upload}",
                "Range": f"0-{max(size - 1, 0)}",
                "Docker-Upload-UUID": upload,
            },
        )

    async def put_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        digest = request.query.get("digest", "")
        if upload not in self.uploads or not digest:
            return web.Response(status=404)
        size = self.uploads.pop(upload)
        async for piece in request.content.iter_any():
            size += len(piece)
        self.blobs[digest] = size
        name = request.match_info["name"]
        return web.Response(
            status=201,
            headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
        )

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        size = self.blobs.get(digest)
        if size is None:
            return web.Response(status=404)
        resp = web.StreamResponse(headers={"Docker-Content-Digest": digest})
        resp.content_length = size
        await resp.prepare(request)
        left = size
        while left > 0:
            n = min(left, len(_PIECE))
            await resp.write(_PIECE[:n] if n < len(_PIECE) else _PIECE)
            left -= n
        await resp.write_eof()
        return resp

    async def put_manifest(self, request: web.Request) -> web.Response:
        name, ref = request.match_info["name"], request.match_info["ref"]
        body = await request.read()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        media_type = request.headers.get("Content-Type", "")
        self.manifests[(name, ref)] = self.manifests[(name, digest)] = (body, media_type, digest)
        return web.Response(
            status=201,
            headers={"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest},
        )

    async def get_manifest(self, request: web.Request) -> web.Response:
        found = self.manifests.get((request.match_info["name"], request.match_info["ref"]))
        if found is None:
            return web.Response(status=404)
        body, media_type, digest = found
        headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)


def make_app() -> web.Application:
    reg = TrivialRegistry()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    name = "{name:[a-z0-9._/-]+}"
    app.router.add_get("/v2/", reg.ping)
    app.router.add_post(f"/v2/{name}/blobs/uploads/", reg.start_upload)
    app.router.add_patch(f"/v2/{name}/blobs/uploads/{{upload}}", reg.patch_upload)
    app.router.add_put(f"/v2/{name}/blobs/uploads/{{upload}}", reg.put_upload)
    app.router.add_get(f"/v2/{name}/blobs/{{digest}}", reg.get_blob)
    app.router.add_put(f"/v2/{name}/manifests/{{ref}}", reg.put_manifest)
    app.router.add_get(f"/v2/{name}/manifests/{{ref}}", reg.get_manifest)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
