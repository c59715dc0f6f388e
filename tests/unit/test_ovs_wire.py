"""Blocks follow what Open vSwitch really sends (issue 15, items 2, 6 and 9).

OVS reads `options:dst_port` with `htons(atoi(value))` and unmaps an IPv4-mapped `remote_ip`
before it sends (lib/netdev-vport.c, tnl_port_send); it creates tunnel types IPsec does not
support. Whatever the daemon makes of such a port (a tunnel, or an invalid one with a reason),
its fail-closed blocks cover the packets OVS will send. `remote_name` reaches charon as an FQDN
identity, where `*` is a wildcard: it is refused.
"""

from __future__ import annotations

import pytest

from ovs_ipsec.core.block_policies import FAIL_CLOSED_PRIORITY, explain_protection
from ovs_ipsec.core.model import (
    IPPROTO_GRE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    GlobalConfig,
    InterfaceRow,
    InvalidTunnel,
    Snapshot,
    Tunnel,
)
from ovs_ipsec.core.parse import dst_port_of, ovs_port, parse_config, parse_tunnel

PSK = {"remote_ip": "192.0.2.2", "psk": "swordfish"}
CA = GlobalConfig(
    certificate="/etc/ipsec/host.pem", private_key="/etc/ipsec/host.key", ca_cert="/etc/ca.pem"
)


def blocks(type_: str, options: dict[str, str], other_config: dict[str, str] | None = None):
    """(direction, remote side, proto, dport) of every fail-closed block of one port."""
    config = parse_config(Snapshot((InterfaceRow("t0", type_, options),), other_config or {}))
    found = set()
    for spec in explain_protection(config):
        if spec.priority == FAIL_CLOSED_PRIORITY:
            remote = spec.dst if spec.direction == "out" else spec.src
            found.add((spec.direction, remote, spec.proto, spec.dport))
    return found


def covers(found, remote: str, proto: int, dport: int | None) -> bool:
    return {("out", remote, proto, dport), ("in", remote, proto, dport)} <= found


# -- item 2: IPv4-mapped addresses ------------------------------------------------------------


@pytest.mark.parametrize("type_", ["gre", "vxlan", "geneve"])
def test_ipv4_mapped_remote_ip_is_the_ipv4_address_ovs_sends_to(type_: str) -> None:
    """`::ffff:1.2.3.4` is 1.2.3.4 for charon and the blocks: OVS sends IPv4 there."""
    parsed = parse_tunnel(
        InterfaceRow("t0", type_, {**PSK, "remote_ip": "::ffff:1.2.3.4"}), GlobalConfig()
    )
    assert isinstance(parsed, Tunnel)
    assert parsed.remote_ip == "1.2.3.4" and parsed.family == 4
    found = blocks(type_, {**PSK, "remote_ip": "::ffff:1.2.3.4"})
    assert found and {remote for _, remote, _, _ in found} == {"1.2.3.4/32"}


def test_ipv4_mapped_local_ip_pairs_with_an_ipv4_remote_ip() -> None:
    parsed = parse_tunnel(
        InterfaceRow("t0", "gre", {**PSK, "local_ip": "::ffff:192.0.2.1"}), GlobalConfig()
    )
    assert isinstance(parsed, Tunnel)
    assert parsed.local_ip == "192.0.2.1"


def test_ipv4_mapped_multicast_remote_ip_is_invalid_but_blocked() -> None:
    """OVS checks multicast before it unmaps, so it sends to 224.0.0.1: blocked, though the
    tunnel is invalid."""
    options = {**PSK, "remote_ip": "::ffff:224.0.0.1"}
    parsed = parse_tunnel(InterfaceRow("t0", "gre", options), GlobalConfig())
    assert isinstance(parsed, InvalidTunnel) and parsed.errors[0].key == "remote_ip"
    assert covers(blocks("gre", options), "224.0.0.1/32", IPPROTO_GRE, None)


# -- item 6: the port and protocol OVS uses -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("4790x", 4790),
        ("+4790", 4790),
        ("004790", 4790),
        (" \t4790", 4790),
        ("70000", 4464),
        ("-1", 65535),
        ("99999999999999999999999", 65535),  # strtol saturates at LONG_MAX
        ("-99999999999999999999999", 0),
        ("x4790", 0),
        ("", 0),
    ],
)
def test_ovs_port_is_htons_of_atoi(text: str, port: int) -> None:
    assert ovs_port(text) == port


@pytest.mark.parametrize(
    ("text", "port"),
    [("4790x", 4790), ("+4790", 4790), ("004790", 4790), ("70000", 4464), ("garbage", 4789)],
)
def test_rejected_dst_port_is_blocked_where_ovs_sends(text: str, port: int) -> None:
    """The tunnel stays invalid (reported on dst_port), and its blocks cover the port OVS
    computes from the value, not the default."""
    options = {**PSK, "dst_port": text}
    parsed = parse_tunnel(InterfaceRow("t0", "vxlan", options), GlobalConfig())
    assert isinstance(parsed, InvalidTunnel)
    assert [e.key for e in parsed.errors] == ["dst_port"]
    found = blocks("vxlan", options)
    assert covers(found, "192.0.2.2/32", IPPROTO_UDP, port)
    assert {dport for *_, dport in found} == {port}


def test_skb_mark_ports_follow_ovs_for_a_bad_dst_port() -> None:
    row = InterfaceRow("plain", "vxlan", {"remote_ip": "192.0.2.3", "dst_port": "4790x"})
    assert dst_port_of(row)[0] == 4790
    config = parse_config(Snapshot((row,), {"ipsec_skb_mark": "1/1"}))
    assert 4790 in config.tunnel_ports
    marked = {spec.dport for spec in explain_protection(config)}
    assert 4790 in marked


@pytest.mark.parametrize(
    ("type_", "proto", "port"),
    [
        ("stt", IPPROTO_TCP, 7471),
        ("gtpu", IPPROTO_UDP, 2152),
        ("lisp", IPPROTO_UDP, 4341),
        ("bareudp", IPPROTO_UDP, None),  # no default port: every UDP port to the peer
        ("ip6gre", IPPROTO_GRE, None),
        ("erspan", IPPROTO_GRE, None),
    ],
)
def test_unsupported_types_with_ipsec_options_are_blocked_as_ovs_sends(
    type_: str, proto: int, port: int | None
) -> None:
    found = blocks(type_, dict(PSK))
    assert covers(found, "192.0.2.2/32", proto, port)
    assert {p for _, _, p, _ in found} == {proto}


def test_unsupported_type_blocks_its_own_dst_port() -> None:
    found = blocks("stt", {**PSK, "dst_port": "7000"})
    assert covers(found, "192.0.2.2/32", IPPROTO_TCP, 7000)
    found = blocks("bareudp", {**PSK, "dst_port": "6635x"})
    assert covers(found, "192.0.2.2/32", IPPROTO_UDP, 6635)


def test_a_type_ovs_does_not_know_keeps_the_broad_cover() -> None:
    """OVS creates no tunnel for it (so reads no dst_port); a typo of a tunnel type still gets
    GRE and the IPsec types' default ports."""
    found = blocks("vxlan-typo", {**PSK, "dst_port": "5000"})
    for proto, port in ((IPPROTO_GRE, None), (IPPROTO_UDP, 4789), (IPPROTO_UDP, 6081)):
        assert covers(found, "192.0.2.2/32", proto, port)


@pytest.mark.parametrize(("type_", "proto", "port"), [("gre", IPPROTO_GRE, None),
                                                      ("vxlan", IPPROTO_UDP, 4789)])  # fmt: skip
def test_remote_ip_flow_is_blocked_to_every_address(
    type_: str, proto: int, port: int | None
) -> None:
    """`remote_ip=flow` sends wherever a flow says: its protocol is blocked to and from every
    address (halves, never a key of charon's), both families, unless fail-open."""
    options = {**PSK, "remote_ip": "flow"}
    found = blocks(type_, options)
    for remote in ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"):
        assert covers(found, remote, proto, port)
    assert not blocks(type_, options, {"ipsec_fail_open": "true"})


# -- item 9: wildcards in remote_name ---------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["*", "*.example", "peer*", "a\nb", "peer\x00", "tab\there", "del\x7f", "c1\x85"]
)
def test_remote_name_with_a_wildcard_or_control_character_is_invalid(name: str) -> None:
    parsed = parse_tunnel(
        InterfaceRow("t0", "gre", {"remote_ip": "192.0.2.2", "remote_name": name}), CA
    )
    assert isinstance(parsed, InvalidTunnel)
    assert [e.key for e in parsed.errors] == ["remote_name"]
    assert "wildcard" in parsed.errors[0].reason
    assert parsed.remote_ip == "192.0.2.2"  # still blocked


@pytest.mark.parametrize("name", ["peer", "host-1.example.org", "Peer Name", "пир"])
def test_ordinary_remote_names_stay_valid(name: str) -> None:
    parsed = parse_tunnel(
        InterfaceRow("t0", "gre", {"remote_ip": "192.0.2.2", "remote_name": name}), CA
    )
    assert isinstance(parsed, Tunnel) and parsed.remote_name == name
