"""The `[auth]` section of a token-mode test cluster, and a hand-written registry client
of the Docker token protocol: send a request, read the 401 challenge, fetch a token from
its realm for its scope (with Basic credentials or anonymously), retry with the Bearer
token. Tokens are cached per scope."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt

from gateway.auth.keys import generate_signing_key

_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(_PARAM.findall(rest))


class TokenClient:
    def __init__(
        self, session: aiohttp.ClientSession, base: str, user: str = "", password: str = ""
    ) -> None:
        self.session = session
        self.base = base
        self.user, self.password = user, password
        self.tokens: dict[str, str] = {}
        self.challenges: list[str] = []

    async def token(self, realm: str, service: str, scope: str) -> str:
        headers = {}
        if self.user:
            raw = f"{self.user}:{self.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        params = {"service": service, **({"scope": scope} if scope else {})}
        async with self.session.get(realm, params=params, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["token"])

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the dance; the final status, headers and body."""
        url = path if path.startswith("http") else self.base + path
        headers = dict(kwargs.pop("headers", {}))
        for attempt in range(2):
            async with self.session.request(method, url, headers=headers, **kwargs) as resp:
                body = await resp.read()
                if resp.status != 401 or attempt == 1:
                    return resp.status, dict(resp.headers), body
                challenge = resp.headers["WWW-Authenticate"]
            self.challenges.append(challenge)
            scheme, params = parse_challenge(challenge)
            assert scheme == "Bearer", challenge
            scope = params.get("scope", "")
            token = self.tokens.get(scope) or await self.token(
                params["realm"], params["service"], scope
            )
            self.tokens[scope] = token
            headers["Authorization"] = f"Bearer {token}"
        raise AssertionError("unreachable")


async def push_image(client: TokenClient, image: Any, tag: str | None = None) -> int:
    """Push `image` (repo, tag, blobs(), manifest()) through the token dance, as `tag`
    (default: its own); the first status that is not a success, else the manifest's."""
    for _media, digest, data in image.blobs():
        status, _h, _b = await client.request(
            "POST", f"/v2/{image.repo}/blobs/uploads/?digest={digest}", data=data
        )
        if status != 201:
            return status
    status, _h, _b = await client.request(
        "PUT",
        f"/v2/{image.repo}/manifests/{tag or image.tag}",
        data=image.manifest(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    return status


def token_auth(tmp_path: Path, users: dict[str, str]) -> dict[str, str]:
    """An `[auth]` section of token mode: a fresh signing key and a bcrypt htpasswd file."""
    key, htpasswd = tmp_path / "token-key.pem", tmp_path / "htpasswd"
    generate_signing_key(str(key))
    htpasswd.write_text(
        "".join(
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
            for u, p in users.items()
        )
    )
    return {"mode": "token", "signing_key": str(key), "htpasswd": str(htpasswd)}
