"""charon's event stream: a second VICI session whose socket sits in the ovs.poller loop.

A VICI session registered for events cannot carry requests (strongswan-vici.md section 3), so
commands stay on `Charon`'s session and this one only listens. Registration is a short exchange
bounded by one command timeout for all its events together, during which `on_wait` (the control
socket) is served every tenth of a second; after it the socket is non-blocking, `wait()` puts it
in the poller, and `receive()` returns whatever complete messages have arrived without ever
waiting for more. End of file is reported by the same `receive()` call that sees it, so a charon
that stops (or restarts) is noticed as soon as the loop wakes up, not at the next request.

charon 5.9.8 logs every IKE packet it receives, from anyone, and each line is a `log` event: a
flood of unauthenticated packets would be a flood of messages to decode in the daemon's only
loop. At most LOG_BUDGET log events a second are decoded; the rest are dropped on their name
alone, before any decoding, and counted (`Received.dropped_logs`); while they are, the socket
is read every THROTTLED_POLL seconds instead of waking the loop for each packet. Other events
are never dropped (only delayed as long): tunnel states come from them and from list-sas, log
events only add failure causes.

Framing and the bounded waits are `ViciStream`'s (adapters/vici_socket.py), the codec
core/vici_wire.py's, both shared with `Charon`. Values are decoded to str here, like `Charon`
does for replies; what they mean is read once, by core/sas.py's `parse_event`.

May import: errors, vici_socket, vici_wire, sas (event names), ovs.poller, stdlib.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ovs.poller

from ovs_ipsec.adapters.vici_socket import ViciStream, open_vici
from ovs_ipsec.core import sas, vici_wire
from ovs_ipsec.core.vici_wire import PacketType
from ovs_ipsec.errors import CharonError, CharonUnreachable

# What the daemon folds into tunnel states (named where they are parsed, core/sas.py). `alert`
# (strongSwan 6.0) names failure causes directly; 5.9.8 answers EVENT_UNKNOWN for it, and then
# `log` is where the causes are.
REQUIRED_EVENTS = tuple(kind.value for kind in sas.SaEventKind)
ALERT_EVENT = sas.ALERT_EVENT
LOG_EVENT = sas.LOG_EVENT

MAX_MESSAGE = vici_wire.MAX_PACKET
# One turn of the loop reads at most this much; the rest waits for the next turn (the socket
# stays readable), so a burst of log events cannot starve OVSDB and the control socket.
READ_BUDGET = 256 * 1024
# Log events decoded per second, at most: far above what our own tunnels' negotiations log
# (a few dozen lines each), far below a flood (charon logs ~15 lines per IKE_SA_INIT).
LOG_BUDGET = 500
# The frame of a log event starts with these bytes (type, name length, name): what it is, read
# without decoding anything.
_LOG_PREFIX = bytes((PacketType.EVENT, len(LOG_EVENT))) + LOG_EVENT.encode()
# Once log events are being dropped, the socket is read this often, not at every packet: what
# costs the loop in a flood is waking up for each one, more than decoding it.
THROTTLED_POLL = 0.1


@dataclass(frozen=True)
class Received:
    """What one `receive()` found: complete events in arrival order, and, if the session
    ended, why (it is then closed)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lost: str | None = None
    dropped_logs: int = 0  # log events beyond LOG_BUDGET, dropped undecoded


class Events:
    """The event session. `connect()` registers; `receive()` never blocks."""

    def __init__(
        self,
        path: str,
        timeout: float,
        on_wait: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.on_wait = on_wait
        self.clock = clock
        self.registered: tuple[str, ...] = ()
        self._stream: ViciStream | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._log_second = 0.0  # the second the log budget is counted in
        self._logs_this_second = 0
        self._throttled_until = 0.0

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def fileno(self) -> int | None:
        return self._stream.fileno() if self._stream is not None else None

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
        self._stream = ViciStream(
            open_vici(self.path, self.timeout, "events"), self.timeout, self._waiting
        )
        # One timeout for the whole registration, not one per event.
        deadline = time.monotonic() + self.timeout
        registered: list[str] = []
        try:
            for name in required:
                if not self._register(name, deadline):
                    raise CharonError("register", f"charon does not know the {name} event")
                registered.append(name)
            for group in alternatives:
                for name in group:
                    if self._register(name, deadline):
                        registered.append(name)
                        break
        except (OSError, ValueError) as exc:
            self.close()
            raise CharonUnreachable("events", str(exc) or type(exc).__name__) from exc
        except CharonError:
            self.close()
            raise
        self.registered = tuple(registered)
        return self.registered

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._pending.clear()
        self.registered = ()

    def wait(self, poller: ovs.poller.Poller) -> None:
        if self._stream is None:
            return
        throttled = self._throttled_until - self.clock()
        if throttled > 0:
            poller.timer_wait(int(throttled * 1000) + 1)
        elif self._pending or self._stream.packet_buffered():
            poller.immediate_wake()  # budget ran out last turn: carry on at once
        else:
            poller.fd_wait(self._stream.fileno(), ovs.poller.POLLIN)

    def receive(self, limit: int = 1000) -> Received:
        """Up to `limit` events that have fully arrived, without blocking."""
        stream = self._stream
        if stream is None:
            return Received(lost="not connected")
        lost: str | None = None
        try:
            if not stream.read_available(READ_BUDGET):
                lost = "charon closed the event session"
        except OSError as exc:
            lost = exc.strerror or str(exc)
        events = self._pending[:limit]
        del self._pending[:limit]
        dropped = 0
        try:
            while len(events) < limit:
                packet = stream.next_packet()
                if packet is None:
                    break
                if packet.startswith(_LOG_PREFIX) and not self._log_allowed():
                    dropped += 1
                    continue
                event = _event(packet)
                if event is not None:
                    events.append(event)
        except ValueError as exc:
            lost = f"unreadable event stream: {exc}"
        if lost is not None:
            self.close()
        if dropped:
            self._throttled_until = self.clock() + THROTTLED_POLL
        return Received(events, lost, dropped)

    def _log_allowed(self) -> bool:
        """One more log event within this second's LOG_BUDGET?"""
        now = self.clock()
        if now - self._log_second >= 1.0:
            self._log_second, self._logs_this_second = now, 0
        self._logs_this_second += 1
        return self._logs_this_second <= LOG_BUDGET

    def _register(self, name: str, deadline: float) -> bool:
        """Register one event (waiting until `deadline` at most); False if charon has none."""
        assert self._stream is not None
        self._stream.send(vici_wire.register_packet(name))
        while True:
            packet = self._stream.receive(deadline)
            kind = vici_wire.decode_packet(packet).type
            if kind == PacketType.EVENT:
                # An event of a name registered a moment ago can come before the confirmation.
                event = _event(packet)
                if event is not None:
                    self._pending.append(event)
                continue
            if kind == PacketType.EVENT_CONFIRM:
                return True
            if kind == PacketType.EVENT_UNKNOWN:
                return False
            raise OSError(errno.EPROTO, f"unexpected reply {kind} to register")


def _event(packet: bytes) -> tuple[str, dict[str, Any]] | None:
    """(name, message) of an EVENT packet; None for any other (a late confirmation)."""
    parsed = vici_wire.decode_packet(packet)
    if parsed.type != PacketType.EVENT:
        return None
    return parsed.name, vici_wire.decode_message(parsed.payload)
