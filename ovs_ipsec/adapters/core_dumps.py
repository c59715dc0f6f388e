"""No core dump of this process: its memory holds the PSKs and the private key.

`PR_SET_DUMPABLE` 0 stops the kernel writing a core file (and keeps other users' ptrace and
/proc/<pid>/mem away); `RLIMIT_CORE` 0 says the same in the form tools and /proc/<pid>/limits
show. Both are inherited across fork, so `--detach` and `--monitor` keep them; the unit sets
`LimitCORE=0` as well.

May import: stdlib.
"""

from __future__ import annotations

import ctypes
import resource

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def disable_core_dumps() -> list[str]:
    """Make this process non-dumpable with no core size; returns what could not be done."""
    problems = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        problems.append(f"cannot set RLIMIT_CORE to 0: {exc}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            problems.append(f"prctl(PR_SET_DUMPABLE, 0): errno {ctypes.get_errno()}")
    except (OSError, AttributeError) as exc:
        problems.append(f"prctl(PR_SET_DUMPABLE, 0) unavailable: {exc}")
    return problems


def dumpable() -> int:
    """The process's dumpable flag (0: no core dumps), or -1 where prctl is unavailable."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


__all__ = ["disable_core_dumps", "dumpable"]
