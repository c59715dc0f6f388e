"""Exceptions that carry their facts as fields, not only as text.

May import: stdlib.
"""

from __future__ import annotations


class OvsIpsecError(Exception):
    """Base class of every error this package raises on purpose."""


class CommandError(OvsIpsecError):
    """An external program failed, timed out or could not be started."""

    def __init__(
        self, argv: tuple[str, ...], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "could not run" if returncode is None else f"exit code {returncode}"
        super().__init__(f"{' '.join(argv)}: {status}: {stderr}".rstrip(": "))


class CharonError(OvsIpsecError):
    """charon refused a VICI command (`errmsg` is charon's own reason)."""

    def __init__(self, command: str, errmsg: str) -> None:
        self.command = command
        self.errmsg = errmsg
        super().__init__(f"{command}: {errmsg}")


class CharonUnreachable(OvsIpsecError):
    """The VICI socket could not be reached, timed out or closed."""

    def __init__(self, command: str, cause: str, daemon: str = "charon") -> None:
        self.command = command
        self.cause = cause
        super().__init__(f"{command}: {daemon} unreachable: {cause}")


class XfrmError(OvsIpsecError):
    """The kernel refused an XFRM change."""
