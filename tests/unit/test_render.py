"""ovs-appctl output: the exact empty forms probes compare against, what a tunnel shows (text
and the documented JSON), kernel policies each once under the right peer, and no secret."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovs_ipsec.adapters.xfrm.iproute2 import parse_policies, parse_states
from ovs_ipsec.core import render, render_xfrm
from ovs_ipsec.core.block_policies import PolicyReason, PolicySpec, Purpose, explain_protection
from ovs_ipsec.core.connections import plan
from ovs_ipsec.core.model import Config, InterfaceRow, Snapshot
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.sas import parse_sas
from ovs_ipsec.core.status import Protection, View, fold

PSK = "Zq9PSK-render-secret"
DOC = Path(__file__).resolve().parents[2] / "docs" / "status-json.md"


@dataclass(frozen=True)
class Health:
    """The fields render reads from the daemon's health (plain data, not our code)."""

    charon_reachable: bool = True
    charon_error: str = ""
    ike_daemon: str = "charon"


def test_ipsec_status_json_without_tunnels_is_exactly_empty_object() -> None:
    """`ipsec/status --json` with no tunnels is exactly `{}`: liveness probes compare strings."""
    assert render.to_json(render.ipsec_status_json({})) == "{}"
    assert render.to_json(render.tunnels_json(Config(), {})) == "{}"


def test_text_without_tunnels_says_so() -> None:
    """`tunnels/show` with no IPsec tunnel says `No tunnels configured with IPsec`."""
    assert "No tunnels configured with IPsec" in render.tunnels_text(Config(), {}, Health())


ROWS = (
    InterfaceRow("good", "vxlan", {"remote_ip": "192.0.2.2", "psk": PSK, "dst_port": "4790"}),
    InterfaceRow("bad", "gre", {"remote_ip": "flow", "psk": PSK}),
    InterfaceRow("plain", "gre", {"remote_ip": "192.0.2.9"}),
)
SA = {
    "uniqueid": "3", "state": "ESTABLISHED", "local-host": "192.0.2.1", "local-port": "500",
    "local-id": "192.0.2.1", "remote-host": "192.0.2.2", "remote-port": "4500",
    "remote-id": "192.0.2.2", "initiator": "yes", "nat-remote": "yes", "nat-any": "yes",
    "established": "12", "rekey-time": "13000",
    "child-sas": {"ovs-good-in-4": {
        "name": "ovs-good-in", "uniqueid": "4", "state": "INSTALLED", "mode": "TRANSPORT",
        "protocol": "ESP", "encap": "yes", "spi-in": "c0671655", "spi-out": "cdfed6bc",
        "bytes-in": "1200", "packets-in": "10", "bytes-out": "2400", "packets-out": "20",
        "rekey-time": "3100", "life-time": "3500", "install-time": "12",
        "local-ts": ["192.0.2.1/32[udp/4790]"], "remote-ts": ["192.0.2.2/32[udp]"]}},
}  # fmt: skip


def snapshot_state(with_sas: bool = False) -> tuple[Config, dict[str, Any]]:
    config = parse_config(Snapshot(ROWS, {}))
    desired = plan(config)
    sas = parse_sas([{"ovs-192.0.2.2": SA}]) if with_sas else {}
    return config, fold(View(desired, frozenset(desired.conns), sas=sas))


def test_tunnel_outputs_name_state_reason_and_redact_the_psk() -> None:
    """Each IPsec tunnel shows its state; an invalid one shows the key and reason; the psk is
    shown only as redacted; non-IPsec ports are not listed."""
    config, statuses = snapshot_state()
    text = render.tunnels_text(config, statuses, Health())
    tunnels = json.loads(render.to_json(render.tunnels_json(config, statuses)))
    status = json.loads(render.to_json(render.ipsec_status_json(statuses)))
    assert sorted(tunnels) == sorted(status) == ["bad", "good"]
    assert status["good"]["state"] == "configured" and "trap" in status["good"]["reason"]
    assert status["bad"]["state"] == "invalid"
    assert "remote_ip" in status["bad"]["reason"]
    assert tunnels["good"]["connection"] == "ovs-192.0.2.2"
    assert tunnels["good"]["config"]["psk"] == render.REDACTED
    assert tunnels["good"]["config"]["dst_port"] == 4790
    assert [e["key"] for e in tunnels["bad"]["config"]["errors"]] == ["remote_ip"]
    assert "Interface name: good v1 (CONFIGURED)" in text
    assert "Interface name: bad v1 (INVALID)" in text
    assert "plain" not in text
    for output in (text, json.dumps(tunnels), json.dumps(status)):
        assert PSK not in output


def test_text_reports_unreachable_charon() -> None:
    """When charon cannot be reached, the text output says so and why."""
    config, statuses = snapshot_state()
    text = render.tunnels_text(config, statuses, Health(False, "connection refused"))
    assert "charon unreachable: connection refused" in text


def test_to_json_is_deterministic() -> None:
    """JSON output sorts keys, so equal states render to equal strings."""
    assert render.to_json({"b": 1, "a": {"d": 2, "c": 3}}) == render.to_json(
        {"a": {"c": 3, "d": 2}, "b": 1}
    )


def test_show_with_sas_and_protection_text() -> None:
    """Upstream's labels, identities and selectors, the IKE SA like swanctl prints it (age,
    ends, NAT), each CHILD SA with SPIs, counters and rekey time, and the protection state."""
    config, statuses = snapshot_state(with_sas=True)
    protection = {"good": Protection((1, 2), None), "bad": Protection(None, None)}
    text = render.tunnels_text(config, statuses, Health(), protection)
    assert "Interface name: good v1 (IKE-UP)" in text
    for line in (
        "  Tunnel Type:    vxlan",
        "  Remote IP:      192.0.2.2",
        "  PSK:            <redacted>",
        "  Remote id:      192.0.2.2",
        "  Selectors:      ovs-good-in: udp/4790 === udp",
        "  Selectors:      ovs-good-out: udp === udp/4790",
        "  Protection:     INCOMPLETE (fail-closed 1/2 block policies installed)",
        "IPsec connections that are active:",
    ):
        assert line in text.splitlines(), line
    assert re.search(r"ovs-192\.0\.2\.2\[3\]: ESTABLISHED 12 seconds ago, 192\.0\.2\.1\[192\.0\.2"
                     r"\.1\]\.\.\.192\.0\.2\.2:4500\[192\.0\.2\.2\], initiator, NAT \(remote\)",
                     text)  # fmt: skip
    assert ("ovs-good-in{4}: INSTALLED, TRANSPORT, UDP-encapsulated, ESP SPIs: c0671655_i "
            "cdfed6bc_o, 1200 bytes_i (10 pkts), 2400 bytes_o (20 pkts), rekeying in 51 "
            "minutes") in text  # fmt: skip
    assert "not installed (the other direction is)" in text
    assert "off (ipsec_fail_open=true and no ipsec_skb_mark)" in text


def test_show_json_has_the_documented_shape() -> None:
    """Every key of a tunnels/show entry (and of its IKE and CHILD SA) is in
    docs/status-json.md, and the document lists no key that is not produced."""
    config, statuses = snapshot_state(with_sas=True)
    protection = {"good": Protection((2, 2), (24, 24))}
    kernel = render.Kernel(parse_policies(kernel_policies()[0]), parse_states(STATES))
    data = json.loads(render.to_json(render.tunnels_json(config, statuses, protection, {},
                                                         kernel)))  # fmt: skip
    assert data["good"]["kernel"]["policies"] and data["good"]["kernel"]["security_associations"]
    good = data["good"]
    assert good["ike_sa"]["remote"] == {"host": "192.0.2.2", "port": 4500, "id": "192.0.2.2"}
    assert good["ike_sa"]["nat"] == {"local": False, "remote": True, "any": True}
    assert good["child_sas"][0]["bytes_in"] == 1200 and good["child_sas"][0]["encap"] is True
    assert good["protection"] == {"active": True, "fail_closed": {"installed": 2, "wanted": 2},
                                  "skb_mark": {"installed": 24, "wanted": 24}}  # fmt: skip
    assert good["auth"] == {"mode": "psk", "local_id": None, "remote_id": "192.0.2.2"}
    assert data["bad"]["auth"] is None and data["bad"]["ike_sa"] is None

    # Rows of the key tables: | `key` | type | meaning |
    row = r"^\| `([a-z_]+)` \| (?:string|integer|boolean|object|list)"
    documented = set(re.findall(row, DOC.read_text(), re.MULTILINE))
    produced: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key not in ("good", "bad"):
                    produced.add(key)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(data)
    text_in, explained = kernel_policies()
    walk(render_xfrm.policies_json(parse_policies(text_in), explained))
    walk(render_xfrm.states_json(parse_states(STATES)))
    walk(render.ipsec_status_json(statuses))
    assert produced <= documented, produced - documented
    assert documented <= produced, documented - produced


OTHERS = """\
src 192.0.2.2/32 dst 192.0.2.1/32 proto udp dport 4790
\tdir in priority 366912 ptype main
\ttmpl src 0.0.0.0 dst 0.0.0.0
\t\tproto esp reqid 2 mode transport
src 192.0.2.1/32 dst 192.0.2.2/32 proto udp sport 4790
\tdir out priority 366912 ptype main
\ttmpl src 0.0.0.0 dst 0.0.0.0
\t\tproto esp reqid 2 mode transport
src 0.0.0.0/0 dst 0.0.0.0/0
\tsocket in priority 0 ptype main
src 10.9.9.9/32 dst 0.0.0.0/0 proto gre
\tdir in action block priority 430001 ptype main
"""


def ip_xfrm_text(spec: PolicySpec) -> str:
    """A policy of ours as `ip xfrm policy` prints it."""
    ports = "".join(f" {k} {v}" for k, v in (("sport", spec.sport), ("dport", spec.dport)) if v)
    proto = {47: "gre", 17: "udp"}[spec.proto]
    return (
        f"src {spec.src} dst {spec.dst} proto {proto}{ports}\n"
        f"\tdir {spec.direction} action block priority {spec.priority} ptype main\n"
    )


def kernel_policies() -> tuple[str, dict[PolicySpec, tuple[PolicyReason, ...]]]:
    """The tunnel's outbound blocks are installed, its inbound ones are not; one stale block of
    ours (10.9.9.9) and charon's policies."""
    explained = explain_protection(parse_config(Snapshot(ROWS, {})))
    outbound = [spec for spec, why in explained.items()
                if why == (PolicyReason(Purpose.TUNNEL, "good"),)
                and spec.direction == "out"]  # fmt: skip
    assert outbound
    return "".join(ip_xfrm_text(spec) for spec in outbound) + OTHERS, explained


def test_policies_ours_apart_each_once_inbound_under_its_peer() -> None:
    """Our blocks are listed with purpose and the tunnel they are for; a wanted one that is
    missing says so; one that is ours but no longer wanted says that; charon's are grouped
    under the peer, inbound ones too (by source), each once."""
    text_in, explained = kernel_policies()
    data = render_xfrm.policies_json(parse_policies(text_in), explained)
    good = [p for p in data["protection"] if p["reasons"] == ["tunnel good"]]
    assert {(p["direction"], p["installed"]) for p in good} == {("out", True), ("in", False)}
    assert {p["purpose"] for p in good} == {"fail-closed"}
    stale = [p for p in data["protection"] if not p["wanted"]]
    assert [(p["src"], p["installed"]) for p in stale] == [("10.9.9.9/32", True)]
    assert [(p["peer"], p["direction"]) for p in data["other"]] == [
        ("192.0.2.2", "in"), ("192.0.2.2", "out"), (None, "in")]  # fmt: skip
    text = render_xfrm.policies_text(parse_policies(text_in), explained)
    assert text.count("192.0.2.2/32 -> 192.0.2.1/32") == 1
    assert "MISSING: in  192.0.2.2/32 -> " in text
    assert "[no longer wanted]" in text
    assert "  192.0.2.2:\n    in  192.0.2.2/32 -> 192.0.2.1/32 udp dport 4790: allow" in text


STATES = """\
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0xc0671655 reqid 1 mode transport
\treplay-window 0
\taead rfc4106(gcm(aes)) <redacted> 128
\tenc cbc(aes) 0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
\tsel src 192.0.2.1/32 dst 192.0.2.2/32 proto gre
"""


def test_states_never_show_a_key_and_parse_the_ids() -> None:
    states = parse_states(STATES)
    data = render_xfrm.states_json(states)
    assert data["states"] == [{
        "src": "192.0.2.1", "dst": "192.0.2.2", "proto": "esp", "spi": "0xc0671655",
        "reqid": 1, "mode": "transport", "selector": "src 192.0.2.1/32 dst 192.0.2.2/32 proto gre",
        "text": data["states"][0]["text"]}]  # fmt: skip
    for output in (json.dumps(data), render_xfrm.states_text(states)):
        assert "00112233445566778899" not in output
    assert render_xfrm.states_text(parse_states("")) == "No XFRM states\n"


def test_memory_text() -> None:
    text = render.memory_text(
        {"ports": 3, "conns": 2},
        {"VmRSS": "20000 kB"},
        [("/x/ovs_ipsec/core/connections.py", 2048, 7)],
    )
    assert text.splitlines() == [
        "ports:3 conns:2",
        "VmRSS: 20000 kB",
        "largest Python allocations by file (tracemalloc):",
        "         2.0 KiB        7 blocks  /x/ovs_ipsec/core/connections.py",
    ]
    assert render.memory_text({"ports": 0}, {}, []) == "ports:0\n"


def test_gre_to_an_ipv6_peer_is_shown_with_a_warning() -> None:
    rows = (
        InterfaceRow("g6", "gre", {"remote_ip": "fd00::2", "psk": "Zq9PSK-warn"}),
        InterfaceRow("g4", "gre", {"remote_ip": "10.0.0.2", "psk": "Zq9PSK-warn"}),
        InterfaceRow("n6", "geneve", {"remote_ip": "fd00::3", "psk": "Zq9PSK-warn"}),
    )
    config = parse_config(Snapshot(rows, {}))
    warnings = {name: render.tunnel_config_json(config, name)["warning"] for name in config.tunnels}
    assert warnings["g4"] is None and warnings["n6"] is None
    assert warnings["g6"] is not None and "ip6gre" in warnings["g6"]
    statuses = fold(View(plan(config)))
    text = render.tunnels_text(config, statuses, Health())
    assert text.count("Warning:") == 1
    assert "  Warning:        type=gre to an IPv6 remote_ip carries no traffic" in text
