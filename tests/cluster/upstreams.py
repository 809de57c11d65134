"""Upstream registries for the pull-through cache tests (gateway/mirror/).

`Distribution` runs CNCF Distribution (`/usr/bin/docker-registry`) on a free loopback
port with its access log on (optionally behind an htpasswd file: HTTP Basic), so a test
can count the requests the proxy sent it (`requests(method, path_part)`), and can be
stopped and started again on the same port and storage (with deletes enabled or not:
`set_deletes`, for the next start). `push_image` pushes an
`ImageSpec` to any registry with plain HTTP; `push_referrer` a signature of a manifest
the way clients do to a registry without the referrers API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yarl

from cargohold_cli.devcluster import free_port, signal_process
from cluster.chunkcheck import digest_of, push_blob
from cluster.images import MANIFEST_TYPE, ImageSpec

DISTRIBUTION_BIN = "/usr/bin/docker-registry"
_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d{3})')


class Distribution:
    """CNCF Distribution, anonymous, its access log in `workdir/registry.log`; manifest
    deletes enabled unless `deletes` is off (then every DELETE is 405 UNSUPPORTED)."""

    def __init__(self, workdir: Path, htpasswd: Path | None = None, deletes: bool = True) -> None:
        if not shutil.which(DISTRIBUTION_BIN):
            pytest.fail(f"{DISTRIBUTION_BIN} missing: make system-deps")
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.htpasswd = htpasswd
        workdir.mkdir(parents=True, exist_ok=True)
        self.set_deletes(deletes)

    def set_deletes(self, enabled: bool) -> None:
        """Write the config with manifest deletes enabled or not (read at the next start)."""
        htpasswd = self.htpasswd
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else ""
        (self.workdir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n"
            f"  delete:\n    enabled: {'true' if enabled else 'false'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Distribution:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [DISTRIBUTION_BIN, "serve", str(self.workdir / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while True:  # answering at all (a 401 of the htpasswd mode counts)
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            signal_process(self.proc)
            self.proc = None

    def requests(self, method: str, path_part: str) -> int:
        """How many `method` requests whose path contains `path_part` were answered."""
        count = 0
        for line in self.log.read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match and match.group(1) == method and path_part in match.group(2):
                count += 1
        return count


async def push_image(
    http: aiohttp.ClientSession, base: str, image: ImageSpec, headers: dict[str, str] | None = None
) -> None:
    """Push `image` (POST then PUT per blob, then the manifest by tag)."""
    for _media, digest, data in image.blobs():
        async with http.post(f"{base}/v2/{image.repo}/blobs/uploads/", headers=headers) as r:
            assert r.status == 202, await r.text()
            location = yarl.URL(base).join(yarl.URL(r.headers["Location"]))
        async with http.put(location.update_query(digest=digest), data=data, headers=headers) as r:
            assert r.status == 201, await r.text()
    async with http.put(
        f"{base}/v2/{image.repo}/manifests/{image.tag}",
        data=image.manifest(),
        headers={"Content-Type": MANIFEST_TYPE, **(headers or {})},
    ) as r:
        assert r.status == 201, await r.text()


SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


async def push_referrer(
    http: aiohttp.ClientSession, base: str, repo: str, subject: str, subject_size: int, seed: int
) -> dict[str, object]:
    """Push a signature-like artifact whose subject is `subject` the way a client does to a
    registry without the referrers API (oras, notation, cosign's OCI 1.1 mode): the
    artifact by digest, then the tag schema's index (`sha256-<hex>`) listing it. Returns
    its descriptor."""
    payload = json.dumps({"signed": subject, "seed": seed}).encode()
    for data in (b"{}", payload):
        await push_blob(http, base, repo, data)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": SIGNATURE_TYPE,
            "config": {"mediaType": EMPTY_TYPE, "digest": digest_of(b"{}"), "size": 2},
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": digest_of(payload),
                    "size": len(payload),
                }
            ],
            "subject": {"mediaType": MANIFEST_TYPE, "digest": subject, "size": subject_size},
        }
    ).encode()
    descriptor: dict[str, object] = {
        "mediaType": MANIFEST_TYPE,
        "digest": digest_of(body),
        "size": len(body),
        "artifactType": SIGNATURE_TYPE,
    }
    headers = {"Content-Type": MANIFEST_TYPE}
    async with http.put(
        f"{base}/v2/{repo}/manifests/{digest_of(body)}", data=body, headers=headers
    ) as r:
        assert r.status == 201, await r.text()
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [descriptor]})
    tag = subject.replace(":", "-")
    headers = {"Content-Type": INDEX_TYPE}
    async with http.put(f"{base}/v2/{repo}/manifests/{tag}", data=index, headers=headers) as r:
        assert r.status == 201, await r.text()
    return descriptor
