"""Failed-login limits per user and per client address, with a growing back-off.

After `auth.login_failures_free` failures in a row, a key (`user:<name>` or
`addr:<ip>`) is blocked for `login_backoff_seconds`, doubled for every further failure up
to `login_backoff_max_seconds`; while blocked, logins are answered 429 with `Retry-After`
without checking the password. A success clears the user's key (not the address's: one
good account must not reset guessing at others). Counts older than
`login_failure_window` are forgotten; at most `login_limit_entries` keys are kept (the
oldest go first). Each gateway counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from cargohold.config import AuthConfig


@dataclass
class _Failures:
    count: int
    last: float
    blocked_until: float


class LoginLimiter:
    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def keys(user: str, address: str) -> list[str]:
        return [f"user:{user}", f"addr:{address}"] if user else [f"addr:{address}"]

    def _entry(self, key: str, now: float) -> _Failures | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry.last > self.cfg.login_failure_window:
            del self._keys[key]
            return None
        return entry

    def retry_after(self, keys: list[str], now: float | None = None) -> int:
        """Whole seconds until a login for these keys may be tried again (0 = now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            entry = self._entry(key, now)
            if entry is not None:
                wait = max(wait, entry.blocked_until - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        cfg = self.cfg
        for key in keys:
            entry = self._entry(key, now) or _Failures(0, now, 0.0)
            entry.count += 1
            entry.last = now
            over = entry.count - cfg.login_failures_free
            if over > 0:
                backoff = cfg.login_backoff_seconds * 2 ** min(over - 1, 30)
                entry.blocked_until = now + min(backoff, cfg.login_backoff_max_seconds)
            self._keys[key] = entry
            self._keys.move_to_end(key)
        while len(self._keys) > cfg.login_limit_entries:
            self._keys.popitem(last=False)

    def succeeded(self, user: str) -> None:
        self._keys.pop(f"user:{user}", None)
