"""The one place that runs external programs: bounded by a timeout, killed when it expires.

May import: log_text, stdlib, errors.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ovs_ipsec.core.log_text import printable
from ovs_ipsec.errors import CommandError

# A failing program's stderr in an error message, at most this long (one line).
STDERR_LIMIT = 500


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
    on_wait: Callable[[], None] | None = None,
) -> Result:
    """Run `argv`, feeding `input` on stdin; raise CommandError on timeout or (if `check`) failure.

    `input` and the program's output may carry data that must not be logged (`ip xfrm state`
    prints keys); CommandError includes neither: only stderr, escaped and cut to one line.
    With `on_wait`, it is called every WAIT_SLICE while the program runs (the control socket
    answers meanwhile).
    """
    if on_wait is not None:
        return _run_serving(argv, timeout, input, check, on_wait)
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
        raise CommandError(result.argv, proc.returncode, "", error_text(proc.stderr))
    return result


WAIT_SLICE = 0.05


def _run_serving(
    argv: Sequence[str],
    timeout: float,
    input: str | None,
    check: bool,
    on_wait: Callable[[], None],
) -> Result:
    deadline = time.monotonic() + timeout
    try:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    except OSError as exc:
        raise CommandError(tuple(argv), None, "", str(exc)) from exc
    pending = input
    while True:
        try:
            stdout, stderr = popen.communicate(pending, timeout=WAIT_SLICE)
            break
        except subprocess.TimeoutExpired:
            pending = None  # communicate keeps feeding what it started with
            if time.monotonic() >= deadline:
                popen.kill()
                popen.communicate()
                raise CommandError(
                    tuple(argv), None, "", f"timed out after {timeout:g} s"
                ) from None
            on_wait()
    result = Result(tuple(argv), popen.returncode, stdout, stderr)
    if check and popen.returncode != 0:
        raise CommandError(result.argv, popen.returncode, "", error_text(stderr))
    return result


def error_text(stderr: str) -> str:
    """A program's stderr fit for an error message: one line, at most STDERR_LIMIT long."""
    return printable(stderr.strip(), STDERR_LIMIT)
