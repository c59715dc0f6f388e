"""charon's VICI socket, for the command session (charon.py) and the event session (events.py)
alike: opening it bounded by a timeout (a failure is `CharonUnreachable`), and `ViciStream`, the
one place where framed packets (core/vici_wire.py) are written to and read from it.

May import: errors, vici_wire, stdlib.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable

from ovs_ipsec.core import vici_wire
from ovs_ipsec.errors import CharonUnreachable

# While waiting, the owner's other duties (the control socket) run this often.
WAIT_SLICE = 0.1
RECV_SIZE = 64 * 1024


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


class ViciStream:
    """A VICI socket and what has been read from it but not yet taken as packets.

    The socket is non-blocking; every wait is a poll bounded by one deadline per call (a charon
    stopped half-way through a reply, by SIGSTOP say, never blocks us for ever), and while it
    waits `on_wait` runs every WAIT_SLICE seconds, so that ovs-appctl keeps getting answers
    from a daemon whose charon hangs. Errors are OSError (TimeoutError, ConnectionError at end
    of file) and ValueError for a frame charon would never send."""

    def __init__(
        self, sock: socket.socket, timeout: float, on_wait: Callable[[], None] | None = None
    ) -> None:
        self.socket = sock
        self.timeout = timeout
        self.on_wait = on_wait
        self._buffer = bytearray()
        self._start = 0  # where the next frame in _buffer begins (the rest is taken)
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()
        self._buffer.clear()
        self._start = 0

    def send(self, packet: bytes) -> None:
        """Write one framed packet, waiting (bounded) while the socket is full."""
        data = memoryview(vici_wire.frame(packet))
        deadline = time.monotonic() + self.timeout
        while data:
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            data = data[sent:]
            if data:
                self._wait(deadline, select.POLLOUT)

    def receive(self, deadline: float | None = None) -> bytes:
        """The next packet, waiting for it until `deadline` (default: `timeout` from now)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while True:
            packet = self.next_packet()
            if packet is not None:
                return packet
            try:
                chunk = self.socket.recv(RECV_SIZE)
            except BlockingIOError:
                self._wait(deadline, select.POLLIN)
                continue
            if not chunk:
                raise ConnectionError("Connection closed")
            self._buffer += chunk

    def read_available(self, budget: int) -> bool:
        """Read what has arrived, up to about `budget` bytes, without waiting; False once the
        peer closed the socket."""
        read = 0
        while read < budget:
            try:
                chunk = self.socket.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            if not chunk:
                return False
            self._buffer += chunk
            read += len(chunk)
        return True

    def next_packet(self) -> bytes | None:
        """A packet already read, if a whole one is there (never waits)."""
        packet, self._start = vici_wire.packet_at(self._buffer, self._start)
        if packet is None or self._start == len(self._buffer):
            # Drop what was taken once per batch, not once per packet.
            del self._buffer[: self._start]
            self._start = 0
        return packet

    def packet_buffered(self) -> bool:
        return vici_wire.packet_buffered(self._buffer, self._start)

    def _wait(self, deadline: float, events: int) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._poll.modify(self.socket.fileno(), events)
        if not self._poll.poll(int(min(remaining, WAIT_SLICE) * 1000) + 1) and self.on_wait:
            self.on_wait()
