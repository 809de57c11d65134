"""The benchmark client's side of token auth, as `docker` does it: the first request to
`/v2/` answers 401 with a Bearer challenge naming the realm and service; a token is then
fetched from the realm with Basic credentials once per scope
(`repository:<name>:pull` or `...:pull,push`) and sent as `Authorization: Bearer` on every
request of that scope until shortly before it expires.

Used by `bench.oci.OciClient` and the raw manifest readers when the system under test has
credentials (the `cargohold-r3-auth` variant, bench/systems.py).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time

import aiohttp

_PARAM = re.compile(r'(\w+)="([^"]*)"')
# A token is fetched again this long before its `expires_in` runs out.
_MARGIN = 30.0


class TokenSource:
    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        self._basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._realm = ""
        self._service = ""
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens fetched (one per scope, barring expiry)

    async def _challenge(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.base}/v2/") as resp:
            header = resp.headers.get("WWW-Authenticate", "")
        scheme, _, rest = header.partition(" ")
        params = dict(_PARAM.findall(rest))
        if resp.status != 401 or scheme.lower() != "bearer" or "realm" not in params:
            raise RuntimeError(f"{self.base}/v2/ sent no Bearer challenge ({resp.status})")
        self._realm, self._service = params["realm"], params.get("service", "")

    async def token(self, session: aiohttp.ClientSession, scope: str) -> str:
        now = time.monotonic()
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            if not self._realm:
                await self._challenge(session)
            params = {"service": self._service, "scope": scope}
            async with session.get(
                self._realm, params=params, headers={"Authorization": self._basic}
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"token for {scope}: {resp.status} {await resp.text()}")
                body = await resp.json()
            token = str(body["token"])
            ttl = float(body.get("expires_in", 60))
            self._tokens[scope] = (token, time.monotonic() + max(ttl - _MARGIN, ttl / 2))
            self.fetched += 1
            return token

    async def header(
        self, session: aiohttp.ClientSession, repo: str, push: bool = False
    ) -> dict[str, str]:
        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        return {"Authorization": f"Bearer {await self.token(session, scope)}"}
