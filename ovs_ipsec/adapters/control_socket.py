"""The control socket's listener: the ovs library's unixctl server, root's alone and bounded.

The library binds the socket under the process umask (its `fchmod` on the socket's descriptor
leaves the path's mode as bind made it: 0755 under umask 022, 0777 under 000), so the socket
is bound under umask 177 and set to 0600 after: only root may connect. The library also accepts
any number of connections and buffers a request of any length; here each connection may send
at most `MAX_REQUEST_BYTES` between two of our replies, must send its next request within
`REQUEST_TIMEOUT` of connecting or of our last reply, and at most `MAX_CONNECTIONS` are open:
further clients are accepted and closed at once (the listener never stays readable unserved,
so a full table cannot make the loop spin).

The limits sit in two thin wrappers around the library's own objects (its listener and each
accepted stream, the way adapters/ovsdb.py wraps jsonrpc streams); the library's request
handling is untouched.

May import: ovs, stdlib.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

import ovs.unixctl.server
import ovs.vlog

vlog = ovs.vlog.Vlog("control")

# ovs-appctl opens one connection per command; 32 leave room for scripts running in parallel.
MAX_CONNECTIONS = 32
# A request is a command and its arguments: far below this. The library parses JSON in Python,
# at about 0.17 s of the loop's time for 64 KiB of one string: 16 KiB cost about 40 ms.
MAX_REQUEST_BYTES = 16 * 1024
# A client that neither sends a whole request nor closes within this time loses its slot.
REQUEST_TIMEOUT = 30.0
# Mode of the socket: connecting needs write permission, so 0600 is root's alone.
SOCKET_MODE = 0o600
_REFUSAL_LOG_INTERVAL = 60.0


def create_server(
    path: str | None, clock: Callable[[], float] = time.monotonic
) -> ovs.unixctl.server.UnixctlServer:
    """The library's UnixctlServer at `path` (None: its default), bound root-only and bounded.
    Raises OSError when the socket cannot be created."""
    previous = os.umask(0o177)  # the daemon has one thread: nothing else creates files now
    try:
        error, server = ovs.unixctl.server.UnixctlServer.create(path)
    finally:
        os.umask(previous)
    if error:
        raise OSError(error, f"could not create the control socket {path or ''}")
    listener = server._listener  # the library keeps its PassiveStream here (ovs 3.1 to 4.0)
    if listener.bind_path is not None:
        os.chmod(listener.bind_path, SOCKET_MODE)
    server._listener = BoundedListener(listener, lambda: len(server._conns or ()), clock)
    return server


class BoundedListener:
    """The library's PassiveStream, accepting while fewer than MAX_CONNECTIONS are open."""

    def __init__(self, listener: Any, open_count: Callable[[], int], clock: Callable[[], float]):
        self._listener = listener
        self._open_count = open_count
        self._clock = clock
        self.refused = 0
        self._refusal_logged: float | None = None

    def accept(self) -> tuple[int, Any]:
        error, stream = self._listener.accept()
        while not error and self._open_count() >= MAX_CONNECTIONS:
            stream.close()
            self._note_refusal()
            error, stream = self._listener.accept()
        if error:
            return error, None
        return 0, BoundedStream(stream, self._clock)

    def _note_refusal(self) -> None:
        self.refused += 1
        now = self._clock()
        if self._refusal_logged is None or now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            vlog.warn(
                f"control socket: {MAX_CONNECTIONS} connections open; refusing new ones "
                f"({self.refused} refused so far)"
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


class BoundedStream:
    """One accepted connection's stream: an error instead of data once the client sent more
    than MAX_REQUEST_BYTES since our last reply, or sent no whole request within
    REQUEST_TIMEOUT; the library then closes the connection."""

    def __init__(self, stream: Any, clock: Callable[[], float]) -> None:
        self._stream = stream
        self._clock = clock
        self._unanswered = 0  # bytes received since the connection opened or we last replied
        self._since = clock()

    def recv(self, n: int) -> tuple[int, Any]:
        room = MAX_REQUEST_BYTES - self._unanswered
        if room <= 0:
            return errno.EMSGSIZE, ""
        error, data = self._stream.recv(min(n, room))
        if data:
            self._unanswered += len(data)
        elif error == errno.EAGAIN and self._clock() - self._since > REQUEST_TIMEOUT:
            return errno.ETIMEDOUT, ""
        return error, data

    def send(self, buf: Any) -> int:
        # Only a reply is ever sent: the request before it is complete, the budget starts over.
        self._unanswered = 0
        self._since = self._clock()
        return int(self._stream.send(buf))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
