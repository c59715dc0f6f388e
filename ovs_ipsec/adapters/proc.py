"""The one place that runs external programs: bounded by a timeout, killed when it expires.

May import: stdlib, errors.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ovs_ipsec.errors import CommandError


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: str | None = None,
    check: bool = True,
) -> Result:
    """Run `argv`, feeding `input` on stdin; raise CommandError on timeout or (if `check`) failure.

    `input` may carry data that must not be logged; CommandError never includes it.
    """
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(tuple(argv), None, "", f"timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise CommandError(tuple(argv), None, "", str(exc)) from exc
    result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(result.argv, proc.returncode, proc.stdout, proc.stderr.strip())
    return result
