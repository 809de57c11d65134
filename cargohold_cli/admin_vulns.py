"""`cargohold admin vulndb ...` and `cargohold admin scan show ...`: the offline
vulnerability database and the reports of images (docs/supply-chain.md).

    cargohold admin vulndb import PATH [PATH..] [--source LABEL]   OSV zip files (Debian.zip,
                                         Alpine.zip, PyPI.zip), directories of OSV JSON
    cargohold admin vulndb status [--json]
    cargohold admin scan show REPO@DIGEST|REPO:TAG [--json]

`import` builds the compact index here (cargohold/vulns/osv.py), stores it as one blob in
the chunk store (written to R nodes like any blob, as the `admin` role) and points the
replicated metadata at it (`vulndb_put`: generation + 1). Gateways notice within
`policy.vulndb_refresh_seconds` and re-match every image that has an SBOM.

`scan show` prints the stored report of an image for the current database; when there is
none yet (the gateways' background pass has not reached it), it matches here and says so
(the CLI never writes reports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from cargohold.config import Config, ConfigError
from cargohold.digests import digest_of
from cargohold.metadata_api import Recipe
from cargohold.vulns.osv import SEVERITIES, OsvError, build_index, encode_index


def add_parsers(admin_sub: Any, nodes_default: str) -> list[argparse.ArgumentParser]:
    vulndb = admin_sub.add_parser("vulndb", help="the offline OSV vulnerability database")
    verbs = vulndb.add_subparsers(dest="vulndb_verb", required=True)
    imp = verbs.add_parser("import", help="import OSV zip files or directories of OSV JSON")
    imp.add_argument("paths", nargs="+", type=Path, help="Debian.zip, Alpine.zip, a dir, ...")
    imp.add_argument("--source", help="a label recorded with it (default: the file names)")
    status = verbs.add_parser("status", help="the current database")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    scan = admin_sub.add_parser("scan", help="vulnerability reports of images")
    scan_verbs = scan.add_subparsers(dest="scan_verb", required=True)
    show = scan_verbs.add_parser("show", help="the vulnerability report of an image")
    show.add_argument("ref", help="REPO@DIGEST or REPO:TAG")
    show.add_argument("--json", action="store_true", help="the whole report as JSON")
    for one in (imp, status, show):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
    return [vulndb, scan]


def run(args: argparse.Namespace, cfg: Config, nodes: list[str]) -> int:
    cfg.gateway.nodes = nodes
    if args.admin_verb == "vulndb" and args.vulndb_verb == "import":
        return asyncio.run(_import(cfg, args.paths, args.source))
    if args.admin_verb == "vulndb":
        return asyncio.run(_status(cfg, args.json))
    return asyncio.run(_show(cfg, args.ref, args.json))


async def _import(cfg: Config, paths: list[Path], source: str | None) -> int:
    from cargohold_cli.admin_access import cli_actor, metadata
    from gateway.cluster import ClusterClient

    started = time.monotonic()
    try:
        index = await asyncio.to_thread(build_index, paths)
    except (OsvError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    data = await asyncio.to_thread(encode_index, index)
    digest = digest_of(data, "sha256")
    cluster = await ClusterClient.connect(cfg)
    try:
        stored = await cluster.store_bytes(data)
    finally:
        await cluster.close()
    label = source or ", ".join(p.name for p in paths)
    stats = index["stats"]
    meta = metadata(cfg.gateway.nodes, cfg)
    recipe = Recipe(size=stored["size"], chunks=stored["chunks"])
    generation = await meta.vulndb_put(digest, recipe, label, stats, cli_actor())
    ecosystems = ", ".join(f"{e} {n}" for e, n in stats["ecosystems"].items())
    print(
        f"vulnerability database generation {generation}: {stats['advisories']} advisories "
        f"({ecosystems}; {stats['skipped']} unreadable, {stats['withdrawn']} withdrawn), "
        f"index {len(data)} B {digest}, {time.monotonic() - started:.1f} s"
    )
    return 0


async def _status(cfg: Config, as_json: bool) -> int:
    from cargohold_cli.admin_access import metadata

    info = await metadata(cfg.gateway.nodes, cfg).vulndb_get()
    if as_json:
        print(json.dumps(None if info is None else _info_json(info), indent=2))
        return 0
    if info is None:
        print("no vulnerability database imported (cargohold admin vulndb import PATH)")
        return 0
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.imported_at))
    print(f"generation {info.generation}, imported {when} from {info.source}")
    print(f"index {info.digest} ({info.recipe['size']} B)")
    print(f"advisories {info.stats.get('advisories', '?')}")
    for eco, n in sorted((info.stats.get("ecosystems") or {}).items()):
        print(f"  {eco:<20} {n} affected-package entries")
    return 0


def _info_json(info: Any) -> dict[str, Any]:
    out: dict[str, Any] = info.to_json()
    out["size"] = out.pop("recipe")["size"]
    return out


async def _show(cfg: Config, ref: str, as_json: bool) -> int:
    from cargohold_cli.admin_access import metadata
    from cargohold_cli.admin_trash import parse_reference
    from gateway.cluster import ClusterClient
    from gateway.vulns.scans import Scans

    repo, digest, tag = parse_reference(ref)
    meta = metadata(cfg.gateway.nodes, cfg)
    cluster = await ClusterClient.connect(cfg)
    try:
        if digest is not None:
            image = await meta.manifest_get(repo, digest)
        else:
            assert tag is not None
            image = await meta.tag_get(repo, tag)
        scans = Scans(cfg.policy, meta, cluster.read_all, None)
        report = await scans.report(repo, image)
    finally:
        await cluster.close()
    if report is None:
        why = "no SBOM referrer" if not await scans.sboms(repo, image.digest) else "no database"
        if as_json:
            print(json.dumps({"repository": repo, "subject": image.digest, "scanned": False}))
        else:
            print(f"{repo}@{image.digest}: not scanned ({why})")
        return 0
    doc = report.doc
    if as_json:
        print(json.dumps({**doc, "report": report.digest}, indent=2))
        return 0
    counts = ", ".join(f"{doc['summary'][s]} {s}" for s in SEVERITIES)
    stored = f"report {report.digest}" if report.digest else "matched now (not stored yet)"
    db = doc["database"]
    print(f"{repo}@{image.digest}: {len(doc['vulnerabilities'])} vulnerabilities ({counts})")
    print(f"{stored}; database generation {db['generation']} ({db['imported_at']})")
    for f in doc["vulnerabilities"]:
        aliases = ",".join(a for a in f["aliases"] if a != f["id"]) or "-"
        fixed = ",".join(f["fixed"]) or "-"
        print(
            f"  {f['severity']:<8} {f['id']:<24} {aliases:<20} {f['package']} {f['version']}"
            f" (fixed: {fixed})"
        )
    return 0
