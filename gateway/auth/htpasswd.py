"""A bcrypt-only htpasswd file (the format `htpasswd -B` writes), re-read when it changes.

Any other hash type (MD5 `$apr1$`, SHA1 `{SHA}`, crypt, plain) is refused when the file is
read, naming the line and the user. A change that makes the file unreadable or invalid
keeps the previous users (logged once per change); at start-up it is an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from cargohold.errors import ConfigError
from cargohold.log import log_event

logger = logging.getLogger("cargohold.gateway")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def _kind(hashed: str) -> str:
    if hashed.startswith("$apr1$"):
        return "apr1 MD5"
    if hashed.startswith("{SHA}"):
        return "SHA1"
    if hashed.startswith("$"):
        return f"{hashed.split('$')[1]!r} crypt"
    return "crypt or plain text"


def parse_htpasswd(text: str, source: str = "htpasswd") -> dict[str, bytes]:
    """user -> bcrypt hash; ConfigError for any line that is not `user:<bcrypt hash>`."""
    users: dict[str, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"{source}:{lineno}: not a `user:hash` line")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            raise ConfigError(
                f"{source}:{lineno}: user {user!r}: {_kind(hashed)} hashes are refused; "
                "only bcrypt is accepted (create the file with `htpasswd -B`)"
            )
        users[user] = hashed.encode()
    return users


class HtpasswdFile:
    """The users of one htpasswd file; `refresh()` re-reads it (in a thread) when changed."""

    def __init__(self, path: str, check_seconds: float = 1.0) -> None:
        self.path = path
        self.check_seconds = check_seconds
        self._signature = self._stat()
        self.users = parse_htpasswd(self._read(), path)
        self._checked = time.monotonic()
        self._lock = asyncio.Lock()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read the htpasswd file {self.path}: {exc}") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> str:
        try:
            return Path(self.path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the htpasswd file {self.path}: {exc}") from exc

    def _reload_if_changed(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        self.users = parse_htpasswd(self._read(), self.path)
        log_event(logger, "auth.htpasswd_reloaded", path=self.path, users=len(self.users))

    async def refresh(self, user: str = "") -> None:
        """Re-read the file if it changed (looked at most every `check_seconds`)."""
        if time.monotonic() - self._checked < self.check_seconds:
            return
        async with self._lock:
            if time.monotonic() - self._checked < self.check_seconds:
                return
            self._checked = time.monotonic()
            try:
                await asyncio.to_thread(self._reload_if_changed)
            except ConfigError as exc:
                log_event(logger, "auth.htpasswd_invalid", logging.ERROR, error=str(exc))

    def lookup(self, user: str) -> bytes | None:
        return self.users.get(user)
