"""`GET repositories/{name}/vulnerabilities/{reference}` and `GET vulndb`: an image's
vulnerability report and the current vulnerability database (docs/supply-chain.md).

The report answers for the current database (gateway/vulns/scans.py): the stored report
referrer when it is current, else the image is matched now (and the report stored). Who
may ask: whoever may pull the repository (the report is a referrer anyone who can pull
may read through `/v2/` anyway); without an `Authorization` header the caller is
anonymous (public namespaces in token mode; everyone with `auth.mode = none`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold.errors import Denied, RequestInvalid
from cargohold.names import validate_name, validate_tag
from gateway.admin_api import identity
from gateway.admin_api.body import answer
from gateway.auth.scopes import repository
from gateway.auth.state import AUTH
from gateway.context import context
from gateway.vulns.scans import SCANS

_PULL = frozenset({"pull"})


async def _may_pull(request: web.Request, repo: str) -> None:
    auth = request.app.get(AUTH)
    if auth is None or auth.mode == "none":
        return
    user: str | None = None
    if "Authorization" in request.headers:
        user = (await identity.caller(request)).name or None
    if "pull" not in await auth.policy.granted(user, repository(repo, _PULL)):
        raise Denied(f"no pull access to {repo}")


async def image_report(request: web.Request) -> web.StreamResponse:
    repo = validate_name(request.match_info["name"])
    reference = request.match_info["reference"]
    await _may_pull(request, repo)
    meta = context(request).meta
    if reference.startswith("sha256:") or reference.startswith("sha512:"):
        image = await meta.manifest_get(repo, reference)
    elif ":" in reference:
        raise RequestInvalid("reference must be a tag or a digest")
    else:
        image = await meta.tag_get(repo, validate_tag(reference))
    scans = request.app[SCANS]
    report = await scans.report(repo, image)
    if report is None:
        sboms = await scans.sboms(repo, image.digest)
        reason = "no SBOM referrer" if not sboms else "no vulnerability database imported"
        return answer(
            {"repository": repo, "digest": image.digest, "scanned": False, "reason": reason}
        )
    out: dict[str, Any] = {
        "repository": repo,
        "digest": image.digest,
        "scanned": True,
        "report": report.digest,
    }
    out.update({k: v for k, v in report.doc.items() if k not in ("repository", "subject")})
    return answer(out)


async def vulndb_status(request: web.Request) -> web.StreamResponse:
    await identity.caller(request)
    info = await context(request).meta.vulndb_get()
    if info is None:
        return answer({"imported": False})
    return answer(
        {
            "imported": True,
            "generation": info.generation,
            "digest": info.digest,
            "size": info.recipe["size"],
            "imported_at": info.imported_at,
            "source": info.source,
            "stats": info.stats,
        }
    )


def routes(router: web.UrlDispatcher, prefix: str) -> None:
    router.add_get(prefix + "/repositories/{name:.+}/vulnerabilities/{reference}", image_report)
    router.add_get(prefix + "/vulndb", vulndb_status)
