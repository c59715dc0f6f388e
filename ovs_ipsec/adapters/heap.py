"""Give memory freed after a burst of work back to the kernel.

CPython returns its own small-object arenas when they empty, but glibc keeps the pages of freed
`malloc` blocks below the top of its heap; after loading thousands of tunnels (or listing
thousands of policies) that is megabytes of resident memory the daemon will not use again soon.
`malloc_trim(0)` releases them (glibc only; elsewhere this does nothing).

The cyclic garbage collector is kept off what the daemon holds for good. A full collection walks
every tracked object: 40 ms at N = 5,000 tunnels, four of them during a cold start as the state
grows, and later one every few periodic checks (a quarter of the idle budget) or in the middle
of a change. So the collector waits during start-up (`hold_off`), and after the first pass or a
bulk load what is there is frozen (`settle`): collections then walk only what is newer. Frozen
objects that became unreachable cycles would be kept, so now and then (`resettle`, every few
minutes) everything is unfrozen, collected and frozen again.

May import: stdlib.
"""

from __future__ import annotations

import ctypes
import functools
import gc
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


def hold_off() -> None:
    """No collection until the first pass has built the daemon's state (`settle`)."""
    gc.disable()


def settle() -> None:
    """What the first pass or a bulk load built is left out of later collections, which run
    again from now on. The cycles it left behind go first: frozen, they would stay until the
    next `resettle`, minutes of memory held for nothing (one full collection, once)."""
    gc.collect()
    gc.freeze()
    gc.enable()


def resettle() -> None:
    """Everything frozen is collected again (a cycle that became garbage since goes), then
    frozen again."""
    gc.unfreeze()
    settle()  # which collects first
