"""Give memory freed after a burst of work back to the kernel.

CPython returns its own small-object arenas when they empty, but glibc keeps the pages of freed
`malloc` blocks below the top of its heap; after loading thousands of tunnels (or listing
thousands of policies) that is megabytes of resident memory the daemon will not use again soon.
`malloc_trim(0)` releases them (glibc only; elsewhere this does nothing).

May import: stdlib.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def trim() -> None:
    release = _malloc_trim()
    if release is not None:
        release(0)
