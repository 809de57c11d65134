"""`GET /v2/<name>/referrers/<digest>?artifactType=`: the OCI referrers API.

Always 200 with an OCI image index (an empty one for a subject nobody refers to, or a
repository that does not exist: clients such as oras probe with `sha256:000…0` and only
trust a 200 with exactly the index content type). A bad digest is 400 `DIGEST_INVALID`.
The node filters by `artifact_type`; the gateway filters the node's answer again (cheap,
and the `OCI-Filters-Applied` header it sends is then true whatever the node did).
In a proxy namespace (gateway/mirror/) the answer is the upstream's (`Mirror.referrers`).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cargohold.digests import parse_digest
from cargohold.errors import NameUnknown
from cargohold.names import validate_name
from gateway.context import context
from gateway.mirror.proxy import MIRROR

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


async def list_referrers(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    digest = request.match_info["digest"]
    parse_digest(digest)
    artifact_type = request.query.get("artifactType") or None
    mirror = request.app.get(MIRROR)
    route = mirror.route(request, name) if mirror is not None else None
    descriptors: list[Any] = []
    if route is None:
        try:
            descriptors = await ctx.meta.referrers(name, digest, artifact_type)
        except NameUnknown:
            # Root mirror mode: a name not found locally is the root proxy's.
            route = mirror.root_route(name) if mirror is not None else None
    if mirror is not None and route is not None:
        descriptors = await mirror.referrers(route, digest)
    headers = {"Content-Type": INDEX_MEDIA_TYPE}
    if artifact_type is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": descriptors}
    return web.Response(body=json.dumps(body).encode(), headers=headers)
