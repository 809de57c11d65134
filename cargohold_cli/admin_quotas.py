"""`cargohold admin namespaces quota set|unset|show`: namespace storage quotas, written to
the replicated metadata (`quota_set`, admin role only) and read back with their
deduplicated usage (`quota_list`; docs/operations.md "Quotas")."""

from __future__ import annotations

import asyncio

from cargohold.config import Config
from cargohold.metadata_api import QuotaInfo
from cargohold.quotas import human
from cargohold_cli.admin_access import _meta, cli_actor


def set_quota(addresses: list[str], cfg: Config, namespace: str, limit: int | None) -> None:
    asyncio.run(_meta(addresses, cfg).quota_set(namespace, limit, cli_actor()))


def quota_list(addresses: list[str], cfg: Config) -> list[QuotaInfo]:
    return asyncio.run(_meta(addresses, cfg).quota_list())


def quota_json(quota: QuotaInfo) -> dict[str, object]:
    out: dict[str, object] = dict(quota.to_json())
    out["free"] = max(0, quota.limit - quota.used)
    return out


def format_quotas(quotas: list[QuotaInfo]) -> str:
    lines = [f"{'NAMESPACE':<32} {'USED':>11} {'LIMIT':>11} {'USE%':>5} {'BLOBS':>7}"]
    for q in quotas:
        pct = f"{100 * q.used / q.limit:.0f}" if q.limit else "-"
        lines.append(
            f"{q.namespace:<32} {human(q.used):>11} {human(q.limit):>11} {pct:>5} {q.blobs:>7}"
        )
    return "\n".join(lines)
