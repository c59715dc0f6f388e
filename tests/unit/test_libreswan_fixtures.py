"""The lines by which pluto tells each state of a tunnel, in real outputs of Libreswan 4.10
(tests/unit/data/libreswan/<version>/, recorded by record.py there against our strongSwan side on
a kernel without ESP): the table a pluto status parser needs. Each scenario's file holds
`whack --showstates`, `--trafficstatus`, `--briefstatus`, `--status` and the log lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "libreswan"
VERSIONS = sorted(p.name for p in DATA.iterdir() if p.is_dir())

# scenario -> (pattern in `whack --showstates` or None for "no state at all", patterns in the log)
TELLING_LINES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    # Loaded and routed, never negotiated: no state; --status says the trap is in.
    "routed-idle": (None, ()),
    "ike-up-child-refused": (
        r'^000 #\d+: "ovs-[^"]+":500 STATE_V2_ESTABLISHED_IKE_SA \(established IKE SA\);',
        (
            r"initiator established IKE SA; authenticated peer using authby=secret",
            r"#\d+: IKE_AUTH response rejected Child SA with NO_PROPOSAL_CHOSEN",
        ),
    ),
    "responder-child-refused": (
        r"STATE_V2_ESTABLISHED_IKE_SA \(established IKE SA\)",
        (
            r"responder established IKE SA; authenticated peer using authby=secret",
            r"ERROR: \"[^\"]+\" #\d+: netlink response for Add SA esp\.\w+@[\d.]+: "
            r"Function not implemented \(errno 38\)",
        ),
    ),
    "auth-failed": (
        None,
        (r"#\d+: IKE SA authentication request rejected by peer: AUTHENTICATION_FAILED",),
    ),
    # pluto 4.10 drops charon's NO_PROPOSAL_CHOSEN answer to IKE_SA_INIT and keeps retransmitting:
    # only this log line tells it from an unreachable peer.
    "no-proposal-chosen": (
        r"STATE_V2_PARENT_I1 \(sent IKE_SA_INIT request\)",
        (
            r"dropping unexpected IKE_SA_INIT message containing NO_PROPOSAL_CHOSEN "
            r"notification",
        ),
    ),
    "peer-unreachable-retransmitting": (
        r"STATE_V2_PARENT_I1 \(sent IKE_SA_INIT request\); RETRANSMIT in",
        (r"STATE_V2_PARENT_I1: retransmission; will wait [\d.]+ seconds for response",),
    ),
    "peer-unreachable-gave-up": (
        None,
        (
            r"STATE_V2_PARENT_I1: \d+ second timeout exceeded after \d+ retransmits\.  "
            r"No response \(or no acceptable response\) to our first IKEv2 message",
        ),
    ),
}


def sections(text: str) -> dict[str, str]:
    """`$ whack --showstates` etc. -> the output under that header."""
    parts = re.split(r"^\$ (.+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", sorted(TELLING_LINES))
def test_each_state_has_its_telling_lines(version: str, scenario: str) -> None:
    found = sections((DATA / version / f"{scenario}.txt").read_text())
    state_pattern, log_patterns = TELLING_LINES[scenario]
    states = found["whack --showstates"]
    if state_pattern is None:
        assert "STATE_" not in states
    else:
        assert re.search(state_pattern, states, flags=re.M), states
    for pattern in log_patterns:
        assert re.search(pattern, found["pluto log"]), pattern
    # No CHILD SA ever installs on this kernel: traffic status stays empty.
    assert found["whack --trafficstatus"].strip() == ""


@pytest.mark.parametrize("version", VERSIONS)
def test_status_says_whether_the_trap_is_in(version: str) -> None:
    status = sections((DATA / version / "routed-idle.txt").read_text())["whack --status"]
    assert re.search(r'^000 "ovs-[^"]+": .*; prospective erouted; eroute owner: #0$', status, re.M)
    assert "Total IPsec connections: loaded 1, active 0" in status


@pytest.mark.parametrize("version", VERSIONS)
def test_brief_status_counts_ike_sas(version: str) -> None:
    brief = sections((DATA / version / "ike-up-child-refused.txt").read_text())
    assert (
        "IKE SAs: total(1), half-open(0), open(0), authenticated(1), anonymous(0)"
        in brief["whack --briefstatus"]
    )
    assert "IPsec SAs: total(0)" in brief["whack --briefstatus"]
