"""The web UI's pages (docs/ui.md): server-rendered Jinja2 templates, one handler per page.

Every list is one page of the search index (gateway/search.py), so no page renders the
whole catalogue: the repository list asks for `gateway.ui_page_size` repositories after a
cursor, a repository page for that many tags. A repository the viewer may not pull is
answered like one that does not exist (404). Failures render the error page with the
registry error's status and message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from cargohold.digests import is_digest
from cargohold.errors import Denied, ManifestUnknown, NameUnknown, RegistryError
from cargohold.metadata_api import ManifestInfo
from cargohold.names import validate_name
from gateway.context import context
from gateway.manifests import delete_reference, manifest_body
from gateway.search import run_search, spec_from_query
from gateway.signatures import cosign
from gateway.signatures.policy import POLICY
from gateway.ui.render import render
from gateway.ui.session import Viewer, allowed, check_csrf, viewer

Handler = Callable[[web.Request, Viewer], Awaitable[web.StreamResponse]]
_MAX_CONFIG = 1024 * 1024
_MAX_REFERRERS = 50
_REFERRER_DEPTH = 3
SBOM_HINTS = ("spdx", "cyclonedx", "sbom", "syft")
VULN_HINTS = ("vuln", "sarif", "vex", "trivy", "grype", "scan")


def page(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The viewer for the handler; registry errors as the error page."""

    async def run(request: web.Request) -> web.StreamResponse:
        who = await viewer(request)
        try:
            return await handler(request, who)
        except RegistryError as exc:
            return render(request, who, "error.html", status=exc.status, title="Error", error=exc)

    return run


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


async def _may_pull_or_404(request: web.Request, who: Viewer, name: str) -> None:
    if not await allowed(request, who, name, "pull"):
        raise NameUnknown(f"repository {name} unknown")


# -- the repository list ---------------------------------------------------------------------------
_FILTERS = ("q", "namespace", "label", "platform", "sort", "cursor")


@page
async def repositories(request: web.Request, who: Viewer) -> web.StreamResponse:
    params = {k: request.query.get(k, "") for k in _FILTERS}
    query: MultiDict[str] = MultiDict((k, v) for k, v in params.items() if v)
    query["kind"] = "repository"
    spec = spec_from_query(query, context(request).cfg.gateway.ui_page_size)
    result = await run_search(request, who.user, spec)
    more = _query(**{**params, "cursor": result.next}) if result.next else None
    return render(
        request,
        who,
        "repositories.html",
        title="Repositories",
        params=params,
        items=result.items,
        next_query=more,
    )


# -- one repository --------------------------------------------------------------------------------
@page
async def repository(request: web.Request, who: Viewer) -> web.StreamResponse:
    name = validate_name(request.query.get("name", ""))
    await _may_pull_or_404(request, who, name)
    ctx = context(request)
    sort = request.query.get("sort") or "-pushed"
    cursor = request.query.get("cursor") or None
    query: MultiDict[str] = MultiDict(repository=name, sort=sort)
    if cursor:
        query["cursor"] = cursor
    tag_filter = request.query.get("tag") or ""
    if tag_filter:
        query["tag"] = tag_filter
    spec = spec_from_query(query, ctx.cfg.gateway.ui_page_size)
    result = await run_search(request, who.user, spec)
    # Signatures by cosign's tag scheme: one more page of this repository's `.sig` tags.
    sig_query: MultiDict[str] = MultiDict(repository=name, tag="sha256-*.sig", n="1000")
    sig_tags = await run_search(request, who.user, spec_from_query(sig_query))
    signed = {
        "sha256:" + i["tag"].removeprefix("sha256-").removesuffix(".sig") for i in sig_tags.items
    }
    digests = list(dict.fromkeys(i["digest"] for i in result.items))
    referrers = await asyncio.gather(*(ctx.meta.referrers(name, d, None) for d in digests))
    by_digest = dict(zip(digests, referrers, strict=True))
    rows = []
    for item in result.items:
        refs = by_digest.get(item["digest"], [])
        sig = item["digest"] in signed or any(
            r.get("artifactType") == cosign.SIGNATURE_ARTIFACT_TYPE for r in refs
        )
        rows.append({**item, "referrers": refs, "signed": sig})
    more = _query(name=name, sort=sort, tag=tag_filter, cursor=result.next) if result.next else None
    return render(
        request,
        who,
        "repository.html",
        title=name,
        name=name,
        rows=rows,
        sort=sort,
        tag_filter=tag_filter,
        next_query=more,
        may_delete=await allowed(request, who, name, "delete"),
        deleted=request.query.get("deleted", ""),
    )


# -- one image -------------------------------------------------------------------------------------
async def _record(request: web.Request, name: str, ref: str) -> ManifestInfo:
    meta = context(request).meta
    if is_digest(ref):
        return await meta.manifest_get(name, ref)
    return await meta.tag_get(name, ref)


async def _blob_json(request: web.Request, name: str, digest: str) -> Any:
    ctx = context(request)
    try:
        recipe = await ctx.meta.blob_get(name, digest)
        if int(recipe.get("size", 0)) > _MAX_CONFIG:
            return None
        return json.loads(await ctx.cluster.read_all(dict(recipe)))
    except (RegistryError, ValueError, UnicodeDecodeError):
        return None


async def _referrer_tree(request: web.Request, name: str, digest: str) -> list[dict[str, Any]]:
    """The referrers of `digest`, their referrers in turn (depth and count bounded)."""
    meta = context(request).meta
    budget = [_MAX_REFERRERS]

    async def level(subject: str, depth: int) -> list[dict[str, Any]]:
        if depth > _REFERRER_DEPTH or budget[0] <= 0:
            return []
        out = []
        for desc in await meta.referrers(name, subject, None):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            kind = _kind(str(desc.get("artifactType") or desc.get("mediaType") or ""))
            children = await level(str(desc["digest"]), depth + 1)
            out.append({**desc, "kind": kind, "children": children})
        return out

    return await level(digest, 1)


def _kind(artifact_type: str) -> str:
    lowered = artifact_type.lower()
    if artifact_type == cosign.SIGNATURE_ARTIFACT_TYPE or "signature" in lowered:
        return "signature"
    if any(h in lowered for h in SBOM_HINTS):
        return "sbom"
    if any(h in lowered for h in VULN_HINTS):
        return "vulnerabilities"
    return "artifact"


def _flatten(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for node in tree:
        out.append(node)
        out += _flatten(node["children"])
    return out


@page
async def image(request: web.Request, who: Viewer) -> web.StreamResponse:
    name = validate_name(request.query.get("name", ""))
    ref = request.query.get("ref", "")
    await _may_pull_or_404(request, who, name)
    if not ref:
        raise ManifestUnknown("no reference")
    ctx = context(request)
    record = await _record(request, name, ref)
    body = await manifest_body(request, ctx, record)
    doc = json.loads(body)
    config: Any = None
    config_desc = doc.get("config") if isinstance(doc.get("config"), dict) else None
    if config_desc and str(config_desc.get("mediaType", "")).endswith(
        ("config.v1+json", "container.image.v1+json")
    ):
        config = await _blob_json(request, name, str(config_desc.get("digest")))
    inner = config.get("config") if isinstance(config, dict) else None
    tree = await _referrer_tree(request, name, record.digest)
    flat = _flatten(tree)
    status, reason = await request.app[POLICY].signature_status(
        name, record.digest, lambda r: manifest_body(request, ctx, r)
    )
    tags = await run_search(
        request, who.user, spec_from_query(MultiDict(repository=name, n="1000"))
    )
    on_it = [i["tag"] for i in tags.items if i["digest"] == record.digest]
    return render(
        request,
        who,
        "image.html",
        title=f"{name}@{record.digest[:19]}",
        name=name,
        ref=ref,
        record=record,
        doc=doc,
        pretty=json.dumps(doc, indent=2),
        config=config if isinstance(config, dict) else None,
        inner=inner if isinstance(inner, dict) else {},
        history=[h for h in (config or {}).get("history") or [] if isinstance(h, dict)]
        if isinstance(config, dict)
        else [],
        tree=tree,
        sboms=[n for n in flat if n["kind"] == "sbom"],
        vulns=[n for n in flat if n["kind"] == "vulnerabilities"],
        signature=(status, reason),
        tags=on_it,
        may_delete=await allowed(request, who, name, "delete"),
    )


# -- deletes ---------------------------------------------------------------------------------------
@page
async def confirm_delete(request: web.Request, who: Viewer) -> web.StreamResponse:
    name = validate_name(request.query.get("name", ""))
    ref = request.query.get("ref", "")
    await _may_pull_or_404(request, who, name)
    if not await allowed(request, who, name, "delete"):
        raise Denied(f"you may not delete in {name}")
    record = await _record(request, name, ref)
    tags = await run_search(
        request, who.user, spec_from_query(MultiDict(repository=name, n="1000"))
    )
    on_it = [i["tag"] for i in tags.items if i["digest"] == record.digest]
    return render(
        request,
        who,
        "confirm.html",
        title="Delete?",
        name=name,
        ref=ref,
        record=record,
        by_digest=is_digest(ref),
        tags=on_it,
    )


@page
async def delete(request: web.Request, who: Viewer) -> web.StreamResponse:
    form = await request.post()
    check_csrf(request, str(form.get("csrf", "")))
    name = validate_name(str(form.get("name", "")))
    ref = str(form.get("ref", ""))
    await _may_pull_or_404(request, who, name)
    if not await allowed(request, who, name, "delete"):
        raise Denied(f"you may not delete in {name}")
    await delete_reference(request, name, ref)
    raise web.HTTPSeeOther(f"/ui/repository?{_query(name=name, deleted=ref)}")


# -- raw artifacts (an SBOM's or a scan report's layer) --------------------------------------------
@page
async def blob(request: web.Request, who: Viewer) -> web.StreamResponse:
    """A small blob of a repository as plain text (never rendered as HTML by the browser)."""
    name = validate_name(request.query.get("name", ""))
    digest = request.query.get("digest", "")
    await _may_pull_or_404(request, who, name)
    ctx = context(request)
    recipe = await ctx.meta.blob_get(name, digest)
    if int(recipe.get("size", 0)) > 4 * _MAX_CONFIG:
        raise Denied("larger than 4 MiB: pull it with a registry client")
    data = await ctx.cluster.read_all(dict(recipe))
    return web.Response(
        body=data,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )
