"""glibc malloc settings for processes that move MiB-sized buffers (nodes and gateways).

Every chunk a node stores or serves, and every chunk a gateway relays, passes through a
few fresh 4 MiB buffers (the gRPC message, the stored value, the HTTP write). With glibc's
defaults such a buffer is often a fresh mmap: 1,024 page faults and 4 MiB zero-filled by
the kernel, then unmapped again on free. Keeping freed memory for reuse avoids that
(what it saved is measured in bench/README.md, "Figures behind choices in the code").

`tune_malloc(retain)` sets, through `mallopt`:
- M_MMAP_THRESHOLD = 32 MiB (glibc's largest allowed value on 64-bit): chunk-sized
  buffers come from the heap, not from mmap;
- M_TRIM_THRESHOLD = retain: up to `retain` free bytes stay in the process (RSS) instead
  of going back to the kernel after every burst;
- M_TOP_PAD = retain / 4: the heap grows in large steps.
`retain` 0 leaves glibc's defaults. Not glibc (musl, macOS): nothing happens.

`tune_malloc(retain, arenas)` with `arenas` > 0 also sets M_ARENA_MAX: by default glibc
gives each new thread an arena of its own (up to 8 per core), and the trim threshold and
top pad above govern the main arena only. A chunk's buffers are made and freed on
different threads (gRPC's, the hashing executor's, the LMDB writer's), so memory freed in
one arena was not reused by an allocation in another, and other arenas give emptied heaps
back to the kernel: a burst of concurrent pushes faulted in fresh, zero-filled pages
over and over. One arena lets all of them recycle the same retained memory (bench/README.md,
"Push at c8 vs c1": fewer faults on average, the first burst's cost not reliably lower);
the price is one lock for malloc across threads, most of whose allocations run under the
GIL anyway. A thread that allocated before M_ARENA_MAX was set keeps an arena of its own
that later threads share: cargohold_cli tunes malloc before it starts any thread.

The trim threshold only returns free memory at the top of the heap. After a burst that
left free memory scattered through it (many clients' buffers freed at once), callers ask
`release_memory()` (`malloc_trim(0)`: every arena, every free page); gateway/body.py does
when its body budget drains.
"""

from __future__ import annotations

import ctypes
import logging

from cargohold.log import log_event

logger = logging.getLogger("cargohold.memtune")

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024


def release_memory() -> bool:
    """Give free heap pages back to the kernel (glibc `malloc_trim(0)`); blocking, may take
    milliseconds on a big heap: run it off the event loop. False when not glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def tune_malloc(retain: int, arenas: int = 0) -> bool:
    """Apply the settings above (call it before starting threads: a thread keeps the
    arena it got); True when glibc accepted all of them."""
    if retain <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    limit = 2**31 - 1
    settings: list[tuple[int, int]] = [
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, min(retain, limit)),
        (M_TOP_PAD, min(retain // 4, limit)),
    ]
    if arenas > 0:
        settings.append((M_ARENA_MAX, min(arenas, limit)))
    ok = all(mallopt(option, value) == 1 for option, value in settings)
    log_event(
        logger,
        "malloc.tuned",
        logging.DEBUG if ok else logging.WARNING,
        retain=retain,
        arenas=arenas,
        accepted=ok,
    )
    return ok
