"""Reads the certificate and key files OVSDB names: bytes, or why they could not be read. And
the daemon's own private file, the record one daemon hands the next (core/handover.py).

Files are read whole on every planning pass (a few KiB each), so a certificate replaced at the
same path is noticed at the next OVSDB change or periodic check without inotify.

May import: stdlib.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

MAX_FILE_SIZE = 1 << 20
MAX_PRIVATE_SIZE = 64 << 20


def read_files(paths: Iterable[str]) -> dict[str, bytes | str]:
    """Each path's bytes, or why they could not be read. Only regular files are read: a FIFO
    would block the loop for ever on open or read, a device (`/dev/ptmx`, `/dev/zero`) never
    ends or acts on being opened, so neither is opened, and what is opened never blocks."""
    contents: dict[str, bytes | str] = {}
    for path in paths:
        try:
            contents[path] = _read_regular(path)
        except OSError as exc:
            contents[path] = f"cannot read {path}: {exc.strerror or exc}"
    return contents


def _read_regular(path: str) -> bytes | str:
    # stat first so that a device is never opened; fstat after the open, for a path replaced in
    # between.
    if why := _not_regular(path, os.stat(path).st_mode):
        return why
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if why := _not_regular(path, os.fstat(fd).st_mode):
            return why
        data = handle.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        return f"{path} is larger than {MAX_FILE_SIZE} bytes"
    return data


_FILE_TYPES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: str, mode: int) -> str:
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "not a file")
    return f"{path} is not a regular file ({kind})"


def write_private(path: str, data: bytes) -> None:
    """`path` holds `data` whole or keeps what it held (a crash or full disk midway leaves no
    half-written file), readable by us alone. OSError when it cannot be written."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older temporary file keeps its mode through O_TRUNC
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def take_private(path: str) -> bytes | str | None:
    """What `write_private` left at `path`, which is deleted (read once only): its bytes; None
    when there is none; or why it is not believed (not ours alone, unreadable, too large, or
    it cannot be deleted and so could be read again)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _remove(path) or f"cannot read {path}: {exc.strerror or exc}"
    try:
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(MAX_PRIVATE_SIZE + 1)
    except OSError as exc:
        return _remove(path) or f"cannot read {path}: {exc.strerror or exc}"
    if why := _remove(path):
        return why
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        return f"{path} is not a file of ours"
    if info.st_mode & 0o077:
        return f"{path} is open to others (mode {stat.S_IMODE(info.st_mode):o})"
    if len(data) > MAX_PRIVATE_SIZE:
        return f"{path} is larger than {MAX_PRIVATE_SIZE} bytes"
    return data


def _remove(path: str) -> str:
    """Delete `path`; why not, if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"cannot delete {path}: {exc.strerror or exc}"
    return ""
