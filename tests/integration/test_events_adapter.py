"""The event adapter (adapters/events.py) against a real charon: registration (and which source
of failure causes this charon offers), an ike-updown arriving through receive() while the
socket sits in an ovs.poller, and charon's exit reported by receive() at once. The Daemon's
unit tests use a fake of this adapter (tests/unit/fakes.py); this is what it stands for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ovs.poller
import pytest
from resilience_lab import add_tunnel, conn_names

from ovs_ipsec.adapters.events import ALERT_EVENT, LOG_EVENT, REQUIRED_EVENTS, Events
from ovs_ipsec.errors import CharonUnreachable
from ovs_ipsec.tools.lab import Lab, wait_for

pytestmark = pytest.mark.lab


def receive_until(
    events: Events, done: Callable[[list[tuple[str, dict[str, Any]]], str | None], bool],
    timeout: float = 15.0,
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:  # fmt: skip
    """Everything received (and why the session ended, if it did) once `done` says so; the
    socket waits in a poller between reads, as in the daemon's loop."""
    received: list[tuple[str, dict[str, Any]]] = []
    lost: str | None = None
    deadline = time.monotonic() + timeout
    while not done(received, lost):
        assert time.monotonic() < deadline, f"timed out; received {[n for n, _ in received]}"
        poller = ovs.poller.Poller()
        events.wait(poller)
        poller.timer_wait(200)
        poller.block()
        if events.connected:
            batch = events.receive()
            received += batch.events
            lost = batch.lost
    return received, lost


def test_registration_and_a_missing_socket(make_lab: Callable[..., Lab]) -> None:
    host = make_lab(1, daemon=False).hosts[0]
    events = Events(host.vici_path, timeout=10)
    registered = events.connect(REQUIRED_EVENTS, ((ALERT_EVENT, LOG_EVENT),))
    assert registered[: len(REQUIRED_EVENTS)] == REQUIRED_EVENTS
    # 5.9 has no alert event: its failure causes come from log messages.
    (causes,) = registered[len(REQUIRED_EVENTS) :]
    expected = LOG_EVENT if host.charon_version() < (6,) else ALERT_EVENT
    assert causes == expected
    assert events.connected and events.receive().lost is None
    events.close()
    with pytest.raises(CharonUnreachable):
        Events(host.vici_path + ".missing", timeout=1).connect(REQUIRED_EVENTS)


def test_an_ike_sa_coming_up_and_charon_going_away(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(2)
    a, b = lab.hosts
    add_tunnel(a, "tb", "gre", b.ipv4, psk="bee-key")
    add_tunnel(b, "ta", "gre", a.ipv4, psk="bee-key")
    conn = f"ovs-{b.ipv4}"
    wait_for(lambda: conn in conn_names(a) and f"ovs-{a.ipv4}" in conn_names(b), 10,
             what="both daemons loaded their connection")  # fmt: skip
    events = Events(a.vici_path, timeout=10)
    events.connect(REQUIRED_EVENTS, ((ALERT_EVENT, LOG_EVENT),))
    try:
        assert a.send_probe(b.ipv4, "gre") == "sent"  # the trap starts the negotiation

        def ike_up(received: list[tuple[str, dict[str, Any]]], lost: str | None) -> bool:
            return any(
                name == "ike-updown" and body.get("up") == "yes" and conn in body
                for name, body in received
            )

        received, lost = receive_until(events, ike_up)
        assert lost is None
        body = next(body for name, body in received if name == "ike-updown" and conn in body)
        assert body[conn]["state"] == "ESTABLISHED"
        assert body[conn]["remote-host"] == b.ipv4  # values decoded to str

        a.stop_charon()
        _, lost = receive_until(events, lambda _, lost: lost is not None, timeout=10)
        assert lost and not events.connected
    finally:
        events.close()
