"""Tunnel states and their reasons: charon's events (recorded from a real 5.9.8 charon, and
synthetic ones for 6.0's `alert`) folded by `Tracker`, SAs folded by sas.py, and `fold()`.

Over 400 lines: recorded event streams replayed for each cause, and the fold's table."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core.block_policies import (
    SKB_MARK_REASON,
    PolicyReason,
    Purpose,
    explain_protection,
)
from ovs_ipsec.core.causes import ALERTS, LOG_PATTERNS, Cause, Scope, log_wanted
from ovs_ipsec.core.connections import AuthClass, TrafficSelector, plan
from ovs_ipsec.core.model import InterfaceRow, Snapshot
from ovs_ipsec.core.outcomes import ConnOutcome, Outcome, Tracker, dispatch
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.sas import (
    Expected,
    IkeSa,
    SaEvent,
    current_ike,
    fold_sa_event,
    merge_listing,
    parse_event,
    parse_sas,
)
from ovs_ipsec.core.status import (
    Protection,
    State,
    StateKey,
    StatusBook,
    View,
    fold,
    protection_by_tunnel,
    state_key,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "charon-5.9.8-events.json").read_text())
RECORDED_6 = json.loads((Path(__file__).parent / "data" / "charon-6.0.1-events.json").read_text())
H1_CONN = "ovs-10.77.0.2"  # h1's connection to h2
H2_CONN = "ovs-10.77.0.1"


def feed(tracker: Tracker, name: str, body: dict[str, Any]) -> bool:
    """An event as the event session receives it, parsed and fed as the daemon does."""
    event = parse_event(name, body)
    return event is not None and tracker.feed(event)


def fold_event(
    sas: dict[str, tuple[IkeSa, ...]], name: str, body: dict[str, Any]
) -> tuple[dict[str, tuple[IkeSa, ...]], Expected]:
    event = parse_event(name, body)
    assert isinstance(event, SaEvent)
    return fold_sa_event(sas, event)


def replay(
    scenario: str, host: str, only: Iterable[str] | None = None, recorded: Any = RECORDED
) -> Tracker:
    tracker = Tracker()
    for name, body in recorded[scenario][host]:
        if only is None or name in only:
            feed(tracker, name, body)
    return tracker


def log(msg: str, ike: str | None = H1_CONN, uid: int | None = 1) -> dict[str, str]:
    body = {"group": "IKE", "level": "1", "thread": "7", "msg": msg}
    if ike is not None:
        body["ikesa-name"] = ike
    if uid is not None:
        body["ikesa-uniqueid"] = str(uid)
    return body


def ike_sa(uid: int, state: str = "ESTABLISHED", **extra: Any) -> dict[str, Any]:
    return {"uniqueid": str(uid), "state": state, "local-host": "10.77.0.1",
            "remote-host": "10.77.0.2", "local-id": "10.77.0.1", "remote-id": "10.77.0.2",
            **extra}  # fmt: skip


def child_sa(name: str, uid: int, state: str = "INSTALLED") -> dict[str, Any]:
    return {"name": name, "uniqueid": str(uid), "state": state, "mode": "TRANSPORT",
            "protocol": "ESP", "spi-in": "c0671655", "spi-out": "cdfed6bc",
            "bytes-in": "120", "bytes-out": "240", "packets-in": "1", "packets-out": "2",
            "rekey-time": "3000", "local-ts": ["10.77.0.1/32[gre]"],
            "remote-ts": ["10.77.0.2/32[gre]"]}  # fmt: skip


# -- recorded 5.9.8 runs ------------------------------------------------------------------------


def test_kernel_refusal_is_the_responders_reason_and_no_proposal_the_initiators() -> None:
    """Success in this lab: the IKE_SA comes up, and the responder's kernel refuses the ESP SA
    (with the netlink error); the initiator only learns that the peer refused the CHILD_SA."""
    h2 = replay("ok", "h2").outcomes()[H2_CONN]
    assert h2.failure is None
    assert h2.child_failure is not None and h2.child_failure.cause is Cause.KERNEL
    assert h2.child_failure.reason.startswith("kernel refused the SA")
    assert "Function not implemented (38)" in h2.child_failure.reason
    h1 = replay("ok", "h1").outcomes()[H1_CONN]
    assert h1.failure is None and h1.child_failure is not None
    assert "refused the CHILD_SA (NO_PROPOSAL_CHOSEN)" in h1.child_failure.reason


def test_wrong_psk_names_the_side_and_the_identity() -> None:
    """The initiator was rejected by its peer (as which identity); the responder saw a peer
    that did not prove the PSK (which peer)."""
    h1 = replay("wrongpsk", "h1").outcomes()[H1_CONN].failure
    assert h1 is not None and h1.cause is Cause.AUTHENTICATION
    assert "peer 10.77.0.2 rejected us as '10.77.0.1'" in h1.reason
    h2 = replay("wrongpsk", "h2").outcomes()[H2_CONN].failure
    assert h2 is not None and h2.cause is Cause.AUTHENTICATION
    assert "peer '10.77.0.1' did not prove our pre-shared key" in h2.reason


def test_absent_peer_is_unreachable_while_charon_keeps_trying() -> None:
    failure = replay("absent", "h1").outcomes()["ovs-10.77.0.99"].failure
    assert failure is not None and failure.cause is Cause.UNREACHABLE
    assert failure.reason.startswith("peer 10.77.0.99 unreachable")


def test_expired_and_untrusted_certificates_are_told_apart() -> None:
    expired = replay("expired", "h1").outcomes()[H1_CONN].failure
    assert expired is not None and expired.cause is Cause.CERTIFICATE
    assert "expired or not yet valid" in expired.reason and '"CN=h2"' in expired.reason
    untrusted = replay("otherca", "h1").outcomes()[H1_CONN].failure
    assert untrusted is not None and untrusted.cause is Cause.CERTIFICATE
    assert 'issued by "CN=other CA"' in untrusted.reason
    assert "not a trusted CA (ca_cert)" in untrusted.reason


def test_unnamed_responder_failure_is_filed_under_the_peer_and_names_its_identity() -> None:
    """charon cannot name the IKE_SA of a peer no connection accepts; the failure is filed by
    the peer's address and says which identity it presented."""
    tracker = Tracker()
    for name, body in RECORDED["wrongname"]["h1"]:
        uid = body.get("ikesa-uniqueid") or next(
            (sa.get("uniqueid") for sa in body.values() if isinstance(sa, dict)), None
        )
        if uid == "1":
            feed(tracker, name, body)
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and failure.cause is Cause.AUTHENTICATION
    assert "presented identity 'h3'" in failure.reason


def test_later_attempt_replaces_an_earlier_ones_reason() -> None:
    """In `wrongname` h2 first fails as initiator (uid 1), then rejects h1 (uid 2): the
    outcome is the last attempt's."""
    failure = replay("wrongname", "h1").outcomes()[H1_CONN].failure
    assert failure is not None and failure.ike_id == 2
    assert "rejected us as 'h1'" in failure.reason


def test_event_order_does_not_matter_for_the_reason() -> None:
    """5.9.8 raises ike-updown (down) before the log line that says why: the specific reason
    replaces the generic one whatever the order."""
    events = RECORDED["wrongpsk"]["h1"]
    updown = [e for e in events if e[0] == "ike-updown"]
    logs = [e for e in events if e[0] != "ike-updown"]
    first, last = Tracker(), Tracker()
    for name, body in updown + logs:
        feed(first, name, body)
    for name, body in logs + updown:
        feed(last, name, body)
    assert first.outcomes()[H1_CONN].failure == last.outcomes()[H1_CONN].failure
    assert "rejected us as '10.77.0.1'" in str(first.outcomes()[H1_CONN].failure)


# -- recorded 6.0.1 runs ------------------------------------------------------------------------


def test_6_0_kernel_refusal_fails_the_ike_sa_on_both_sides_and_says_why() -> None:
    """6.0.1 on a kernel without ESP: the responder authenticated the initiator and established
    the IKE_SA, its kernel refused the CHILD_SA, and its IKE_AUTH answer (N(NO_PROP) alone)
    made the initiator drop the IKE_SA. Each side says so, not "authentication failed"."""
    h2 = replay("ok", "h2", recorded=RECORDED_6).outcomes()[H2_CONN]
    assert h2.failure is not None and h2.failure.cause is Cause.KERNEL and h2.failure.final
    assert h2.failure.reason.startswith("the kernel refused the CHILD_SA")
    assert "Requested AEAD algorithm not found (38)" in h2.failure.reason
    assert "peer 10.77.0.1, which we had authenticated, dropped the IKE_SA" in h2.failure.reason
    h1 = replay("ok", "h1", recorded=RECORDED_6).outcomes()[H1_CONN]
    assert h1.failure is not None and h1.failure.cause is Cause.NEGOTIATION
    assert "peer 10.77.0.2 answered IKE_AUTH with NO_PROPOSAL_CHOSEN alone" in h1.failure.reason
    assert "refused the CHILD_SA after authenticating us" in h1.failure.reason


def test_6_0_kernel_refusal_reason_whatever_the_event_order() -> None:
    """charon's vici logger sends log messages from a queue, so `ike-updown` may come before
    or after the lines that explain it; the responder's `up` must not wipe the failure."""
    events = RECORDED_6["ok"]["h2"]
    updown = [e for e in events if e[0] == "ike-updown"]
    logs = [e for e in events if e[0] != "ike-updown"]
    outcomes = []
    for order in (updown + logs, logs + updown, events):
        tracker = Tracker()
        for name, body in order:
            feed(tracker, name, body)
        outcomes.append(tracker.outcomes()[H2_CONN].failure)
    assert outcomes[0] is not None and outcomes.count(outcomes[0]) == 3


def test_6_0_responder_state_is_failed_with_the_kernel_reason_once_the_sa_is_gone() -> None:
    """What `tunnels/show` says on the responder: failed, cause kernel, once list-sas no
    longer has the IKE_SA (while it has it: ike-up with the kernel's reason)."""
    tracker = replay("ok", "h2", recorded=RECORDED_6)
    rows = (InterfaceRow("t0", "gre", {"remote_ip": "10.77.0.1", "psk": "Zq9PSK-six"}),)
    desired = plan(parse_config(Snapshot(rows, {})))
    view = View(desired, loaded={H2_CONN}, outcomes=tracker.outcomes())
    status = fold(view)["t0"]
    assert status.state is State.FAILED and status.cause is Cause.KERNEL
    assert "kernel refused the CHILD_SA" in status.reason


def test_6_0_wrong_psk_reads_as_in_5_9() -> None:
    h1 = replay("wrongpsk", "h1", recorded=RECORDED_6).outcomes()[H1_CONN].failure
    assert h1 is not None and h1.cause is Cause.AUTHENTICATION
    assert "peer 10.77.0.2 rejected us as '10.77.0.1'" in h1.reason
    h2 = replay("wrongpsk", "h2", recorded=RECORDED_6).outcomes()[H2_CONN].failure
    assert h2 is not None and h2.cause is Cause.AUTHENTICATION
    assert "peer '10.77.0.1' did not prove our pre-shared key" in h2.reason


def test_only_ike_auth_responses_are_read_from_the_packet_log() -> None:
    """ENC prints every packet; only an IKE_AUTH response's payloads are looked at."""
    assert log_wanted("ENC", "parsed IKE_AUTH response 1 [ N(NO_PROP) ]")
    assert log_wanted("ENC", "generating IKE_AUTH response 1 [ N(NO_PROP) ]")
    assert not log_wanted("ENC", "parsed INFORMATIONAL request 2 [ N(AUTH_FAILED) ]")
    assert not log_wanted("NET", "received packet: from 10.77.0.1[500] to 10.77.0.2[500]")
    tracker = Tracker()
    feed(tracker, "log", {**log("generating IKE_AUTH response 1 [ N(NO_PROP) ]"), "group": "NET"})
    assert tracker.outcomes() == {}


def test_5_9_kernel_refusal_keeps_the_ike_sa_and_no_lost_failure() -> None:
    """The 6.0 patterns change nothing for 5.9.8, whose IKE_AUTH answer keeps IDr and AUTH."""
    h2 = replay("ok", "h2").outcomes()[H2_CONN]
    assert h2.failure is None and h2.child_failure is not None


# -- the pattern table --------------------------------------------------------------------------

# One real message per pattern (5.9.8 or 6.0.1 wording) and the cause it must give (None: context
# only).
SAMPLES = [
    ("10.77.0.1 is initiating an IKE_SA", None),
    ("initiating IKE_SA ovs-10.77.0.2[1] to 10.77.0.2", None),
    ("looking for peer configs matching 10.77.0.2[h2]...10.77.0.1[h1]", None),
    ("authentication of 'h1' (myself) with ECDSA_WITH_SHA256_DER successful", None),
    ("IKE_SA ovs-10.77.0.2[1] established between 10.77.0.1[h1]...10.77.0.2[h2]", None),
    ("received netlink error: Function not implemented (38)", None),
    ('received end entity cert "CN=h2"', None),
    ('no issuer certificate found for "CN=h2"', Cause.CERTIFICATE),
    ('  issuer is "CN=other CA"', Cause.CERTIFICATE),
    ("tried 1 shared key for '10.77.0.2' - '10.77.0.1', but MAC mismatched",
     Cause.AUTHENTICATION),
    ("no shared key found for '10.77.0.1' - '10.77.0.2'", Cause.AUTHENTICATION),
    ("no private key found for 'h1'", Cause.AUTHENTICATION),
    ("no matching peer config found", Cause.AUTHENTICATION),
    ("constraint check failed: identity 'h2' required ", Cause.AUTHENTICATION),
    ("subject certificate invalid (valid from Nov 17 11:11:31 2026 to Nov 26 11:11:31 2026)",
     Cause.CERTIFICATE),
    ("certificate was revoked on Nov 17 11:11:31 UTC 2026, reason: key compromise",
     Cause.CERTIFICATE),
    ("no trusted ECDSA public key found for 'h2'", Cause.AUTHENTICATION),
    ("received AUTHENTICATION_FAILED notify error", Cause.AUTHENTICATION),
    ("received NO_PROPOSAL_CHOSEN notify error", Cause.PROPOSAL),
    ("received proposals unacceptable", Cause.PROPOSAL),
    ("no acceptable proposal found", Cause.PROPOSAL),
    ("traffic selectors 10.0.0.2/32[gre] === 10.0.0.1/32[gre] unacceptable", Cause.SELECTORS),
    ("no acceptable traffic selectors found", Cause.SELECTORS),
    ("unable to install inbound and outbound IPsec SA (SAD) in kernel", Cause.KERNEL),
    ("unable to install IPsec policies (SPD) in kernel", Cause.KERNEL),
    ("received NO_PROPOSAL_CHOSEN notify, no CHILD_SA built", Cause.NEGOTIATION),
    ("generating IKE_AUTH response 1 [ N(NO_PROP) ]", Cause.KERNEL),  # 6.0 (ENC)
    ("parsed IKE_AUTH response 1 [ N(NO_PROP) ]", Cause.NEGOTIATION),  # 6.0 (ENC)
    ("IDr payload missing", Cause.NEGOTIATION),
    ("peer not responding, trying again (2/0)", Cause.UNREACHABLE),
    ("establishing IKE_SA failed, peer not responding", Cause.UNREACHABLE),
    ("giving up after 5 retransmits", Cause.UNREACHABLE),
    ("failed to establish CHILD_SA, keeping IKE_SA", Cause.NEGOTIATION),
    ("received INVALID_SYNTAX notify error", Cause.NEGOTIATION),
]  # fmt: skip


def test_every_pattern_has_a_sample_that_it_is_the_first_match_for() -> None:
    """The table is small and each entry is reachable: its sample message is matched by it
    and by no earlier pattern, with the cause it declares."""
    assert len(SAMPLES) == len(LOG_PATTERNS)
    for pattern, (message, cause) in zip(LOG_PATTERNS, SAMPLES, strict=True):
        first = next(p for p in LOG_PATTERNS if p.regex.search(message))
        assert first is pattern, message
        assert pattern.cause is cause, message
        if cause is not None:
            assert pattern.reason and pattern.scope is not Scope.CONTEXT


@pytest.mark.parametrize("message,cause", [s for s in SAMPLES if s[1] is not None])
def test_every_cause_pattern_yields_a_formatted_reason(message: str, cause: Cause) -> None:
    """Each reason formats completely (no braces left), and an IKE failure is the connection's
    failure while a CHILD one is its child failure."""
    tracker = Tracker()
    feed(tracker, "log", log("initiating IKE_SA ovs-10.77.0.2[1] to 10.77.0.2"))
    feed(tracker, "log", log(message))
    outcome = tracker.outcomes()[H1_CONN]
    found = outcome.failure or outcome.child_failure
    assert found is not None and found.cause is cause
    assert "{" not in found.reason and "}" not in found.reason


def test_messages_about_other_ike_sas_or_none_or_from_chatty_groups_are_ignored() -> None:
    tracker = Tracker()
    feed(tracker, "log", {**log("received AUTHENTICATION_FAILED notify error"), "group": "NET"})
    feed(tracker, "log", log("received AUTHENTICATION_FAILED notify error", ike="office-vpn"))
    feed(tracker, "log", log("received AUTHENTICATION_FAILED notify error", ike=None, uid=None))
    feed(tracker, "log", log("added vici connection: ovs-10.77.0.2", ike=None, uid=None))
    assert tracker.outcomes() == {}


def test_failed_candidate_before_success_is_not_a_failure() -> None:
    """charon logs a failed candidate key before trying the next one; once the IKE_SA is
    established, such IKE-level messages are not failures, but a lost peer still is."""
    tracker = Tracker()
    feed(tracker, "ike-updown", {"up": "yes", H1_CONN: ike_sa(3)})
    feed(tracker, "log", log("no trusted RSA public key found for 'h2'", uid=3))
    assert tracker.outcomes()[H1_CONN].failure is None
    feed(tracker, "log", log("giving up after 5 retransmits", uid=3))
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and failure.cause is Cause.UNREACHABLE


def test_up_clears_failures_and_priority_keeps_the_specific_reason() -> None:
    tracker = Tracker()
    feed(tracker, "log", log("tried 1 shared key for 'a' - 'b', but MAC mismatched", uid=1))
    feed(tracker, "log", log("received INVALID_SYNTAX notify error", uid=1))  # less specific
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and "pre-shared key" in failure.reason
    feed(tracker, "ike-updown", {H1_CONN: ike_sa(2, "CONNECTING")})  # a later attempt fails
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and failure.ike_id == 2 and failure.cause is Cause.NEGOTIATION
    feed(tracker, "ike-updown", {"up": "yes", H1_CONN: ike_sa(3)})
    assert tracker.outcomes()[H1_CONN].failure is None


def test_forget_and_reset_and_bounded_context() -> None:
    tracker = Tracker(max_attempts=4)
    for uid in range(1, 20):
        feed(tracker, "log", log("initiating IKE_SA ovs-10.77.0.2[1] to 10.77.0.2", uid=uid))
    assert len(tracker._attempts) == 4
    feed(tracker, "log", log("no acceptable proposal found", uid=19))
    assert tracker.outcomes()[H1_CONN].failure is not None
    tracker.forget(H1_CONN)
    assert H1_CONN not in tracker.outcomes()
    feed(tracker, "log", log("no acceptable proposal found", uid=19))
    tracker.reset()
    assert tracker.outcomes() == {} and not tracker._attempts


def test_alerts_of_strongswan_6_classify_without_log_messages() -> None:
    tracker = Tracker()
    sa = ike_sa(5, "CONNECTING", **{"remote-id": "h2"})
    feed(tracker, "alert", {"type": "peer-auth-failed", "ike-sa": {H1_CONN: sa}})
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and failure.cause is Cause.AUTHENTICATION
    assert "'h2'" in failure.reason
    feed(tracker, "alert", {"type": "install-child-sa-failed", "ike-sa": {H1_CONN: ike_sa(6)}})
    child = tracker.outcomes()[H1_CONN].child_failure
    assert child is not None and child.reason.startswith("kernel refused the SA")
    feed(tracker, "alert", {"type": "shutdown-signal"})  # no IKE_SA, not a tunnel's cause
    feed(tracker, "alert", {"type": "cert-expired", "ike-sa": {"office-vpn": ike_sa(7)}})
    assert set(tracker.outcomes()) == {H1_CONN}
    for template in (t for _, _, t in ALERTS.values()):
        assert template.count("{") == template.count("}")


def test_rekey_events_count_and_only_sa_events_ask_for_a_listing() -> None:
    tracker = Tracker()
    assert feed(tracker, "ike-rekey", {H1_CONN: {"old": ike_sa(1), "new": ike_sa(2)}})
    assert feed(tracker, "child-rekey", {H1_CONN: {**ike_sa(2), "child-sas": {"ovs-t0": {}}}})
    assert not feed(tracker, "log", log("no acceptable proposal found"))
    assert not feed(tracker, "ike-updown", {"up": "yes", "office-vpn": ike_sa(9)})
    outcome = tracker.outcomes()[H1_CONN]
    assert (outcome.ike_rekeys, outcome.child_rekeys) == (1, 1)


# -- SAs -----------------------------------------------------------------------------------------


def listing(*sas: tuple[str, dict[str, Any]]) -> dict[str, tuple[IkeSa, ...]]:
    return parse_sas([{name: sa} for name, sa in sas])


def test_parse_sas_keeps_only_ours_and_survives_garbage() -> None:
    sas = listing(
        (H1_CONN, {**ike_sa(1), "established": "12", "child-sas": {
            "ovs-t0-2": child_sa("ovs-t0", 2)}}),
        ("office-vpn", ike_sa(3)),
        ("ovs-10.77.0.3", {"uniqueid": "x", "state": 7, "child-sas": ["junk"]}),
    )  # fmt: skip
    assert set(sas) == {H1_CONN, "ovs-10.77.0.3"}
    ike = sas[H1_CONN][0]
    assert (ike.uniqueid, ike.established, ike.remote_id) == (1, 12, "10.77.0.2")
    child = ike.children[0]
    assert (child.spi_in, child.bytes_out, child.packets_out, child.rekey_time) == (
        "c0671655", 240, 2, 3000)  # fmt: skip
    assert sas["ovs-10.77.0.3"][0].uniqueid == 0 and sas["ovs-10.77.0.3"][0].children == ()


def test_current_ike_prefers_the_newest_established_and_ignores_deleting() -> None:
    sas = listing((H1_CONN, ike_sa(1)), (H1_CONN, ike_sa(2, "CONNECTING")),
                  (H1_CONN, ike_sa(3, "DELETING")))  # fmt: skip
    current = current_ike(sas[H1_CONN])
    assert current is not None and current.uniqueid == 1
    assert current_ike(listing((H1_CONN, ike_sa(3, "DELETING")))[H1_CONN]) is None


def test_events_update_the_snapshot_until_a_listing_agrees() -> None:
    """ike-updown adds or removes the IKE_SA at once; a noblock listing that does not show it
    yet (charon was still busy with it) does not undo that, and says to look again."""
    sas, expected = fold_event({}, "ike-updown", {"up": "yes", H1_CONN: ike_sa(4)})
    assert [sa.uniqueid for sa in sas[H1_CONN]] == [4]
    assert expected == {(H1_CONN, 4): True}
    sas, unmet = merge_listing({}, sas, expected)
    assert [sa.uniqueid for sa in sas[H1_CONN]] == [4] and unmet == expected
    sas, unmet = merge_listing(listing((H1_CONN, ike_sa(4))), sas, unmet)
    assert unmet == {}
    body = {"up": "yes", H1_CONN: {**ike_sa(4), "child-sas": {"x": child_sa("ovs-t0", 5)}}}
    sas, _ = fold_event(sas, "child-updown", body)
    assert [c.name for c in sas[H1_CONN][0].children] == ["ovs-t0"]
    sas, _ = fold_event(sas, "child-updown", {H1_CONN: body[H1_CONN]})
    assert sas[H1_CONN][0].children == ()
    sas, expected = fold_event(sas, "ike-updown", {H1_CONN: ike_sa(4, "DELETING")})
    assert sas == {} and expected == {(H1_CONN, 4): False}
    sas, unmet = merge_listing(listing((H1_CONN, ike_sa(4))), {}, expected)
    assert sas == {} and unmet == expected


def test_rekeys_move_children_to_the_new_sa() -> None:
    body = {"up": "yes", H1_CONN: {**ike_sa(1), "child-sas": {"x": child_sa("ovs-t0", 2)}}}
    sas, _ = fold_event({}, "child-updown", body)
    sas, expected = fold_event(sas, "ike-rekey", {H1_CONN: {"old": ike_sa(1),
                                                               "new": ike_sa(7)}})  # fmt: skip
    assert [(sa.uniqueid, [c.uniqueid for c in sa.children]) for sa in sas[H1_CONN]] == [(7, [2])]
    assert expected == {(H1_CONN, 1): False, (H1_CONN, 7): True}
    pair = {"old": child_sa("ovs-t0", 2), "new": child_sa("ovs-t0", 8)}
    sas, _ = fold_event(sas, "child-rekey", {H1_CONN: {**ike_sa(7), "child-sas": {"x": pair}}})
    assert [c.uniqueid for c in sas[H1_CONN][0].children] == [8]


# -- the fold ------------------------------------------------------------------------------------

ROWS = (
    InterfaceRow("g0", "gre", {"remote_ip": "10.77.0.2", "psk": "Zq9PSK-status"}),
    InterfaceRow("v0", "vxlan", {"remote_ip": "10.77.0.2", "psk": "Zq9PSK-status"}),
    InterfaceRow("bad", "gre", {"psk": "Zq9PSK-status"}),
)
CONFIG = parse_config(Snapshot(ROWS, {}))
DESIRED = plan(CONFIG)


def states(view: View) -> dict[str, tuple[State, str]]:
    return {name: (s.state, s.reason) for name, s in fold(view).items()}


def test_invalid_refused_unreachable_and_not_loaded() -> None:
    loaded = frozenset(DESIRED.conns)
    result = fold(View(DESIRED, loaded))
    assert result["bad"].state is State.INVALID and result["bad"].reason.startswith("remote_ip")
    assert result["bad"].cause is Cause.CONFIG
    refused = fold(View(DESIRED, loaded, refusals={H1_CONN: "charon refused load-conn: x"}))
    assert refused["g0"].state is State.FAILED and refused["g0"].cause is Cause.CHARON
    down = fold(View(DESIRED, loaded, charon_error="connection refused"))
    assert down["v0"].reason == "charon unreachable: connection refused"
    assert fold(View(DESIRED))["g0"].reason == "not loaded into charon yet"


def test_reasons_name_the_ike_daemon_in_use() -> None:
    """With --ike-daemon=libreswan the reasons say pluto where charon's say charon."""
    loaded = frozenset(DESIRED.conns)
    down = fold(View(DESIRED, loaded, charon_error="no control socket", ike_daemon="pluto"))
    assert down["v0"].reason == "pluto unreachable: no control socket"
    assert fold(View(DESIRED, ike_daemon="pluto"))["g0"].reason == "not loaded into pluto yet"
    configured = fold(View(DESIRED, loaded, ike_daemon="pluto"))["g0"].reason
    assert configured.startswith("loaded into pluto, trap policies in place")


def test_configured_connecting_failed_ike_up_and_up() -> None:
    loaded = frozenset(DESIRED.conns)
    assert fold(View(DESIRED, loaded))["g0"].state is State.CONFIGURED
    connecting = listing((H1_CONN, ike_sa(2, "CONNECTING")))
    result = fold(View(DESIRED, loaded, sas=connecting))
    assert result["g0"].state is State.CONNECTING
    unreachable = Outcome(Cause.UNREACHABLE, "peer 10.77.0.2 unreachable", 2, 3)
    outcomes = {H1_CONN: ConnOutcome(failure=unreachable)}
    result = fold(View(DESIRED, loaded, sas=connecting, outcomes=outcomes))
    assert (result["g0"].state, result["g0"].cause) == (State.FAILED, Cause.UNREACHABLE)
    newer = listing((H1_CONN, ike_sa(3, "CONNECTING")))
    result = fold(View(DESIRED, loaded, sas=newer, outcomes=outcomes))
    assert result["g0"].state is State.CONNECTING
    assert "previous attempt failed" in result["g0"].reason
    assert fold(View(DESIRED, loaded, outcomes=outcomes))["g0"].state is State.FAILED

    children = {"a": child_sa("ovs-g0", 4), "b": child_sa("ovs-v0-out", 5)}
    up = listing((H1_CONN, {**ike_sa(3), "child-sas": children}))
    result = fold(View(DESIRED, loaded, sas=up))
    assert result["g0"].state is State.UP and result["g0"].reason == ""
    assert [c.name for c in result["g0"].child_sas] == ["ovs-g0"]
    assert result["v0"].state is State.IKE_UP
    assert "ovs-v0-in not installed (the other direction is)" in result["v0"].reason
    refused = Outcome(Cause.KERNEL, "kernel refused the SA: x", 3, 4)
    result = fold(View(DESIRED, loaded, sas=up, outcomes={H1_CONN: ConnOutcome(
        child_failure=refused)}))  # fmt: skip
    assert (result["v0"].state, result["v0"].reason) == (State.IKE_UP, refused.reason)
    stale = Outcome(Cause.KERNEL, "kernel refused the SA: x", 1, 4)  # of an older IKE_SA
    result = fold(View(DESIRED, loaded, sas=up, outcomes={H1_CONN: ConnOutcome(
        child_failure=stale)}))  # fmt: skip
    assert result["v0"].reason != stale.reason


def test_identities_and_selectors_come_from_the_loaded_connection() -> None:
    status = fold(View(DESIRED, frozenset(DESIRED.conns)))["v0"]
    assert (status.auth, status.local_id, status.remote_id) == (AuthClass.PSK, "", "10.77.0.2")
    port, udp = TrafficSelector(17, 4789), TrafficSelector(17)
    assert [(s.child, s.local_ts, s.remote_ts) for s in status.selectors] == [
        ("ovs-v0-in", port, udp),
        ("ovs-v0-out", udp, port),
    ]
    assert (port.vici, udp.vici) == ("dynamic[17/4789]", "dynamic[17]")


def test_every_state_but_up_has_a_reason() -> None:
    loaded = frozenset(DESIRED.conns)
    views = [View(DESIRED), View(DESIRED, loaded), View(DESIRED, loaded, charon_error="x"),
             View(DESIRED, loaded, sas=listing((H1_CONN, ike_sa(1, "CONNECTING")))),
             View(DESIRED, loaded, sas=listing((H1_CONN, ike_sa(1))))]  # fmt: skip
    for view in views:
        for status in fold(view).values():
            assert (status.state is State.UP) == (status.reason == ""), status


def test_protection_counts_per_tunnel() -> None:
    config = parse_config(Snapshot(ROWS, {"ipsec_skb_mark": "1/1"}))
    explained = explain_protection(config)
    g0 = {spec for spec, why in explained.items() if PolicyReason(Purpose.TUNNEL, "g0") in why}
    skb = {spec for spec, why in explained.items() if SKB_MARK_REASON in why}
    result = protection_by_tunnel(explained, frozenset(g0 | skb), ["g0", "v0", "bad"])
    assert result["g0"] == Protection((len(g0), len(g0)), (len(skb), len(skb)))
    assert result["g0"].active and len(g0) >= 2
    assert result["v0"].fail_closed[0] == 0 and not result["v0"].active
    assert result["bad"].fail_closed == (0, 0)  # no remote_ip: nothing known to block
    open_config = parse_config(Snapshot(ROWS, {"ipsec_fail_open": "true"}))
    result = protection_by_tunnel(explain_protection(open_config), frozenset(), ["g0"], True)
    assert result["g0"] == Protection(None, None) and not result["g0"].active


def test_outcomes_mapping_is_read_only() -> None:
    tracker = Tracker()
    outcomes: Any = tracker.outcomes()
    feed(tracker, "log", log("no acceptable proposal found"))
    assert set(outcomes) == {H1_CONN}
    with pytest.raises(TypeError):
        outcomes[H1_CONN] = ConnOutcome()


def test_an_sa_event_leaves_the_other_connections_as_they_were() -> None:
    one, other = "ovs-10.77.1.1", "ovs-10.77.1.2"
    sas, _ = fold_event({}, "ike-updown", {"up": "yes", other: ike_sa(7)})
    after, _ = fold_event(sas, "ike-updown", {"up": "yes", one: ike_sa(8)})
    assert after[other] is sas[other] and [s.uniqueid for s in after[one]] == [8]
    gone, _ = fold_event(after, "ike-updown", {one: ike_sa(8)})
    assert set(gone) == {other} and gone[other] is sas[other]


def _memo_views() -> tuple[Any, list[View]]:
    rows = tuple(
        InterfaceRow(f"t{i}", "gre", {"remote_ip": f"10.77.1.{i + 1}", "psk": "Zq9PSK-memo"})
        for i in range(4)
    )
    desired = plan(parse_config(Snapshot(rows, {})))
    one, other = "ovs-10.77.1.1", "ovs-10.77.1.2"
    body = {"up": "yes", one: {**ike_sa(1), "child-sas": {"x": child_sa("ovs-t0", 2)}}}
    sas, _ = fold_event({}, "child-updown", body)
    loaded = frozenset(desired.conns)
    return desired, [
        View(desired),
        View(desired, loaded),
        View(desired, loaded, sas=sas),
        View(desired, loaded, sas=sas, refusals={other: "refused: x"}),
        View(desired, loaded, sas=sas, charon_error="gone"),
        View(desired, loaded, sas=sas),
    ]


def _moved(before: View, after: View) -> set[str]:
    """The connections whose inputs differ between two views (what the daemon tracks)."""
    names = set(before.desired.conns) | set(after.desired.conns)
    return {
        c
        for c in names
        if before.desired.conns.get(c) != after.desired.conns.get(c)
        or (c in before.loaded) != (c in after.loaded)
        or before.refusals.get(c) != after.refusals.get(c)
        or before.charon_error != after.charon_error
        or before.sas.get(c) != after.sas.get(c)
        or before.outcomes.get(c) != after.outcomes.get(c)
    }


def _keys(view: View) -> dict[str, StateKey]:
    return {name: state_key(status) for name, status in fold(view).items()}


def test_status_book_refolds_the_named_connections_only_and_reports_what_changed() -> None:
    desired, views = _memo_views()
    book = StatusBook()
    first = book.refold(views[0])
    assert set(first) == {"t0", "t1", "t2", "t3"} and all(b is None for b, _ in first.values())
    previous = views[0]
    for view in views[1:]:
        before = book.states()
        changes = book.refold(view, _moved(previous, view))
        after = book.states()
        assert after == _keys(view)
        assert changes == {n: (before.get(n), k) for n, k in after.items() if before.get(n) != k}
        previous = view
    # Refolding the same view changes nothing; moving one connection's SAs changes that
    # connection's tunnels only, even when every connection is named.
    assert book.refold(views[-1], set(desired.conns)) == {}
    moved = View(desired, frozenset(desired.conns), sas={})
    changes = book.refold(moved, _moved(views[-1], moved))
    assert set(changes) == {"t0"}
    assert changes["t0"][0][0] is State.UP and changes["t0"][1][0] is State.CONFIGURED


def _desired_of(*rows: tuple[str, str | None]) -> Any:
    return plan(parse_config(Snapshot(tuple(
        InterfaceRow(name, "gre", {"psk": "Zq9PSK-move"} | ({"remote_ip": ip} if ip else {}))
        for name, ip in rows
    ), {})))  # fmt: skip


def test_status_book_follows_ports_between_connections_and_into_invalid() -> None:
    first = _desired_of(("a", "10.9.0.1"), ("b", "10.9.0.2"))
    shared = _desired_of(("a", "10.9.0.1"), ("b", "10.9.0.1"))
    # b moves to a's peer: both connections are named, in either order.
    for order in (["ovs-10.9.0.1", "ovs-10.9.0.2"], ["ovs-10.9.0.2", "ovs-10.9.0.1"]):
        book = StatusBook()
        book.refold(View(first, frozenset(first.conns)))
        book.refold(View(shared, frozenset(shared.conns)), order)
        assert book.states() == _keys(View(shared, frozenset(shared.conns)))
    # Then b loses its remote_ip (invalid: its connection is named), then it is deleted.
    broken = _desired_of(("a", "10.9.0.1"), ("b", None))
    changes = book.refold(View(broken, frozenset(broken.conns)), ["ovs-10.9.0.1"])
    assert changes["b"][1] is not None and changes["b"][1][0] is State.INVALID
    gone = _desired_of(("a", "10.9.0.1"))
    changes = book.refold(View(gone, frozenset(gone.conns)), [])
    assert set(changes) == {"b"} and changes["b"][1] is None
    assert set(book.states()) == {"a"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12))
def test_status_book_equals_a_fresh_fold_after_any_sequence(steps: list[int]) -> None:
    _, views = _memo_views()
    book = StatusBook()
    previous: View | None = None
    for step in steps:
        view = views[step]
        book.refold(view, None if previous is None else _moved(previous, view))
        assert book.states() == _keys(view)
        assert book.all_up() == _all_up(_keys(view))
        previous = view


def _all_up(keys: dict[str, StateKey]) -> int:
    return len(keys) if keys and all(key[0] is State.UP for key in keys.values()) else 0


def test_status_book_counts_all_up_without_a_pass_over_every_port() -> None:
    desired = _desired_of(("a", "10.9.0.1"))
    up = listing(("ovs-10.9.0.1", {**ike_sa(1), "child-sas": {"x": child_sa("ovs-a", 2)}}))
    loaded = frozenset(desired.conns)
    book = StatusBook()
    assert book.all_up() == 0  # no port at all
    book.refold(View(desired, loaded))
    assert book.all_up() == 0
    book.refold(View(desired, loaded, sas=up), ["ovs-10.9.0.1"])
    assert book.all_up() == 1
    both = _desired_of(("a", "10.9.0.1"), ("b", None))  # b invalid: not up
    book.refold(View(both, frozenset(both.conns), sas=up), [])
    assert book.all_up() == 0
    book.refold(View(desired, loaded, sas=up), [])  # b deleted
    assert book.all_up() == 1


def test_dispatch_feeds_the_tracker_and_the_sa_table_from_one_parse() -> None:
    tracker = Tracker()
    sas, expected, conns = dispatch("ike-updown", {"up": "yes", H1_CONN: ike_sa(4)}, tracker, {})
    assert [sa.uniqueid for sa in sas[H1_CONN]] == [4] and expected == {(H1_CONN, 4): True}
    assert conns == (H1_CONN,) and tracker.touched() == {H1_CONN}
    same, expected, conns = dispatch("log", log("no acceptable proposal found"), tracker, sas)
    assert same is sas and expected == {} and conns == ()
    foreign = {"up": "yes", "office-vpn": ike_sa(9)}
    assert dispatch("ike-updown", foreign, tracker, sas) == (sas, {}, ())
    assert dispatch("no-such-event", {}, tracker, sas) == (sas, {}, ())


def test_a_peer_s_identity_is_escaped_and_cut_in_the_reason() -> None:
    """A peer chooses its identity before it is authenticated, and every reason is logged:
    control characters are escaped and a huge identity is cut (issue 15, item 18)."""
    chosen = "h3\x1b[2J" + "x" * 5000

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("h3", chosen)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    tracker = Tracker()
    for name, body in RECORDED["wrongname"]["h1"]:
        uid = body.get("ikesa-uniqueid") or next(
            (sa.get("uniqueid") for sa in body.values() if isinstance(sa, dict)), None
        )
        if uid == "1":
            feed(tracker, name, swap(body))
    failure = tracker.outcomes()[H1_CONN].failure
    assert failure is not None and failure.cause is Cause.AUTHENTICATION
    assert "presented identity 'h3\\x1b[2Jxxx" in failure.reason
    assert "\x1b" not in failure.reason and "x" * 300 not in failure.reason
