"""Password checks against a user source: bcrypt in a worker thread, with a short cache of
successful checks.

A success is remembered for `auth.login_cache_seconds` under an HMAC (with a per-process
random key) of user, password and stored hash, so a changed password or file entry misses
the cache. An unknown user still costs one bcrypt run (no user enumeration by timing).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import Protocol

import bcrypt

_DUMMY_HASH = bcrypt.hashpw(b"cargohold-no-such-user", bcrypt.gensalt(10))


class UserSource(Protocol):
    """Where users and their bcrypt hashes come from (an htpasswd file, the metadata)."""

    async def refresh(self, user: str = "") -> None:
        """Bring the source up to date before `user` is looked up."""
        ...

    def lookup(self, user: str) -> bytes | None: ...


class PasswordChecker:
    def __init__(self, users: UserSource, cache_seconds: float, cache_entries: int) -> None:
        self.users = users
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, float] = OrderedDict()

    def _cache_key(self, user: str, password: str, stored: bytes) -> bytes:
        material = b"\0".join((user.encode(), password.encode(), stored))
        return hmac.new(self._key, material, hashlib.sha256).digest()

    async def exists(self, user: str) -> bool:
        await self.users.refresh(user)
        return self.users.lookup(user) is not None

    async def check(self, user: str, password: str) -> bool:
        await self.users.refresh(user)
        stored = self.users.lookup(user)
        if stored is None:
            await asyncio.to_thread(bcrypt.checkpw, password.encode(), _DUMMY_HASH)
            return False
        key = self._cache_key(user, password, stored)
        now = time.monotonic()
        expires = self._ok.get(key)
        if expires is not None and expires > now:
            self._ok.move_to_end(key)
            return True
        try:
            ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), stored)
        except ValueError:
            return False
        if ok and self.cache_seconds > 0:
            self._ok[key] = now + self.cache_seconds
            while len(self._ok) > self.cache_entries:
                self._ok.popitem(last=False)
        return ok
