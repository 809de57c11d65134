"""`cargohold admin sbom list|rescan`: the SBOM scanner's queue (node/metadata/scans.py,
docs/supply-chain.md), through the typed facade over the nodes' Metadata gRPC service,
signed as the `admin` role."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from cargohold.config import Config
from cargohold.errors import ConfigError, RegistryError
from cargohold.metadata_api import SCAN_STATES, Metadata, ScanInfo, ScanList
from cargohold.names import validate_name
from cargohold_cli.admin_access import AdminTransport

_PAGE = 1000


def _meta(addresses: list[str], cfg: Config) -> Metadata:
    return Metadata(AdminTransport(addresses, cfg))


def list_scans(
    addresses: list[str],
    cfg: Config,
    repo: str | None = None,
    state: str | None = None,
    digest: str | None = None,
) -> list[ScanInfo]:
    """Every scan record (of `repo`, `state`, `digest` only, if given), page by page."""

    async def run() -> list[ScanInfo]:
        meta = _meta(addresses, cfg)
        out: list[ScanInfo] = []
        after: tuple[str, str] | None = None
        while True:
            page = await meta.scan_list(ScanList(repo, digest, state, after, _PAGE))
            out += page
            if len(page) < _PAGE:
                return out
            after = (page[-1].repo, page[-1].digest)

    return asyncio.run(run())


def rescan(addresses: list[str], cfg: Config, ref: str) -> tuple[str, str]:
    """Queue `REPO@DIGEST` for a new scan."""
    repo, sep, digest = ref.partition("@")
    if not sep:
        raise ConfigError(f"{ref!r}: expected REPO@DIGEST")
    repo = validate_name(repo)
    asyncio.run(_meta(addresses, cfg).scan_enqueue(repo, digest, time.time()))
    return repo, digest


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def format_scans(records: list[ScanInfo]) -> str:
    lines = [
        f"{'REPOSITORY':<30} {'MANIFEST':<22} {'STATE':<9} {'TRIES':>5} {'UPDATED':<20} "
        "SBOM / ERROR"
    ]
    for r in records:
        what = r.sbom[:19] + "..." if r.state == "done" else r.error
        lines.append(
            f"{r.repo:<30} {r.digest[:19] + '...':<22} {r.state:<9} {r.attempts:>5} "
            f"{_utc(r.updated_at):<20} {what}"
        )
    return "\n".join(lines)


def add_parser(admin_sub: Any, nodes_default: str) -> argparse.ArgumentParser:
    sbom = admin_sub.add_parser("sbom", help="the SBOM scanner's queue: scan states, rescans")
    verbs = sbom.add_subparsers(dest="sbom_verb", required=True)
    listing = verbs.add_parser("list", help="scan records: state, attempts, SBOM or error")
    listing.add_argument("--repo", help="one repository only")
    listing.add_argument("--state", choices=SCAN_STATES, help="one state only")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    again = verbs.add_parser("rescan", help="queue an image manifest for a new scan")
    again.add_argument("ref", help="REPO@DIGEST")
    for one in (listing, again):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
    return sbom


def run(args: argparse.Namespace, cfg: Config, nodes: list[str]) -> int:
    try:
        if args.sbom_verb == "list":
            records = list_scans(nodes, cfg, args.repo, args.state)
            if args.json:
                print(json.dumps([r.to_json() for r in records], indent=2))
            else:
                print(format_scans(records))
        else:
            repo, digest = rescan(nodes, cfg, args.ref)
            print(f"queued {repo}@{digest} for a scan")
    except RegistryError as exc:
        print(f"cargohold admin sbom {args.sbom_verb}: {exc}", file=sys.stderr)
        return 1
    return 0
