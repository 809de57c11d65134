"""Helpers of the auth tests: a signing key, a bcrypt htpasswd file and an `[auth]` config."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt

from cargohold.config import AuthConfig
from gateway.auth.keys import generate_signing_key


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}" for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def token_config(tmp_path: Path, users: dict[str, str]) -> AuthConfig:
    key = tmp_path / "token-key.pem"
    generate_signing_key(str(key))
    return AuthConfig(
        mode="token",
        htpasswd=str(write_htpasswd(tmp_path / "htpasswd", users)),
        signing_key=str(key),
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
