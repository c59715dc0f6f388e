"""Reads the certificate and key files OVSDB names: bytes, or why they could not be read.

Files are read whole on every planning pass (a few KiB each), so a certificate replaced at the
same path is noticed at the next OVSDB change or periodic check without inotify.

May import: stdlib.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_FILE_SIZE = 1 << 20


def read_files(paths: Iterable[str]) -> dict[str, bytes | str]:
    contents: dict[str, bytes | str] = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_SIZE + 1)
        except OSError as exc:
            contents[path] = f"cannot read {path}: {exc.strerror or exc}"
            continue
        if len(data) > MAX_FILE_SIZE:
            contents[path] = f"{path} is larger than {MAX_FILE_SIZE} bytes"
        else:
            contents[path] = data
    return contents
