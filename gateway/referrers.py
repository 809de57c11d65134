"""`GET /v2/<name>/referrers/<digest>?artifactType=`: the OCI referrers API.

Always 200 with an OCI image index (an empty one for a subject nobody refers to, or a
repository that does not exist: clients such as oras probe with `sha256:000…0` and only
trust a 200 with exactly the index content type). A bad digest is 400 `DIGEST_INVALID`.
The node filters by `artifact_type`; the gateway filters the node's answer again (cheap,
and the `OCI-Filters-Applied` header it sends is then true whatever the node did).
"""

from __future__ import annotations

import json

from aiohttp import web

from cargohold.digests import parse_digest
from cargohold.errors import NameUnknown
from cargohold.names import validate_name
from gateway.context import context

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


async def list_referrers(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    digest = request.match_info["digest"]
    parse_digest(digest)
    artifact_type = request.query.get("artifactType") or None
    try:
        descriptors = await ctx.meta.referrers(name, digest, artifact_type)
    except NameUnknown:
        descriptors = []
    headers = {"Content-Type": INDEX_MEDIA_TYPE}
    if artifact_type is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": descriptors}
    return web.Response(body=json.dumps(body).encode(), headers=headers)
