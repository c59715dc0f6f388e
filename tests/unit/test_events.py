"""The event session adapter against a scripted fake charon on a unix socket: registration with
fallbacks, non-blocking framing, and end of file noticed by the read that sees it."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovs.poller
import pytest
from vici.protocol import Message, Packet

from ovs_ipsec.adapters import events as events_adapter
from ovs_ipsec.adapters.events import MAX_MESSAGE
from ovs_ipsec.errors import CharonError, CharonUnreachable


def frame(packet: bytes) -> bytes:
    return struct.pack("!I", len(packet)) + packet


def event(name: str, body: dict[str, Any]) -> bytes:
    raw = name.encode()
    return frame(struct.pack("!BB", Packet.EVENT, len(raw)) + raw + Message.serialize(body))


class FakeCharon:
    """Answers event registrations (EVENT_CONFIRM for `known`, else EVENT_UNKNOWN), can send an
    event before a confirmation, and then hands the connection to the test."""

    def __init__(self, path: str, known: set[str], early: bytes = b"", silent: bool = False):
        self.known = known
        self.early = early
        self.silent = silent
        self.requests: list[str] = []
        self.conn: socket.socket | None = None
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        conn.settimeout(2)
        try:
            while True:
                head = conn.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    break
                (length,) = struct.unpack("!I", head)
                packet = conn.recv(length, socket.MSG_WAITALL)
                name = packet[2 : 2 + packet[1]].decode()
                self.requests.append(name)
                if self.silent:
                    continue
                if self.early:
                    conn.sendall(self.early)
                    self.early = b""
                reply = Packet.EVENT_CONFIRM if name in self.known else Packet.EVENT_UNKNOWN
                conn.sendall(frame(bytes([reply])))
                if len(self.requests) >= 6 or name == "log":
                    break
        except OSError:
            pass
        self.done.set()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


_opened: list[events_adapter.Events] = []


class Events(events_adapter.Events):
    """The adapter, each session closed at the end of its test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _opened.append(self)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "charon.vici")
    while _opened:
        _opened.pop().close()


KNOWN_598 = {"ike-updown", "child-updown", "ike-rekey", "child-rekey", "log"}


def connect(path: str, **kw: Any) -> tuple[FakeCharon, Events]:
    charon = FakeCharon(path, **kw)
    events = Events(path, timeout=2)
    events.connect(alternatives=(("alert", "log"),))
    charon.done.wait(2)
    return charon, events


def receive_until(events: Events, count: int) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 2
    while len(got) < count and time.monotonic() < deadline:
        received = events.receive()
        assert received.lost is None
        got += received.events
        time.sleep(0.01)
    return got


def test_registers_required_then_the_first_known_alternative(path: str) -> None:
    """On a 5.9.8 charon `alert` is unknown, so `log` is registered instead."""
    charon, events = connect(path, known=KNOWN_598)
    assert events.registered == ("ike-updown", "child-updown", "ike-rekey", "child-rekey", "log")
    assert charon.requests[-2:] == ["alert", "log"]
    charon.close()


def test_alert_is_taken_when_charon_knows_it(path: str) -> None:
    charon = FakeCharon(path, known=KNOWN_598 | {"alert"})
    events = Events(path, timeout=2)
    assert events.connect(alternatives=(("alert", "log"),))[-1] == "alert"
    charon.close()


def test_unknown_required_event_is_a_charon_error(path: str) -> None:
    charon = FakeCharon(path, known={"ike-updown"})
    events = Events(path, timeout=2)
    with pytest.raises(CharonError, match="child-updown"):
        events.connect()
    assert not events.connected
    charon.close()


def test_unreachable_and_silent_charon(path: str, tmp_path: Path) -> None:
    with pytest.raises(CharonUnreachable):
        Events(str(tmp_path / "nothing"), timeout=1).connect()
    charon = FakeCharon(path, known=KNOWN_598, silent=True)
    started = time.monotonic()
    with pytest.raises(CharonUnreachable):
        Events(path, timeout=0.3).connect()
    assert time.monotonic() - started < 2
    charon.close()


def test_events_before_the_confirmation_are_kept_and_values_decoded(path: str) -> None:
    early = event("ike-updown", {"up": "yes", "ovs-10.0.0.2": {"uniqueid": "1"}})
    charon, events = connect(path, known=KNOWN_598, early=early)
    assert events.receive().events == [("ike-updown", {"up": "yes", "ovs-10.0.0.2":
                                                       {"uniqueid": "1"}})]  # fmt: skip
    charon.close()


def test_receive_never_blocks_and_reassembles_split_frames(path: str) -> None:
    charon, events = connect(path, known=KNOWN_598)
    assert charon.conn is not None
    started = time.monotonic()
    assert events.receive().events == [] and time.monotonic() - started < 0.1
    data = event("log", {"msg": "a", "ikesa-name": "ovs-10.0.0.2"}) + event("child-updown", {})
    charon.conn.sendall(data[:7])
    assert events.receive().events == []
    charon.conn.sendall(data[7:])
    got = receive_until(events, 2)
    assert [name for name, _ in got] == ["log", "child-updown"]
    assert got[0][1] == {"msg": "a", "ikesa-name": "ovs-10.0.0.2"}
    charon.close()


def test_end_of_file_is_reported_by_the_read_that_sees_it(path: str) -> None:
    charon, events = connect(path, known=KNOWN_598)
    assert charon.conn is not None
    charon.conn.sendall(event("ike-updown", {}))
    charon.conn.close()
    deadline = time.monotonic() + 2
    received = events.receive()
    while received.lost is None and time.monotonic() < deadline:
        received = events.receive()
    assert received.lost == "charon closed the event session"
    assert not events.connected and events.fileno() is None
    assert events.receive().lost == "not connected"
    charon.close()


def test_an_absurd_length_ends_the_session(path: str) -> None:
    charon, events = connect(path, known=KNOWN_598)
    assert charon.conn is not None
    charon.conn.sendall(struct.pack("!I", MAX_MESSAGE + 1) + b"x")
    time.sleep(0.05)
    received = events.receive()
    assert received.lost is not None and "unreadable" in received.lost
    assert not events.connected
    charon.close()


def test_wait_wakes_at_once_when_a_message_is_already_buffered(path: str) -> None:
    charon, events = connect(path, known=KNOWN_598)
    assert charon.conn is not None
    charon.conn.sendall(event("child-updown", {}) * 3)
    time.sleep(0.05)
    assert len(events.receive(limit=1).events) == 1  # two complete ones stay buffered
    poller = ovs.poller.Poller()
    events.wait(poller)
    assert poller.timeout == 0
    assert len(events.receive().events) == 2
    charon.close()


# -- issue 15 item 20: registration serves the control socket; a log flood costs a bounded amount


class SlowCharon(FakeCharon):
    """Confirms each registration only after `delay` seconds."""

    def __init__(self, path: str, delay: float) -> None:
        self.delay = delay
        super().__init__(path, known=KNOWN_598)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        try:
            while len(self.requests) < 6:
                head = conn.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    break
                packet = conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
                self.requests.append(packet[2 : 2 + packet[1]].decode())
                time.sleep(self.delay)
                conn.sendall(frame(bytes([Packet.EVENT_CONFIRM])))
        except OSError:
            pass
        self.done.set()


def test_registration_serves_the_control_socket_and_is_bounded_by_one_timeout(path: str) -> None:
    """Registering five events waited up to a timeout for each, serving nothing meanwhile."""
    charon = SlowCharon(path, delay=0.3)
    served: list[float] = []
    events = Events(path, timeout=1.0, on_wait=lambda: served.append(time.monotonic()))
    started = time.monotonic()
    with pytest.raises(CharonUnreachable):
        events.connect(events_adapter.REQUIRED_EVENTS, (("alert", "log"),))
    took = time.monotonic() - started
    assert took < 1.5, took  # one timeout for all, not one per event (5 x 0.3 s answered)
    assert len(served) >= 5  # the control socket was served every tenth of a second or so
    assert max(b - a for a, b in zip([started, *served], served, strict=False)) < 0.3
    charon.close()


def test_a_log_flood_is_decoded_within_its_budget_and_other_events_never_dropped(
    path: str,
) -> None:
    charon = FakeCharon(path, known=KNOWN_598)
    now = [100.0]
    events = Events(path, timeout=2, clock=lambda: now[0])
    events.connect(alternatives=(("alert", "log"),))
    charon.done.wait(2)
    assert charon.conn is not None
    log = event("log", {"group": "NET", "level": "1", "msg": "received packet: from 10.0.0.9"})
    updown = event("ike-updown", {"up": "yes", "ovs-10.0.0.2": {"uniqueid": "7"}})
    charon.conn.sendall(log * 1500 + updown + log * 1500)
    got: list[tuple[str, dict[str, Any]]] = []
    dropped = 0
    deadline = time.monotonic() + 3
    while len(got) + dropped < 3001 and time.monotonic() < deadline:
        received = events.receive()
        assert received.lost is None
        got += received.events
        dropped += received.dropped_logs
        time.sleep(0.01)
    logs = [name for name, _ in got if name == "log"]
    assert len(logs) == events_adapter.LOG_BUDGET and dropped == 3000 - len(logs)
    assert ("ike-updown", {"up": "yes", "ovs-10.0.0.2": {"uniqueid": "7"}}) in got
    # While dropping, the socket is read on a timer, not at every packet.
    poller = ovs.poller.Poller()
    events.wait(poller)
    assert 0 < poller.timeout <= events_adapter.THROTTLED_POLL * 1000 + 1
    # The next second has a budget of its own.
    now[0] += 1.0
    charon.conn.sendall(log * 3)
    time.sleep(0.05)
    assert [name for name, _ in events.receive().events] == ["log"] * 3
    charon.close()
