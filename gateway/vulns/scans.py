"""Vulnerability reports of images: matched from their SBOM referrers against the current
vulnerability database, stored as referrers (cargohold/vulns/report.py), kept current.

`VulnDatabase` follows the cluster's database pointer (`vulndb_get`, re-asked every
`policy.vulndb_refresh_seconds`) and keeps the index of the current one parsed (read from
the chunk store, its digest checked, decoded in a thread).

`Scans.report(repo, image)` answers the report of an image for the current database (an
answer is reused for `policy.vulndb_refresh_seconds`, so a burst of pulls costs two
referrers queries once, not per pull; a new database is seen at once):
- no SBOM referrer (artifactType `application/vnd.cyclonedx+json`), or no database: None
  (the image is "not scanned");
- a stored report referrer matched from the same database and the same SBOMs: that one;
- else the SBOMs' components are matched now and, when this `Scans` may write (a gateway;
  the admin CLI only reads), the report is stored as a referrer and older reports of the
  image are deleted. The report's bytes depend only on (image, SBOMs, database), so two
  gateways doing this at once write the same manifest.

`Rematcher` is the background pass of a gateway: every `policy.rematch_interval_seconds`,
and soon after the database changes, it walks the catalogue and brings every SBOM'd image's
report up to date, so reports follow a new database without a push (layers are never read
again: only the stored SBOMs). Gateways that run it at once store identical reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cargohold.config import PolicyConfig
from cargohold.digests import digest_of
from cargohold.errors import RegistryError, ScanFailed
from cargohold.log import log_event
from cargohold.metadata_api import (
    BlobCommit,
    ManifestDelete,
    ManifestInfo,
    ManifestPut,
    Metadata,
    Recipe,
    VulnDbInfo,
)
from cargohold.periodic import cancel_and_wait, raise_if_cancelling
from cargohold.vulns import report as rep
from cargohold.vulns.match import match, sbom_packages
from cargohold.vulns.osv import decode_index

logger = logging.getLogger("cargohold.gateway.vulns")

ReadAll = Callable[[dict[str, Any]], Awaitable[bytes]]
StoreBytes = Callable[[bytes], Awaitable[dict[str, Any]]]
_MAX_SBOMS = 8  # SBOM referrers of one image considered (newest digests are not ordered)


@dataclass(frozen=True, slots=True)
class Report:
    digest: str | None  # the stored report manifest (None: matched, not stored)
    doc: dict[str, Any]


class VulnDatabase:
    """The current database pointer and its parsed index (see the module docstring)."""

    def __init__(self, meta: Metadata, read_all: ReadAll, refresh_seconds: float) -> None:
        self._meta = meta
        self._read_all = read_all
        self._refresh_seconds = refresh_seconds
        self._info: VulnDbInfo | None = None
        self._asked_at: float | None = None
        self._index: tuple[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def info(self) -> VulnDbInfo | None:
        now = time.monotonic()
        if self._asked_at is None or now - self._asked_at >= self._refresh_seconds:
            try:
                self._info = await self._meta.vulndb_get()
            except RegistryError as exc:
                if self._asked_at is None:
                    raise
                log_event(logger, "vulndb.refresh_failed", logging.WARNING, error=exc.code)
            self._asked_at = now
        return self._info

    def invalidate(self) -> None:
        self._asked_at = None

    async def current(self) -> tuple[VulnDbInfo, dict[str, Any]] | None:
        info = await self.info()
        if info is None:
            return None
        async with self._lock:
            if self._index is None or self._index[0] != info.digest:
                data = await self._read_all(dict(info.recipe))
                if digest_of(data, "sha256") != info.digest:
                    raise ScanFailed("the vulnerability index does not match its digest")
                index = await asyncio.to_thread(decode_index, data)
                self._index = (info.digest, index)
                log_event(
                    logger,
                    "vulndb.loaded",
                    logging.INFO,
                    generation=info.generation,
                    digest=info.digest,
                    advisories=len(index["advisories"]),
                )
            return info, self._index[1]


def _db_json(info: VulnDbInfo) -> dict[str, Any]:
    return {
        "digest": info.digest,
        "generation": info.generation,
        "imported_at": info.imported_at,
        "source": info.source,
    }


class Scans:
    """Reports of images (see the module docstring). `store` None: read-only."""

    def __init__(
        self,
        cfg: PolicyConfig,
        meta: Metadata,
        read_all: ReadAll,
        store: StoreBytes | None,
        database: VulnDatabase | None = None,
    ) -> None:
        self.cfg = cfg
        self.meta = meta
        self.database = database or VulnDatabase(meta, read_all, cfg.vulndb_refresh_seconds)
        self._read_all = read_all
        self._store = store
        self._docs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # (repo, image) -> (database digest, when, answer): a pull asks again only after
        # `vulndb_refresh_seconds` (or at once when the database changes).
        self._recent: OrderedDict[tuple[str, str], tuple[str, float, Report | None]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Report | None]] = {}

    # -- reading -------------------------------------------------------------------------
    async def _json(self, recipe: Recipe, what: str) -> dict[str, Any]:
        if int(recipe["size"]) > self.cfg.max_sbom_bytes:
            raise ScanFailed(f"{what} is larger than policy.max_sbom_bytes")
        data = await self._read_all(dict(recipe))
        try:
            doc = await asyncio.to_thread(json.loads, data)
        except (ValueError, RecursionError):
            raise ScanFailed(f"{what} is not JSON") from None
        if not isinstance(doc, dict):
            raise ScanFailed(f"{what} is not a JSON object")
        return doc

    async def _first_layer(self, repo: str, manifest_digest: str) -> dict[str, Any]:
        """The JSON of the first layer of an artifact manifest (an SBOM, a report)."""
        record = await self.meta.manifest_get(repo, manifest_digest)
        manifest = await self._json(record.recipe, f"manifest {manifest_digest}")
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
            raise ScanFailed(f"artifact {manifest_digest} has no layer")
        digest = layers[0].get("digest")
        if not isinstance(digest, str):
            raise ScanFailed(f"artifact {manifest_digest} has no layer digest")
        recipe = await self.meta.blob_get(repo, digest)
        return await self._json(recipe, f"layer {digest} of {manifest_digest}")

    async def sboms(self, repo: str, digest: str) -> list[str]:
        found = await self.meta.referrers(repo, digest, rep.SBOM_TYPE)
        return sorted(str(d["digest"]) for d in found)[:_MAX_SBOMS]

    async def stored(self, repo: str, digest: str) -> list[dict[str, Any]]:
        """Descriptors of the report referrers of `digest`."""
        return await self.meta.referrers(repo, digest, rep.REPORT_TYPE)

    async def _doc(self, repo: str, report_digest: str) -> dict[str, Any]:
        doc = self._docs.get(report_digest)
        if doc is None:
            doc = await self._first_layer(repo, report_digest)
            self._docs[report_digest] = doc
            while len(self._docs) > self.cfg.report_cache_entries:
                self._docs.popitem(last=False)
        self._docs.move_to_end(report_digest)
        return doc

    # -- the report ------------------------------------------------------------------------
    async def report(self, repo: str, image: ManifestInfo) -> Report | None:
        """The current report of `image` in `repo`; None when it is not scanned."""
        key = (repo, image.digest)
        info = await self.database.info()
        recent = self._recent.get(key)
        if (
            recent is not None
            and info is not None
            and recent[0] == info.digest
            and time.monotonic() - recent[1] < self.cfg.vulndb_refresh_seconds
        ):
            return recent[2]
        running = self._inflight.get(key)
        if running is not None:  # one match per image at a time on this gateway
            return await asyncio.shield(running)
        future: asyncio.Future[Report | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._report(repo, image)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody warns
            raise
        else:
            future.set_result(result)
            if info is not None:
                self._recent[key] = (info.digest, time.monotonic(), result)
                self._recent.move_to_end(key)
                while len(self._recent) > self.cfg.report_cache_entries:
                    self._recent.popitem(last=False)
            return result
        finally:
            del self._inflight[key]

    async def _report(self, repo: str, image: ManifestInfo) -> Report | None:
        sboms = await self.sboms(repo, image.digest)
        if not sboms:
            return None
        current = await self.database.current()
        if current is None:
            return None
        info, index = current
        want = ",".join(sboms)
        stale = []
        for desc in await self.stored(repo, image.digest):
            notes = desc.get("annotations") or {}
            if (
                notes.get(rep.ANNOTATION_DB) == info.digest
                and notes.get(rep.ANNOTATION_SBOMS) == want
            ):
                return Report(str(desc["digest"]), await self._doc(repo, str(desc["digest"])))
            stale.append(str(desc["digest"]))
        packages = []
        for sbom in sboms:
            packages += sbom_packages(await self._first_layer(repo, sbom))
        result = await asyncio.to_thread(match, index, packages)
        doc = rep.build_report(repo, image.digest, sboms, _db_json(info), result)
        if self._store is None:
            return Report(None, doc)
        digest = await self._put(repo, image, doc)
        for old in stale:  # reports of an older database or other SBOMs
            with contextlib.suppress(RegistryError):
                await self.meta.call(ManifestDelete(repo, old))
        log_event(
            logger,
            "vulns.matched",
            logging.INFO,
            repo=repo,
            digest=image.digest,
            report=digest,
            findings=len(doc["vulnerabilities"]),
            generation=info.generation,
        )
        return Report(digest, doc)

    async def _put(self, repo: str, image: ManifestInfo, doc: dict[str, Any]) -> str:
        assert self._store is not None
        body = rep.encode(doc)
        subject = {"mediaType": image.media_type, "digest": image.digest, "size": image.size}
        manifest = rep.report_manifest(subject, body, doc)
        now = time.time()
        for blob in (rep.EMPTY, body):
            recipe = await self._store(blob)
            await self.meta.call(
                BlobCommit(
                    repo,
                    rep.sha256(blob),
                    Recipe(size=recipe["size"], chunks=recipe["chunks"]),
                    None,
                    now,
                )
            )
        stored = await self._store(manifest)
        digest = rep.sha256(manifest)
        await self.meta.call(
            ManifestPut(
                repo=repo,
                digest=digest,
                media_type=rep.OCI_MANIFEST,
                recipe=Recipe(size=stored["size"], chunks=stored["chunks"]),
                blobs=(rep.sha256(rep.EMPTY), rep.sha256(body)),
                subject=image.digest,
                artifact_type=rep.REPORT_TYPE,
                annotations=json.loads(manifest)["annotations"],
                now=now,
            )
        )
        self._docs[digest] = doc
        return digest


class Rematcher:
    """A gateway's background pass keeping every SBOM'd image's report current."""

    def __init__(self, scans: Scans, interval: float) -> None:
        self._scans = scans
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last_generation: int | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="vulns-rematch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        passed_at = 0.0
        poll = max(min(self._scans.cfg.vulndb_refresh_seconds, self._interval), 0.5)
        while True:
            await asyncio.sleep(poll)  # first after a poll: the gateway starts serving first
            try:
                info = await self._scans.database.info()
                generation = info.generation if info is not None else None
                due = time.monotonic() - passed_at >= self._interval
                if info is not None and (due or generation != self._last_generation):
                    await self.run_pass()
                    self._last_generation = generation
                    passed_at = time.monotonic()
            except RegistryError as exc:
                raise_if_cancelling()  # a stop() that landed in a call
                log_event(logger, "vulns.rematch_failed", logging.WARNING, error=exc.code)
            except Exception as exc:  # a bug must not end the pass for good: log, go on
                raise_if_cancelling()
                log_event(logger, "vulns.rematch_crashed", logging.ERROR, error=repr(exc)[:300])

    async def run_pass(self) -> dict[str, int]:
        """Bring every SBOM'd image's report up to date; counts. Two queries per
        repository tell which images are current (a report whose annotations name this
        database and the image's SBOMs); only the others are matched."""
        counts = {"images": 0, "matched": 0, "failed": 0}
        info = await self._scans.database.info()
        if info is None:
            return counts
        last: str | None = None
        meta = self._scans.meta
        while True:
            page = await meta.catalog(1000, last)
            for repo in page.items:
                sboms: dict[str, list[str]] = {}
                for sbom, subject, _notes in await meta.artifacts_list(repo, rep.SBOM_TYPE):
                    sboms.setdefault(subject, []).append(sbom)
                if not sboms:
                    continue
                current = {
                    (subject, notes.get(rep.ANNOTATION_SBOMS))
                    for _d, subject, notes in await meta.artifacts_list(repo, rep.REPORT_TYPE)
                    if notes.get(rep.ANNOTATION_DB) == info.digest
                }
                for subject, found in sorted(sboms.items()):
                    counts["images"] += 1
                    want = ",".join(sorted(found)[:_MAX_SBOMS])
                    if (subject, want) in current:
                        continue
                    counts["matched"] += 1
                    try:
                        image = await self._scans.meta.manifest_get(repo, subject)
                        await self._scans.report(repo, image)
                    except RegistryError as exc:
                        counts["failed"] += 1
                        log_event(
                            logger,
                            "vulns.match_failed",
                            logging.WARNING,
                            repo=repo,
                            digest=subject,
                            error=str(exc)[:200],
                        )
            if not page.more or not page.items:
                break
            last = page.items[-1]
        log_event(logger, "vulns.rematch_pass", logging.INFO, **counts)
        return counts


SCANS: web.AppKey[Scans] = web.AppKey("cargohold_scans", Scans)
