"""Failures counted by cause: one failed negotiation counts once, under the cause charon's log
gives, whichever turn of the daemon's loop that log line arrives in (a fake clock stands for
the loop's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.connections import plan
from ovs_ipsec.core.failures import FailureCounts
from ovs_ipsec.core.model import InterfaceRow, Snapshot
from ovs_ipsec.core.outcomes import Tracker
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.sas import parse_event
from ovs_ipsec.core.status import State, StateKey, StatusBook, View

RECORDED = json.loads((Path(__file__).parent / "data" / "charon-5.9.8-events.json").read_text())
GENERIC: StateKey = (State.FAILED, "IKE negotiation with 10.77.0.2 failed", Cause.NEGOTIATION)
AUTH: StateKey = (State.FAILED, "authentication failed: peer 10.77.0.2 rejected us",
                  Cause.AUTHENTICATION)  # fmt: skip
CONFIGURED: StateKey = (State.CONFIGURED, "loaded", None)
CONNECTING: StateKey = (State.CONNECTING, "negotiating", None)


def feed(tracker: Tracker, name: str, body: dict[str, Any]) -> None:
    event = parse_event(name, body)
    if event is not None:
        tracker.feed(event)


class Loop:
    """The daemon's refold-and-count step, turn by turn, over the real Tracker and StatusBook
    (what Daemon._log_state_changes does with them), at times a test sets."""

    def __init__(self) -> None:
        desired = plan(parse_config(Snapshot(
            (InterfaceRow("t0", "gre", {"remote_ip": "10.77.0.2", "psk": "Zq9-failures"}),), {}
        )))  # fmt: skip
        self.tracker = Tracker()
        self.view = View(desired, frozenset(desired.conns), outcomes=self.tracker.outcomes())
        self.book = StatusBook()
        self.failures = FailureCounts(grace=1.0)
        self.turn([], at=0.0)

    def turn(self, events: list[tuple[str, dict[str, Any]]], at: float) -> dict[str, int]:
        for name, body in events:
            feed(self.tracker, name, body)
        for name, (before, now) in self.book.refold(self.view).items():
            self.failures.change(name, before, now, at)
        self.failures.settle(at)
        return dict(self.failures.counts())


def wrong_psk_events() -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """h1's recorded failed negotiation against a peer with another PSK, split where charon
    sent it: everything up to the ike-updown event (down), and the log line after it that says
    why (5.9.8 sends log lines to VICI asynchronously)."""
    events = [(name, body) for name, body in RECORDED["wrongpsk"]["h1"]]
    end = next(i for i, (name, _) in enumerate(events) if name == "ike-updown") + 1
    assert "AUTHENTICATION_FAILED" in events[end][1]["msg"]
    return events[:end], events[end:]


def test_a_failure_whose_cause_arrives_a_turn_later_counts_once_under_that_cause() -> None:
    """The ike-updown event and the log line that tells the cause land in two turns of the loop
    (a loaded machine): the tunnel shows the generic reason in between, but the counter moves
    once, for authentication (it counted `negotiation` as well, for the same failure)."""
    updown, why = wrong_psk_events()
    loop = Loop()
    assert loop.turn(updown, at=10.0) == {}
    assert loop.book.states()["t0"][2] is Cause.NEGOTIATION  # what the status says meanwhile
    assert loop.turn(why, at=10.002) == {"authentication": 1}
    assert loop.turn([], at=20.0) == {"authentication": 1}


def test_a_failure_whose_events_arrive_in_one_turn_counts_once() -> None:
    updown, why = wrong_psk_events()
    assert Loop().turn(updown + why, at=10.0) == {"authentication": 1}


def test_a_failure_nothing_explains_counts_as_negotiation_after_the_grace() -> None:
    updown, _ = wrong_psk_events()
    loop = Loop()
    assert loop.turn(updown, at=10.0) == {}
    assert loop.turn([], at=10.9) == {}
    assert loop.turn([], at=11.0) == {"negotiation": 1}
    assert loop.turn([], at=30.0) == {"negotiation": 1}


def test_deadline_says_when_a_held_failure_counts() -> None:
    counts = FailureCounts(grace=1.0)
    assert counts.deadline() is None
    counts.change("t0", CONNECTING, GENERIC, at=5.0)
    counts.change("t1", CONNECTING, GENERIC, at=5.5)
    assert counts.deadline() == 6.0
    counts.change("t0", GENERIC, AUTH, at=5.6)
    assert counts.deadline() == 6.5 and counts.counts() == {"authentication": 1}


def test_a_generic_failure_counts_when_the_tunnel_moves_on_or_goes() -> None:
    counts = FailureCounts(grace=1.0)
    counts.change("t0", CONFIGURED, GENERIC, at=0.0)
    counts.change("t0", GENERIC, CONNECTING, at=0.1)  # the next attempt began
    counts.change("t1", CONFIGURED, GENERIC, at=0.0)
    counts.change("t1", GENERIC, None, at=0.2)  # the port was deleted
    assert counts.counts() == {"negotiation": 2} and counts.deadline() is None


def test_same_cause_while_failed_is_the_same_failure_and_another_cause_another() -> None:
    counts = FailureCounts(grace=1.0)
    first: StateKey = (State.FAILED, "certificate untrusted: no trusted CA", Cause.CERTIFICATE)
    precise: StateKey = (State.FAILED, 'certificate untrusted: "CN=h2" is issued by "CN=x"',
                         Cause.CERTIFICATE)  # fmt: skip
    unreachable: StateKey = (State.FAILED, "peer 10.77.0.2 unreachable", Cause.UNREACHABLE)
    counts.change("t0", CONFIGURED, first, at=0.0)
    counts.change("t0", first, precise, at=0.0)  # a more specific line of the same attempt
    assert counts.counts() == {"certificate": 1}
    counts.change("t0", precise, unreachable, at=5.0)  # a later attempt failed otherwise
    assert counts.counts() == {"certificate": 1, "unreachable": 1}
    counts.change("t0", unreachable, GENERIC, at=9.0)  # and another, not explained yet
    counts.change("t0", GENERIC, AUTH, at=9.001)
    assert counts.counts() == {"certificate": 1, "unreachable": 1, "authentication": 1}


def test_charon_and_first_time_failures_count_at_once() -> None:
    counts = FailureCounts(grace=1.0)
    gone: StateKey = (State.FAILED, "charon unreachable: Connection refused", Cause.CHARON)
    counts.change("t0", None, gone, at=0.0)
    counts.change("t1", CONFIGURED, AUTH, at=0.0)
    assert counts.counts() == {"charon": 1, "authentication": 1}
