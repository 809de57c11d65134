"""Webhook notifications: endpoints, their filters, and the events they receive
(docs/webhooks.md).

An endpoint is configured in `[webhooks]` (`[[webhooks.endpoints]]`, every gateway the same)
or replicated through `cargohold admin webhooks add` (the `webhook_put` command). It names a
URL, an optional namespace (a repository-name prefix), the actions it wants (push, pull,
delete) of manifests and, apart, of blobs (`blob_actions`, none by default), repository
globs (`fnmatch`: `*` also matches `/`), custom headers (e.g. `Authorization`) and a
timeout.

Events are the activity log's records (cargohold/audit.py) of those actions, sent in the
envelope of CNCF Distribution's notifications, `application/vnd.docker.distribution.events.
v1+json`, so existing receivers work unchanged:

    {"events": [{"id", "timestamp", "action",
                 "target": {"mediaType", "digest", "size", "length", "repository", "url",
                            "tag"},             (a blob's: application/octet-stream, no tag)
                 "request": {"id", "addr", "host", "method", "useragent"},
                 "actor": {"name"}, "source": {"addr", "instanceID"}}]}

An event's `id` is stable across re-deliveries (a receiver dedupes on it): the record's
hash (which commits to its seq and the whole chain before it) in UUID form. Cargohold adds
`cargohold.seq` (the record's seq in the log) beside the standard fields; receivers that do
not know it ignore it.

Owned here: the endpoint's shape and its checks, `wants` (the filter), `envelope` (the
JSON), and `backoff` (the retry schedule). The delivery loop is gateway/webhooks.py; the
cursors, dead letters and the delivery lease are node/metadata/webhooks.py.
"""

from __future__ import annotations

import fnmatch
import math
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cargohold.audit import blob_size
from cargohold.errors import RequestInvalid

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
# A blob event's target media type, as Distribution sends it.
BLOB_MEDIA_TYPE = "application/octet-stream"
# The record actions an endpoint may ask for (the activity log has more: login, admin, ...).
ACTIONS = ("push", "pull", "delete")
_METHODS = {"push": "PUT", "pull": "GET", "delete": "DELETE"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# A header name as RFC 9110 allows it (a token); values are one line.
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
MAX_HEADERS = 32
MAX_URL = 2048


@dataclass(frozen=True)
class Endpoint:
    """One receiver and what it wants; see the module docstring."""

    name: str
    url: str
    namespace: str = ""  # "" = every repository
    actions: tuple[str, ...] = ACTIONS
    repositories: tuple[str, ...] = ()  # globs; () = every repository (of the namespace)
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    # "config" (a gateway's [webhooks] section) or "cluster" (replicated, admin CLI).
    origin: str = field(default="cluster", compare=False)
    # The actions it wants of blobs (layers, configs): none unless asked, so an endpoint
    # set up for manifest events keeps its volume.
    blob_actions: tuple[str, ...] = ()

    def to_json(self, reveal_headers: bool = True) -> dict[str, Any]:
        headers = {
            k: (v if reveal_headers else "***") for k, v in self.headers
        }  # listings hide header values: they are usually credentials
        out = {
            "name": self.name,
            "url": self.url,
            "namespace": self.namespace,
            "actions": list(self.actions),
            "repositories": list(self.repositories),
            "headers": headers,
            "timeout": self.timeout,
            "origin": self.origin,
        }
        if self.blob_actions:  # absent when none: endpoints stored before it read the same
            out["blob_actions"] = list(self.blob_actions)
        return out

    @classmethod
    def from_json(cls, raw: Any, origin: str = "cluster") -> Endpoint:
        """Check and build an endpoint; RequestInvalid says what is wrong."""
        if not isinstance(raw, dict):
            raise RequestInvalid("a webhook endpoint is an object")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestInvalid("webhook name must match [a-z0-9][a-z0-9._-]{0,63}")
        url = raw.get("url")
        if not isinstance(url, str) or len(url) > MAX_URL:
            raise RequestInvalid(f"webhook {name}: url must be a string")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RequestInvalid(f"webhook {name}: url must be http:// or https://")
        namespace = raw.get("namespace") or ""
        if not isinstance(namespace, str) or len(namespace) > 255:
            raise RequestInvalid(f"webhook {name}: namespace must be a string")
        namespace = namespace.strip("/")
        actions = raw.get("actions")
        if actions is None:
            actions = list(ACTIONS)
        if not isinstance(actions, list) or not actions or any(a not in ACTIONS for a in actions):
            raise RequestInvalid(f"webhook {name}: actions must be some of {', '.join(ACTIONS)}")
        blob_actions = raw.get("blob_actions") or []
        if not isinstance(blob_actions, list) or any(a not in ACTIONS for a in blob_actions):
            raise RequestInvalid(
                f"webhook {name}: blob_actions must be some of {', '.join(ACTIONS)}"
            )
        repos = raw.get("repositories") or []
        if not isinstance(repos, list) or not all(
            isinstance(g, str) and 0 < len(g) <= 255 for g in repos
        ):
            raise RequestInvalid(f"webhook {name}: repositories must be a list of globs")
        headers = raw.get("headers") or {}
        if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
            raise RequestInvalid(f"webhook {name}: headers must be an object (<= {MAX_HEADERS})")
        pairs = []
        for key, value in headers.items():
            if isinstance(value, list) and len(value) == 1:  # Distribution's [value] form
                value = value[0]
            if (
                not _HEADER.match(str(key))
                or not isinstance(value, str)
                or len(value) > 4096
                or "\n" in value
                or "\r" in value
            ):
                raise RequestInvalid(f"webhook {name}: bad header {str(key)[:40]!r}")
            pairs.append((str(key), value))
        timeout = raw.get("timeout", 5.0)
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout <= 300
        ):
            raise RequestInvalid(f"webhook {name}: timeout must be seconds in (0, 300]")
        return cls(
            name,
            url,
            namespace,
            tuple(dict.fromkeys(actions)),
            tuple(repos),
            tuple(sorted(pairs)),
            float(timeout),
            origin,
            tuple(dict.fromkeys(blob_actions)),
        )


def wants(endpoint: Endpoint, record: dict[str, Any]) -> bool:
    """Does `endpoint` receive this activity-log record (a `cargohold.audit.decode` dict)?"""
    wanted = endpoint.blob_actions if blob_size(record) is not None else endpoint.actions
    if record.get("action") not in wanted or record.get("result") != "ok":
        return False
    repo = record.get("repository") or ""
    if not repo:
        return False
    ns = endpoint.namespace
    if ns and repo != ns and not repo.startswith(ns + "/"):
        return False
    return not endpoint.repositories or any(
        fnmatch.fnmatchcase(repo, glob) for glob in endpoint.repositories
    )


def event_id(record_hash: str) -> str:
    """A record's hash as a UUID-shaped id (stable: the same record always has it)."""
    h = record_hash[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _timestamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Source:
    """Who sends: the gateway's public address (`webhooks.public_url`) and instance id."""

    base_url: str  # e.g. https://registry.example.com (no trailing /)
    instance_id: str

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc


def event(
    record: dict[str, Any],
    source: Source,
    media_type: str = "",
    size: int = 0,
) -> dict[str, Any]:
    """The Distribution event of one push/pull/delete record. A manifest's `media_type`/
    `size` are looked up by the deliverer (unknown once deleted: "" and 0); a blob's are
    `application/octet-stream` and the size its record carries."""
    action = record["action"]
    repo = record["repository"]
    reference = record.get("reference") or ""
    digest = record.get("digest") or ""
    tag = reference if reference and reference != digest and ":" not in reference else ""
    blob = blob_size(record)
    kind = "manifests"
    if blob is not None:
        media_type, size, kind, tag = BLOB_MEDIA_TYPE, blob, "blobs", ""
    target: dict[str, Any] = {"repository": repo}
    if media_type:
        target["mediaType"] = media_type
    if digest:
        target["digest"] = digest
        target["size"] = size
        target["length"] = size
        target["url"] = f"{source.base_url}/v2/{repo}/{kind}/{digest}"
    if tag:
        target["tag"] = tag
    return {
        "id": event_id(record["hash"]),
        "timestamp": _timestamp(float(record["time"])),
        "action": action,
        "target": target,
        "request": {
            "id": f"cargohold-{record['seq']}",
            "addr": record.get("client") or "",
            "host": source.host,
            "method": _METHODS.get(action, ""),
            "useragent": record.get("user_agent") or "",
        },
        "actor": {"name": record["actor"]} if record.get("actor") else {},
        "source": {"addr": source.host, "instanceID": source.instance_id},
        "cargohold": {"seq": record["seq"]},
    }


def envelope(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"events": events}


def backoff(attempt: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry): exponential
    from `base`, at most `cap`, with +-20 % jitter so endpoints do not retry in step."""
    if attempt < 1:
        return 0.0
    exp = min(attempt - 1, 60)
    delay = min(cap, base * math.pow(2.0, exp))
    jitter = (rand or random).uniform(0.8, 1.2)
    return min(cap, delay * jitter)


def parse_config_endpoints(raw: list[Any]) -> list[Endpoint]:
    """`[[webhooks.endpoints]]` tables as endpoints (RequestInvalid names the bad one)."""
    out = [Endpoint.from_json(dict(item), origin="config") for item in raw]
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise RequestInvalid("webhooks.endpoints: names must be unique")
    return out
