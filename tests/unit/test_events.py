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
