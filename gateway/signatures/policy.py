"""The pull policy: a namespace with `require_signature` serves a manifest only when a
cosign-format signature by one of the namespace's keys names it (docs/security.md
"Signed images").

`TrustDirectory` keeps the `trust_list` answer (keys parsed once) for
`policy.refresh_seconds`, like the auth directory; when the cluster cannot answer, the last
answer is kept. `PullPolicy.check` decides for one pulled manifest and raises
`SignatureRequired` (403 DENIED, the message naming the reason) when it is refused:
- unsigned: no signature found (tag `sha256-<hex>.sig` nor a referrer holding one);
- signed by an unregistered key: signatures found, none made by a registered key;
- the signature names another digest: a registered key signed a payload naming another
  manifest (a signature copied from another image).
What stays pullable in a protected namespace: whatever a runtime cannot run
(`cosign.is_runnable`: signatures, SBOMs, attestations and other artifacts, judged by
their content, never by a `subject`, `artifactType` or tag that anyone can set), so tools
can inspect why an image was refused; and the children of an image index this gateway
has just let through (cached with it), so `docker pull` of a signed multi-arch index
works when only the index is signed.

Verdicts are cached per (repository, digest) in memory: an allowed manifest for
`policy.verified_cache_seconds` and until the namespace's keys change; a refused one for
`policy.refused_cache_seconds` only, and dropped at once when this gateway stores a new
signature of it (`signature_stored`). Signature checks run in a thread.

After the signature, the namespace's vulnerability policy (`block_severity`, allowlist,
`unscanned`) is applied by gateway/vulns/gate.py (403 DENIED naming the CVE ids).

`enforce` is what the manifest GET/HEAD route calls: the check, with each refusal (and
each allowed pull decided afresh, `policy.audit_allowed`) in the activity log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cargohold.config import PolicyConfig
from cargohold.digests import digest_of, parse_digest
from cargohold.errors import RegistryError, SignatureRequired, VulnerabilityPolicy
from cargohold.log import log_event
from cargohold.metadata_api import ManifestInfo, Metadata, TrustInfo
from gateway.activity import record_policy_decision
from gateway.signatures import cosign
from gateway.vulns.gate import VulnGate

logger = logging.getLogger("cargohold.gateway.policy")

LoadManifest = Callable[[ManifestInfo], Awaitable[bytes]]
ReadBlob = Callable[[dict[str, object]], Awaitable[bytes]]
_MAX_CANDIDATES = 16
_MAX_PAYLOAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class NamespaceTrust:
    namespace: str
    require_signature: bool
    keys: tuple[tuple[str, cosign.PublicKey], ...]
    fingerprint: tuple[tuple[str, str], ...]  # (name, PEM): changes when the keys do
    # The vulnerability policy (gateway/vulns/gate.py).
    block_severity: str = "none"
    allowlist: frozenset[str] = frozenset()
    unscanned: str = "allow"


def _parse(info: TrustInfo) -> NamespaceTrust:
    keys = []
    for name, pem in sorted(info.keys.items()):
        try:
            keys.append((name, cosign.load_public_key(pem)))
        except cosign.UnsupportedKey as exc:  # the admin surface checks; an old record may not
            log_event(
                logger,
                "policy.bad_key",
                logging.WARNING,
                namespace=info.namespace,
                key=name,
                error=str(exc),
            )
    return NamespaceTrust(
        info.namespace,
        info.require_signature,
        tuple(keys),
        tuple(sorted(info.keys.items())),
        info.block_severity,
        frozenset(info.allowlist),
        info.unscanned,
    )


class TrustDirectory:
    """The namespaces' keys and pull policies, re-read every `refresh_seconds`."""

    def __init__(self, meta: Metadata, refresh_seconds: float) -> None:
        self._meta = meta
        self._refresh_seconds = refresh_seconds
        self._loaded_at: float | None = None
        self._by_namespace: dict[str, NamespaceTrust] = {}
        self._longest_first: list[NamespaceTrust] = []
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._loaded_at = None

    async def refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
            try:
                infos = await self._meta.trust_list()
            except RegistryError as exc:
                if self._loaded_at is None:
                    raise
                log_event(logger, "policy.refresh_failed", logging.WARNING, error=exc.code)
                self._loaded_at = time.monotonic()  # keep the last answer a while
                return
            self._by_namespace = {i.namespace: _parse(i) for i in infos}
            self._longest_first = sorted(
                self._by_namespace.values(), key=lambda t: len(t.namespace), reverse=True
            )
            self._loaded_at = time.monotonic()

    def _fresh(self) -> bool:
        return (
            self._loaded_at is not None
            and time.monotonic() - self._loaded_at < self._refresh_seconds
        )

    def for_repo(self, repo: str) -> NamespaceTrust | None:
        """The trust record of the longest namespace holding `repo`, if any."""
        for trust in self._longest_first:
            ns = trust.namespace
            if repo == ns or repo.startswith(ns + "/"):
                return trust
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed pull: the namespace whose policy applied, why, and whether it was decided
    just now (`fresh`) or taken from the verdict cache."""

    namespace: str
    reason: str
    fresh: bool


@dataclass(frozen=True, slots=True)
class _Verdict:
    allowed: bool
    reason: str
    expires: float
    fingerprint: tuple[tuple[str, str], ...]


class PullPolicy:
    """Decides whether a manifest may be pulled (see the module docstring)."""

    def __init__(
        self, cfg: PolicyConfig, meta: Metadata, read_blob: ReadBlob, vulns: VulnGate | None = None
    ) -> None:
        self.cfg = cfg
        self.vulns = vulns
        self.trust = TrustDirectory(meta, cfg.refresh_seconds)
        self._meta = meta
        self._read_blob = read_blob
        self._verdicts: OrderedDict[tuple[str, str], _Verdict] = OrderedDict()

    def signature_stored(self, repo: str, subject: str | None, tag: str | None) -> None:
        """This gateway stored a manifest: if it is a signature, forget the verdict on what
        it signs (its subject, or the digest its tag-scheme tag names)."""
        if subject is not None:
            self._verdicts.pop((repo, subject), None)
        if tag is not None and cosign.is_scheme_tag(tag):
            algorithm, _, rest = tag.partition("-")
            self._verdicts.pop((repo, f"{algorithm}:{rest.rsplit('.', 1)[0]}"), None)

    async def check(self, repo: str, record: ManifestInfo, load: LoadManifest) -> Decision | None:
        """The decision when `record` may be pulled from `repo` (None: no policy applies);
        SignatureRequired otherwise."""
        await self.trust.refresh()
        trust = self.trust.for_repo(repo)
        if trust is None:
            return None
        decision = await self._check_signature(trust, repo, record, load)
        if self.vulns is not None and (trust.block_severity != "none" or trust.unscanned == "deny"):
            await self.vulns.check(
                trust.namespace,
                trust.block_severity,
                trust.allowlist,
                trust.unscanned,
                repo,
                record,
                await load(record),
            )
        return decision

    async def _check_signature(
        self, trust: NamespaceTrust, repo: str, record: ManifestInfo, load: LoadManifest
    ) -> Decision | None:
        if not trust.require_signature:
            return None
        key = (repo, record.digest)
        now = time.monotonic()
        verdict = self._verdicts.get(key)
        fresh = (
            verdict is None or verdict.expires <= now or verdict.fingerprint != trust.fingerprint
        )
        if fresh:
            verdict = await self._decide(trust, repo, record, load, now)
            self._remember(key, verdict)
        assert verdict is not None
        if not verdict.allowed:
            log_event(
                logger,
                "policy.refused",
                logging.INFO,
                namespace=trust.namespace,
                digest=record.digest,
                reason=verdict.reason,
            )
            raise SignatureRequired(
                f"pull refused by the policy of namespace {trust.namespace}: {verdict.reason}",
                detail={
                    "namespace": trust.namespace,
                    "digest": record.digest,
                    "reason": verdict.reason,
                },
            )
        return Decision(trust.namespace, verdict.reason, fresh)

    async def signature_status(self, repo: str, digest: str, load: LoadManifest) -> tuple[str, str]:
        """For display (the web UI): ("verified" | "signed" | "unsigned", the reason), by
        the keys of the namespace holding `repo`, whether or not it requires signatures."""
        await self.trust.refresh()
        trust = self.trust.for_repo(repo) or NamespaceTrust("", False, (), ())
        found, reason = await self._signed(trust, repo, digest, load)
        if found:
            return "verified", reason
        return ("unsigned" if reason.startswith("unsigned") else "signed"), reason

    def _remember(self, key: tuple[str, str], verdict: _Verdict) -> None:
        self._verdicts[key] = verdict
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > max(self.cfg.cache_entries, 1):
            self._verdicts.popitem(last=False)

    def _verdict(self, trust: NamespaceTrust, allowed: bool, reason: str, now: float) -> _Verdict:
        ttl = self.cfg.verified_cache_seconds if allowed else self.cfg.refused_cache_seconds
        return _Verdict(allowed, reason, now + ttl, trust.fingerprint)

    async def _decide(
        self,
        trust: NamespaceTrust,
        repo: str,
        record: ManifestInfo,
        load: LoadManifest,
        now: float,
    ) -> _Verdict:
        manifest = _json(await load(record))
        if not cosign.is_runnable(manifest):
            return self._verdict(trust, True, "not a runnable image", now)
        found, reason = await self._signed(trust, repo, record.digest, load)
        verdict = self._verdict(trust, found, reason, now)
        if found:  # an index lets its children through with it
            for child in _children(manifest):
                self._remember(
                    (repo, child), self._verdict(trust, True, "child of a signed index", now)
                )
        return verdict

    async def _signed(
        self, trust: NamespaceTrust, repo: str, digest: str, load: LoadManifest
    ) -> tuple[bool, str]:
        layers = [layer for sig in await self._signatures(repo, digest, load) for layer in sig]
        if not layers:
            return False, "unsigned: no signature found"
        if not trust.keys:
            return False, "signed, but the namespace has no verification keys"
        other_digest = False
        for layer in layers[:_MAX_CANDIDATES]:
            payload = await self._payload(repo, layer.payload_digest)
            if payload is None:
                continue
            name = await asyncio.to_thread(cosign.signer, trust.keys, payload, layer.signature)
            if name is None:
                continue
            if cosign.signed_digest(payload) == digest:
                log_event(logger, "policy.verified", logging.DEBUG, digest=digest, key=name)
                return True, f"signed by key {name}"
            other_digest = True
        if other_digest:
            return False, "the signature names another digest"
        return False, "not signed by a registered key"

    async def _signatures(
        self, repo: str, digest: str, load: LoadManifest
    ) -> list[list[cosign.SignedLayer]]:
        """The signed layers of each signature manifest of `digest`: tag scheme first."""
        records: list[ManifestInfo] = []
        try:
            records.append(await self._meta.tag_get(repo, cosign.signature_tag(digest)))
        except RegistryError as exc:
            if exc.status != 404:
                raise
        for desc in await self._meta.referrers(repo, digest, None):
            if len(records) >= _MAX_CANDIDATES:
                break
            if desc.get("artifactType") in (cosign.SIGNATURE_ARTIFACT_TYPE, None):
                try:
                    records.append(await self._meta.manifest_get(repo, str(desc["digest"])))
                except RegistryError as exc:
                    if exc.status != 404:
                        raise
        return [list(cosign.signed_layers(_json(await load(r)))) for r in records]

    async def _payload(self, repo: str, digest: str) -> bytes | None:
        try:
            algorithm, _ = parse_digest(digest)
            recipe = await self._meta.blob_get(repo, digest)
        except RegistryError as exc:
            if exc.status != 404 and exc.status != 400:
                raise
            return None
        if int(recipe.get("size", 0)) > _MAX_PAYLOAD:
            return None
        payload = await self._read_blob(dict(recipe))
        return payload if digest_of(payload, algorithm) == digest else None


def _json(body: bytes) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _children(manifest: dict[str, object]) -> list[str]:
    entries = manifest.get("manifests")
    if not isinstance(entries, list):
        return []
    return [
        e["digest"] for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)
    ]


POLICY: web.AppKey[PullPolicy] = web.AppKey("cargohold_pull_policy", PullPolicy)


async def enforce(
    request: web.Request, repo: str, reference: str, record: ManifestInfo, load: LoadManifest
) -> None:
    """`PullPolicy.check` for one pull, its decision in the activity log: every refusal,
    and an allowed pull when decided afresh (gateway/activity.py
    `record_policy_decision`)."""
    policy = request.app[POLICY]

    def log_decision(rule: str, allowed: bool, reason: str) -> None:
        record_policy_decision(
            request,
            policy=rule,
            repository=repo,
            reference=reference,
            digest=record.digest,
            allowed=allowed,
            reason=reason,
        )

    try:
        decision = await policy.check(repo, record, load)
    except (SignatureRequired, VulnerabilityPolicy) as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        rule = "signature" if isinstance(exc, SignatureRequired) else "vulnerability"
        log_decision(rule, False, str(detail.get("reason") or exc.message))
        raise
    if decision is not None and decision.fresh and policy.cfg.audit_allowed:
        log_decision("signature", True, decision.reason)
