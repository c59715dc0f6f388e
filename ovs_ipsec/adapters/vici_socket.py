"""Opening charon's VICI socket, for the command session (charon.py) and the event session
(events.py) alike: bounded by a timeout, and a failure is `CharonUnreachable`.

May import: errors, stdlib.
"""

from __future__ import annotations

import socket

from ovs_ipsec.errors import CharonUnreachable


def open_vici(path: str, timeout: float, command: str) -> socket.socket:
    """A connected unix socket to `path`; `command` names what failed when it cannot be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise CharonUnreachable(command, f"{path}: {exc.strerror or exc}") from exc
    return sock
