"""Failed-login limits: free failures, doubling back-off, per user and per address."""

from __future__ import annotations

from cargohold.config import AuthConfig
from gateway.auth.limits import LoginLimiter


def _limiter() -> LoginLimiter:
    return LoginLimiter(
        AuthConfig(
            login_failures_free=2,
            login_backoff_seconds=1.0,
            login_backoff_max_seconds=8.0,
            login_failure_window=100.0,
        )
    )


def test_backoff_grows_and_is_capped() -> None:
    limiter = _limiter()
    keys = limiter.keys("alice", "10.0.0.1")
    waits = []
    for _ in range(7):
        limiter.failed(keys, now=0.0)
        waits.append(limiter.retry_after(keys, now=0.0))
    assert waits == [0, 0, 1, 2, 4, 8, 8]


def test_address_blocks_every_user_and_success_clears_only_the_user() -> None:
    limiter = _limiter()
    for user in ("a", "b", "c"):
        limiter.failed(limiter.keys(user, "10.0.0.1"), now=0.0)
    # Each user failed once, the address three times: blocked for any user from there.
    assert limiter.retry_after(limiter.keys("d", "10.0.0.1"), now=0.0) == 1
    assert limiter.retry_after(limiter.keys("d", "10.0.0.2"), now=0.0) == 0
    limiter.succeeded("a")
    assert limiter.retry_after(limiter.keys("a", "10.0.0.1"), now=0.0) == 1


def test_user_blocked_from_every_address_and_window_forgets() -> None:
    limiter = _limiter()
    for i in range(3):
        limiter.failed(limiter.keys("alice", f"10.0.0.{i}"), now=0.0)
    assert limiter.retry_after(limiter.keys("alice", "10.9.9.9"), now=0.5) == 1
    assert limiter.retry_after(limiter.keys("alice", "10.9.9.9"), now=1.5) == 0
    limiter.failed(limiter.keys("alice", "10.0.0.9"), now=200.0)
    assert limiter.retry_after(limiter.keys("alice", "10.0.0.9"), now=200.0) == 0
