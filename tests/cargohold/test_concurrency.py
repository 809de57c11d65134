"""hash_off_loop: small hashes inline on the loop thread, big ones in a worker thread."""

from __future__ import annotations

import threading

from cargohold.concurrency import INLINE_HASH_BYTES, hash_off_loop


def _thread_of(data: bytes, salt: str = "") -> tuple[int, int, str]:
    return threading.get_ident(), len(data), salt


async def test_small_inputs_hash_on_the_loop_thread() -> None:
    data = b"x" * (INLINE_HASH_BYTES - 1)
    ident, size, salt = await hash_off_loop(len(data), _thread_of, data, salt="s")
    assert ident == threading.get_ident()
    assert (size, salt) == (len(data), "s")


async def test_big_inputs_hash_in_a_worker_thread() -> None:
    data = b"x" * INLINE_HASH_BYTES
    ident, size, _ = await hash_off_loop(len(data), _thread_of, data)
    assert ident != threading.get_ident()
    assert size == len(data)
