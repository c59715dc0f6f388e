"""charon's event stream: a second VICI session whose socket sits in the ovs.poller loop.

A VICI session registered for events cannot carry requests (strongswan-vici.md section 3), so
commands stay on `Charon`'s session and this one only listens. Registration is a short blocking
exchange bounded by the command timeout; after it the socket is non-blocking, `wait()` puts it
in the poller, and `receive()` returns whatever complete messages have arrived without ever
waiting for more. End of file is reported by the same `receive()` call that sees it, so a charon
that stops (or restarts) is noticed as soon as the loop wakes up, not at the next request.

Framing is vici.protocol's: a 4-byte big-endian length, then a `Packet` whose EVENT payload is
a `Message`. Values are decoded from bytes to str here, like `Charon` does for replies.

May import: vici.protocol, vici.exception, errors, vici_socket, vici_wire, ovs.poller, stdlib.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ovs.poller
from vici.exception import DeserializationException
from vici.protocol import Message, Packet

from ovs_ipsec.adapters.vici_socket import open_vici
from ovs_ipsec.core.vici_wire import bytes_to_text as decode
from ovs_ipsec.errors import CharonError, CharonUnreachable

# What the daemon folds into tunnel states. `alert` (strongSwan 6.0) names failure causes
# directly; 5.9.8 answers EVENT_UNKNOWN for it, and then `log` is where the causes are.
REQUIRED_EVENTS = ("ike-updown", "child-updown", "ike-rekey", "child-rekey")
ALERT_EVENT = "alert"
LOG_EVENT = "log"

_HEADER = struct.Struct("!I")
# charon's own limit for one VICI message is 512 KiB (VICI_MESSAGE_SIZE_MAX); anything longer
# is a broken stream, not a big event.
MAX_MESSAGE = 512 * 1024
# One turn of the loop reads at most this much; the rest waits for the next turn (the socket
# stays readable), so a burst of log events cannot starve OVSDB and the control socket.
READ_BUDGET = 256 * 1024
RECV_SIZE = 64 * 1024


@dataclass(frozen=True)
class Received:
    """What one `receive()` found: complete events in arrival order, and, if the session
    ended, why (it is then closed)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lost: str | None = None


class Events:
    """The event session. `connect()` registers; `receive()` never blocks."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.registered: tuple[str, ...] = ()
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._pending: list[tuple[str, dict[str, Any]]] = []

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def fileno(self) -> int | None:
        return self._socket.fileno() if self._socket is not None else None

    def connect(
        self,
        required: Sequence[str] = REQUIRED_EVENTS,
        alternatives: Sequence[Sequence[str]] = (),
    ) -> tuple[str, ...]:
        """Open the session and register every `required` event, then, of each group in
        `alternatives`, the first one charon knows; returns the names registered. charon
        answers EVENT_UNKNOWN for an event it does not have (that is how a 5.9.8 charon, which
        has no `alert`, is told from a 6.0 one); for a required event that is a CharonError."""
        self.close()
        sock = self._socket = open_vici(self.path, self.timeout, "events")
        registered: list[str] = []
        try:
            for name in required:
                if not self._register(name):
                    raise CharonError("register", f"charon does not know the {name} event")
                registered.append(name)
            for group in alternatives:
                for name in group:
                    if self._register(name):
                        registered.append(name)
                        break
        except (OSError, DeserializationException, struct.error, ValueError) as exc:
            self.close()
            raise CharonUnreachable("events", str(exc) or type(exc).__name__) from exc
        except CharonError:
            self.close()
            raise
        sock.setblocking(False)
        self.registered = tuple(registered)
        return self.registered

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._socket = None
        self._buffer.clear()
        self._pending.clear()
        self.registered = ()

    def wait(self, poller: ovs.poller.Poller) -> None:
        if self._socket is None:
            return
        if self._pending or self._complete_message_buffered():
            poller.immediate_wake()  # budget ran out last turn: carry on at once
        else:
            poller.fd_wait(self._socket.fileno(), ovs.poller.POLLIN)

    def receive(self, limit: int = 1000) -> Received:
        """Up to `limit` events that have fully arrived, without blocking."""
        if self._socket is None:
            return Received(lost="not connected")
        lost: str | None = None
        read = 0
        while read < READ_BUDGET:
            try:
                chunk = self._socket.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                lost = exc.strerror or str(exc)
                break
            if not chunk:
                lost = "charon closed the event session"
                break
            self._buffer += chunk
            read += len(chunk)
        events = self._pending[:limit]
        del self._pending[:limit]
        try:
            while len(events) < limit:
                packet = self._next_packet()
                if packet is None:
                    break
                event = self._event(packet)
                if event is not None:
                    events.append(event)
        except (DeserializationException, struct.error, UnicodeDecodeError, ValueError) as exc:
            lost = f"unreadable event stream: {exc}"
        if lost is not None:
            self.close()
        return Received(events, lost)

    # -- framing ------------------------------------------------------------------------------

    def _register(self, name: str) -> bool:
        assert self._socket is not None
        packet = Packet.register_event(name)
        self._socket.sendall(_HEADER.pack(len(packet)) + packet)
        deadline = time.monotonic() + self.timeout
        while True:
            packet = self._next_packet()
            if packet is None:
                self._fill(deadline)
                continue
            parsed = Packet.parse(packet)
            if parsed.response_type == Packet.EVENT:
                # An event of a name registered a moment ago can come before the confirmation.
                event = self._event(packet)
                if event is not None:
                    self._pending.append(event)
                continue
            if parsed.response_type == Packet.EVENT_CONFIRM:
                return True
            if parsed.response_type == Packet.EVENT_UNKNOWN:
                return False
            raise OSError(errno.EPROTO, f"unexpected reply {parsed.response_type} to register")

    def _fill(self, deadline: float) -> None:
        """Blocking read of more bytes, bounded by `deadline` (registration only)."""
        assert self._socket is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._socket.settimeout(remaining)
        chunk = self._socket.recv(RECV_SIZE)
        if not chunk:
            raise ConnectionError("Connection closed")
        self._buffer += chunk

    def _complete_message_buffered(self) -> bool:
        if len(self._buffer) < _HEADER.size:
            return False
        (length,) = _HEADER.unpack_from(self._buffer)
        return len(self._buffer) >= _HEADER.size + length

    def _next_packet(self) -> bytes | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > MAX_MESSAGE:
            raise ValueError(f"message of {length} bytes announced")
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return None
        packet = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return packet

    @staticmethod
    def _event(packet: bytes) -> tuple[str, dict[str, Any]] | None:
        parsed = Packet.parse(packet)
        if parsed.response_type != Packet.EVENT:
            return None  # a late confirmation; nothing to fold
        name = parsed.event_type.decode("utf-8", "replace")
        return name, decode(Message.deserialize(parsed.payload))
