"""Giving memory back to the system. A realtime session holds large buffers for a while (its audio, 20 MB
events); once it closes, what it held should not stay in the process. glibc-only; elsewhere these do nothing."""

from __future__ import annotations

import ctypes
import gc
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def return_large_frees() -> None:
    """glibc keeps the memory of large freed buffers (a realtime session's audio, a 20 MB event) for reuse once
    one has been freed: it raises its mmap threshold to that size. A fixed threshold keeps blocks of 128 KiB or more
    in their own mappings (as at the start), so that what a closed session held goes back to the system."""
    if (libc := _libc()) is not None:
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)  # glibc's own starting value


def trim_freed_memory() -> None:
    """Free what a closed session held now: its objects that refer to each other (a task and its frames, an
    error and its traceback, holding 20 MB events) wait for the cycle collector otherwise, whose next run
    depends on how many objects the process happens to make; then return the heap's free pages."""
    gc.collect()
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
