"""Reading every acknowledged image back, byte for byte, through every gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from cluster.images import ImageSpec
from cluster.registry_client import RegistryClient, Retryable, check_image


@dataclass
class VerifyResult:
    images: int
    reads: int
    bytes_read: int
    retried: int


async def _verify(
    gateways: list[str], specs: list[ImageSpec], settle: float, concurrency: int
) -> VerifyResult:
    retried = 0
    total = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        client = RegistryClient(session)

        async def one(base: str, spec: ImageSpec) -> None:
            nonlocal retried, total
            deadline = time.monotonic() + settle
            async with sem:
                while True:
                    try:
                        got = await check_image(client, base, spec)
                        total += got
                        return
                    except Retryable:
                        # Recovery may still be finishing; a wrong answer is never retried.
                        retried += 1
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(base, spec) for base in gateways for spec in specs))
    return VerifyResult(len(specs), len(specs) * len(gateways), total, retried)


def verify_images(
    gateways: list[str], specs: Iterable[ImageSpec], settle: float = 60.0, concurrency: int = 16
) -> VerifyResult:
    """Every image read back byte-identical through every gateway (blocking).

    Retryable answers (503, refused connections) are retried for `settle` seconds, then
    re-raised; a 404 or wrong bytes raise `Violation` at once.
    """
    return asyncio.run(_verify(list(gateways), list(specs), settle, concurrency))
