"""Registry passwords and robot secrets: generated, and bcrypt-hashed before they travel
(only the hash is ever stored in the metadata). Shared by the admin CLI and the gateways'
admin API; hashing is slow on purpose, so async callers run it in a worker thread."""

from __future__ import annotations

import secrets

import bcrypt

BCRYPT_ROUNDS = 12
# Robot secrets are long random strings: a cheaper bcrypt cost still leaves them
# unguessable, and CI logins stay quick.
ROBOT_BCRYPT_ROUNDS = 10


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def new_password() -> str:
    return secrets.token_urlsafe(18)


def new_robot_secret() -> str:
    return secrets.token_urlsafe(32)
