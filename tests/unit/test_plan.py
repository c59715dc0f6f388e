"""The translation of parsed tunnels into VICI messages, and the names and ownership rules.

The golden `load-conn` bodies below are compared whole: the full message is the contract with
charon, so any change to it must show up here.

Over 400 lines: the golden load-conn bodies are compared whole, and they are most of it.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
import vici.protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core import naming
from ovs_ipsec.core.connections import ConnSpec, Desired, SharedSpec, plan
from ovs_ipsec.core.model import InterfaceRow, Secret, Snapshot, TunnelType
from ovs_ipsec.core.parse import parse_config

PSK = "correct horse battery staple"


def desired(*rows: tuple[str, str, dict[str, str]], other_config: Any = None) -> Desired:
    snapshot = Snapshot(
        tuple(InterfaceRow(name, type_, options) for name, type_, options in rows),
        other_config or {},
    )
    return plan(parse_config(snapshot))


def psk_tunnel(
    name: str, type_: str, remote_ip: str, psk: str = PSK, **options: str
) -> tuple[str, str, dict[str, str]]:
    return name, type_, {"remote_ip": remote_ip, "psk": psk, **options}


def only_conn(result: Desired) -> ConnSpec:
    assert list(result.invalid) == []
    assert len(result.conns) == 1
    return next(iter(result.conns.values()))


ESP = ["aes256gcm16-modp2048"]


def child(local_ts: str, remote_ts: str) -> dict[str, Any]:
    return {
        "mode": "transport",
        "local_ts": [local_ts],
        "remote_ts": [remote_ts],
        "esp_proposals": ESP,
        "start_action": "trap",
    }


def gre_children(name: str) -> dict[str, Any]:
    return {name: child("dynamic[47]", "dynamic[47]")}


def udp_children(name: str, port: int) -> dict[str, Any]:
    return {
        f"{name}-in": child(f"dynamic[17/{port}]", "dynamic[17]"),
        f"{name}-out": child("dynamic[17]", f"dynamic[17/{port}]"),
    }


def stt_children(name: str, port: int) -> dict[str, Any]:
    """STT is sent to a fixed TCP port from a hashed source port: one child per direction."""
    return {
        f"{name}-in": child(f"dynamic[6/{port}]", "dynamic[6]"),
        f"{name}-out": child("dynamic[6]", f"dynamic[6/{port}]"),
    }


def conn_body(remote_ip: str, local_ip: str | None, children: dict[str, Any]) -> dict[str, Any]:
    local: dict[str, Any] = {"auth": "psk"}
    if local_ip:
        local["id"] = local_ip
    return {
        "version": "2",
        "local_addrs": [local_ip or "%any"],
        "remote_addrs": [remote_ip],
        "proposals": ["aes256gcm16-prfsha256-modp2048"],
        "keyingtries": "0",
        "mobike": "no",
        "local": local,
        "remote": {"auth": "psk", "id": remote_ip},
        "children": children,
    }


# -------------------------------------------------------------------------------------------
# Golden load-conn bodies


GOLDEN = [
    pytest.param(
        psk_tunnel("gre0", "gre", "192.0.2.2"),
        conn_body("192.0.2.2", None, gre_children("ovs-gre0")),
        id="gre-ipv4",
    ),
    pytest.param(
        psk_tunnel("gre0", "gre", "192.0.2.2", local_ip="192.0.2.1"),
        conn_body("192.0.2.2", "192.0.2.1", gre_children("ovs-gre0")),
        id="gre-ipv4-local_ip",
    ),
    pytest.param(
        psk_tunnel("gre6", "gre", "2001:DB8::2"),
        conn_body("2001:db8::2", None, gre_children("ovs-gre6")),
        id="gre-ipv6",
    ),
    pytest.param(
        psk_tunnel("gre6", "gre", "2001:db8::2", local_ip="2001:db8:0::1"),
        conn_body("2001:db8::2", "2001:db8::1", gre_children("ovs-gre6")),
        id="gre-ipv6-local_ip",
    ),
    pytest.param(
        psk_tunnel("gnv0", "geneve", "192.0.2.2"),
        conn_body("192.0.2.2", None, udp_children("ovs-gnv0", 6081)),
        id="geneve-ipv4",
    ),
    pytest.param(
        psk_tunnel("gnv0", "geneve", "2001:db8::2", local_ip="2001:db8::1"),
        conn_body("2001:db8::2", "2001:db8::1", udp_children("ovs-gnv0", 6081)),
        id="geneve-ipv6-local_ip",
    ),
    pytest.param(
        psk_tunnel("vx0", "vxlan", "192.0.2.2", local_ip="192.0.2.1"),
        conn_body("192.0.2.2", "192.0.2.1", udp_children("ovs-vx0", 4789)),
        id="vxlan-ipv4-local_ip",
    ),
    pytest.param(
        psk_tunnel("vx0", "vxlan", "2001:db8::2"),
        conn_body("2001:db8::2", None, udp_children("ovs-vx0", 4789)),
        id="vxlan-ipv6",
    ),
    pytest.param(
        psk_tunnel("vx1", "vxlan", "192.0.2.2", dst_port="8472"),
        conn_body("192.0.2.2", None, udp_children("ovs-vx1", 8472)),
        id="vxlan-custom-dst_port",
    ),
    pytest.param(
        psk_tunnel("gnv1", "geneve", "2001:db8::2", dst_port="7000"),
        conn_body("2001:db8::2", None, udp_children("ovs-gnv1", 7000)),
        id="geneve-ipv6-custom-dst_port",
    ),
    pytest.param(
        psk_tunnel("ip6gre0", "ip6gre", "2001:db8::2"),
        conn_body("2001:db8::2", None, gre_children("ovs-ip6gre0")),
        id="ip6gre",
    ),
    pytest.param(
        psk_tunnel("ip6gre0", "ip6gre", "2001:db8::2", local_ip="2001:db8::1"),
        conn_body("2001:db8::2", "2001:db8::1", gre_children("ovs-ip6gre0")),
        id="ip6gre-local_ip",
    ),
    pytest.param(
        psk_tunnel("stt0", "stt", "192.0.2.2"),
        conn_body("192.0.2.2", None, stt_children("ovs-stt0", 7471)),
        id="stt-ipv4",
    ),
    pytest.param(
        psk_tunnel("stt0", "stt", "2001:db8::2", local_ip="2001:db8::1"),
        conn_body("2001:db8::2", "2001:db8::1", stt_children("ovs-stt0", 7471)),
        id="stt-ipv6-local_ip",
    ),
    pytest.param(
        psk_tunnel("stt1", "stt", "192.0.2.2", dst_port="7500"),
        conn_body("192.0.2.2", None, stt_children("ovs-stt1", 7500)),
        id="stt-custom-dst_port",
    ),
]


@pytest.mark.parametrize(("row", "body"), GOLDEN)
def test_golden_load_conn_body(row: tuple[str, str, dict[str, str]], body: dict[str, Any]) -> None:
    """Each tunnel type, address family and local_ip choice produces exactly this `load-conn`
    body: IKEv2 with upstream-compatible proposals, PSK identities by address, transport mode,
    trap children; GRE as protocol 47 both ways, UDP tunnels as one child per direction of the
    flow to the (custom or default) destination port."""
    result = desired(row)
    conn = only_conn(result)
    remote_ip = body["remote_addrs"][0]
    assert conn.name == f"ovs-{remote_ip}"
    assert conn.remote_ip == remote_ip
    assert conn.tunnels == (row[0],)
    assert conn.body == body


@pytest.mark.parametrize(("row", "body"), GOLDEN)
def test_golden_load_shared(row: tuple[str, str, dict[str, str]], body: dict[str, Any]) -> None:
    """Each PSK tunnel has one `load-shared` secret: id derived from the peer, owner the peer's
    identity (its address), tied to the peer's connection, holding the psk."""
    result = desired(row)
    remote_ip = body["remote_addrs"][0]
    assert dict(result.shared) == {
        f"ovs-psk-{remote_ip}": SharedSpec(
            id=f"ovs-psk-{remote_ip}",
            secret=Secret(PSK),
            owners=(remote_ip,),
            conn=f"ovs-{remote_ip}",
        )
    }


@pytest.mark.parametrize(("row", "body"), GOLDEN)
def test_load_conn_message_encodes_with_vici(
    row: tuple[str, str, dict[str, str]], body: dict[str, Any]
) -> None:
    """The planned message is something the vici codec can put on the wire and read back."""
    conn = only_conn(desired(row))
    wire = vici.protocol.Message.serialize({conn.name: conn.body})
    decoded = vici.protocol.Message.deserialize(vici.protocol.FiniteStream(wire))
    assert list(decoded) == [conn.name]


# -------------------------------------------------------------------------------------------
# Grouping by peer


def test_tunnels_to_one_peer_share_one_connection() -> None:
    """GRE, Geneve and VXLAN ports to one peer become ONE connection carrying every child (charon
    would refuse the second connection's CHILD_SAs), with one shared secret."""
    result = desired(
        psk_tunnel("vx0", "vxlan", "192.0.2.2", local_ip="192.0.2.1"),
        psk_tunnel("gre0", "gre", "192.0.2.2", local_ip="192.0.2.1"),
        psk_tunnel("gnv0", "geneve", "192.0.2.2", local_ip="192.0.2.1", dst_port="7000"),
        psk_tunnel("far", "gre", "198.51.100.7"),
    )
    assert result.invalid == {}
    assert sorted(result.conns) == ["ovs-192.0.2.2", "ovs-198.51.100.7"]
    conn = result.conns["ovs-192.0.2.2"]
    assert conn.tunnels == ("gnv0", "gre0", "vx0")
    assert conn.body == conn_body(
        "192.0.2.2",
        "192.0.2.1",
        {
            **udp_children("ovs-gnv0", 7000),
            **gre_children("ovs-gre0"),
            **udp_children("ovs-vx0", 4789),
        },
    )
    assert sorted(result.shared) == ["ovs-psk-192.0.2.2", "ovs-psk-198.51.100.7"]
    assert result.shared["ovs-psk-192.0.2.2"].conn == "ovs-192.0.2.2"


@pytest.mark.parametrize(
    ("first", "second", "keys"),
    [
        ({"psk": "Zq-first-psk"}, {"psk": "Zq-second-psk"}, ["psk"]),
        ({"local_ip": "192.0.2.1"}, {"local_ip": "192.0.2.11"}, ["local_ip"]),
        ({}, {"local_ip": "192.0.2.11"}, ["local_ip"]),
        (
            {"psk": "Zq-first-psk"},
            {"psk": "Zq-second-psk", "local_ip": "192.0.2.11"},
            ["local_ip", "psk"],
        ),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_conflicting_tunnels_to_one_peer(
    first: dict[str, str], second: dict[str, str], keys: list[str], reverse: bool
) -> None:
    """Two tunnels to one peer that disagree on what their shared IKE_SA needs: the later by
    name ("b") is invalid with one reason per differing key that names the other tunnel,
    whatever the snapshot order; it keeps its type, remote_ip and dst_port; the earlier ("a")
    is loaded alone; no reason shows a psk."""
    a = ("a", "gre", {"remote_ip": "192.0.2.2", "psk": PSK, **first})
    b = ("b", "vxlan", {"remote_ip": "192.0.2.2", "psk": PSK, "dst_port": "4790", **second})
    result = desired(*((b, a) if reverse else (a, b)))
    assert list(result.conns) == ["ovs-192.0.2.2"]
    assert result.conns["ovs-192.0.2.2"].tunnels == ("a",)
    assert list(result.conns["ovs-192.0.2.2"].body["children"]) == ["ovs-a"]
    assert list(result.invalid) == ["b"]
    bad = result.invalid["b"]
    assert sorted(e.key for e in bad.errors) == keys
    for error in bad.errors:
        assert "'a'" in error.reason
    assert (bad.type, bad.remote_ip, bad.dst_port) == (TunnelType.VXLAN, "192.0.2.2", 4790)
    for secret in ("Zq-first-psk", "Zq-second-psk", PSK):
        assert secret not in bad.reason
    shared = result.shared["ovs-psk-192.0.2.2"]
    assert shared.secret == Secret(first.get("psk", PSK))


def test_parse_errors_are_carried_into_the_plan() -> None:
    """Tunnels that failed to parse are in Desired.invalid, and never in a connection."""
    result = desired(
        psk_tunnel("good", "gre", "192.0.2.2"),
        psk_tunnel("bad", "gre", "not-an-ip"),
    )
    assert list(result.invalid) == ["bad"]
    assert [c.tunnels for c in result.conns.values()] == [("good",)]


@pytest.mark.parametrize(
    ("options", "other_config"),
    [
        (
            {"remote_cert": "/etc/ipsec/peer.pem"},
            {"certificate": "/etc/ipsec/host.pem", "private_key": "/etc/ipsec/host.key"},
        ),
        (
            {"remote_name": "peer"},
            {
                "certificate": "/etc/ipsec/host.pem",
                "private_key": "/etc/ipsec/host.key",
                "ca_cert": "/etc/ipsec/ca.pem",
            },
        ),
    ],
    ids=["self-signed", "ca-signed"],
)
def test_every_tunnel_parse_accepts_is_planned_or_rejected_without_raising(
    options: dict[str, str], other_config: dict[str, str]
) -> None:
    """plan() takes every Config parse_config produces: a certificate tunnel (which parse
    accepts) is either planned into a connection or reported invalid with a reason, and a PSK
    tunnel next to it is planned as usual. plan() raising would stop the daemon's loop."""
    result = desired(
        ("cert0", "gre", {"remote_ip": "192.0.2.3", **options}),
        psk_tunnel("psk0", "gre", "192.0.2.2"),
        other_config=other_config,
    )
    planned = {name for conn in result.conns.values() for name in conn.tunnels}
    assert "psk0" in planned
    assert ("cert0" in planned) != ("cert0" in result.invalid)
    if "cert0" in result.invalid:
        assert result.invalid["cert0"].errors


# -------------------------------------------------------------------------------------------
# Stability


def test_plan_is_stable() -> None:
    """Equal input gives equal output, whatever the row order, and a tunnel's connection does
    not change when an unrelated tunnel to another peer comes or goes."""
    rows = [
        psk_tunnel("gre0", "gre", "192.0.2.2"),
        psk_tunnel("vx0", "vxlan", "192.0.2.2"),
        psk_tunnel("gnv0", "geneve", "2001:db8::2"),
    ]
    one = desired(*rows)
    assert desired(*rows) == one
    assert desired(*reversed(rows)) == one
    alone = desired(rows[2])
    assert alone.conns["ovs-2001:db8::2"] == one.conns["ovs-2001:db8::2"]
    assert alone.shared["ovs-psk-2001:db8::2"] == one.shared["ovs-psk-2001:db8::2"]


def test_conn_names_derive_from_the_peer() -> None:
    """Connection and secret names come from the normalised peer address, not from a counter
    or the interface name, so a restarted daemon finds them again."""
    assert naming.conn_name("192.0.2.2") == "ovs-192.0.2.2"
    assert naming.shared_id("2001:db8::2") == "ovs-psk-2001:db8::2"
    renamed = desired(psk_tunnel("other-name", "gre", "2001:DB8:0::2"))
    assert list(renamed.conns) == ["ovs-2001:db8::2"]


# -------------------------------------------------------------------------------------------
# Child names


@pytest.mark.parametrize(
    ("interface", "expected"),
    [
        ("gre0", "ovs-gre0"),
        ("a_b.c", "ovs-a_b.c"),
        ("vx-in", "ovs-vx%2Din"),
        ("a b", "ovs-a%20b"),
        ("a/b", "ovs-a%2Fb"),
        ("100%", "ovs-100%25"),
        ("é", "ovs-%C3%A9"),
        ("", "ovs-"),
    ],
)
def test_child_name_encoding(interface: str, expected: str) -> None:
    """Child names keep [A-Za-z0-9_.] and percent-encode every other UTF-8 byte."""
    assert naming.child_name(interface) == expected


def test_child_names_of_tricky_interfaces_never_collide() -> None:
    """Interfaces whose names look like another's suffixed child ("a" with "-in" vs "a-in")
    still get distinct children in one connection."""
    rows = [
        psk_tunnel("a", "vxlan", "192.0.2.2"),
        psk_tunnel("a-in", "gre", "192.0.2.2"),
        psk_tunnel("a-out", "gre", "192.0.2.2"),
        psk_tunnel("a%2Din", "gre", "192.0.2.2"),
    ]
    conn = only_conn(desired(*rows))
    assert sorted(conn.body["children"]) == sorted(
        ["ovs-a-in", "ovs-a-out", "ovs-a%2Din", "ovs-a%2Dout", "ovs-a%252Din"]
    )


VICI_NAME_CHARS = set(string.ascii_letters + string.digits + "_.%-")

interface_names = st.lists(
    st.one_of(
        st.sampled_from(["-", "%", "/", " ", ".", ":", "_", "a", "0", "é", "🔒"]),
        st.sampled_from(["-in", "-out", "%2D", "%25", "%2Din"]),
        st.characters(codec="utf-8"),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(interface_names, st.sampled_from(["gre", "geneve", "vxlan"])),
        unique_by=lambda t: t[0],
        min_size=1,
        max_size=6,
    )
)
def test_child_names_never_collide_and_are_ascii(tunnels: list[tuple[str, str]]) -> None:
    """For any set of interface names (with "-in", "-out", spaces, unicode, "/", "%"), all
    tunnels to one peer get pairwise distinct child names (none overwrites another in the
    connection), each made only of ASCII letters, digits and "_.%-"."""
    rows = [psk_tunnel(name, type_, "192.0.2.2") for name, type_ in tunnels]
    conn = only_conn(desired(*rows))
    expected = sum(1 if type_ == "gre" else 2 for _, type_ in tunnels)
    assert len(conn.body["children"]) == expected
    for name in conn.body["children"]:
        assert set(name) <= VICI_NAME_CHARS
        assert name.startswith("ovs-")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 240, id="ascii-240"),
        pytest.param("x" * 256, id="ascii-256"),
        pytest.param("é" * 50, id="latin-50"),
        pytest.param("🔒" * 30, id="emoji-30"),
        pytest.param("-" * 100, id="dashes-100"),
    ],
)
@pytest.mark.parametrize("type_", ["gre", "vxlan"])
def test_long_interface_names_fit_vici(name: str, type_: str) -> None:
    """VICI spells a section name's length in one byte, so a child name is at most 255 bytes:
    any interface name is either planned into a message vici can encode, or rejected as an
    invalid tunnel with a reason (never left to crash the encoder in charon.load_conn)."""
    result = desired(psk_tunnel(name, type_, "192.0.2.2"))
    if name in result.invalid:
        assert result.invalid[name].errors
        return
    for conn in result.conns.values():
        for child_name in conn.body["children"]:
            assert len(child_name.encode()) <= 255
        vici.protocol.Message.serialize({conn.name: conn.body})


# -------------------------------------------------------------------------------------------
# Ownership predicates


ADDRESSES = ["192.0.2.2", "10.0.0.1", "2001:db8::2", "::1", "fe80::1"]


@pytest.mark.parametrize("address", ADDRESSES)
def test_ownership_predicates_accept_ours(address: str) -> None:
    """Our connection names are owned connections and not secrets; our secret ids are owned
    secrets and not connections."""
    conn, secret = naming.conn_name(address), naming.shared_id(address)
    assert naming.is_owned_conn(conn) and not naming.is_owned_shared(conn)
    assert naming.is_owned_shared(secret) and not naming.is_owned_conn(secret)
    assert naming.remote_of_conn(conn) == address


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ovs-",
        "ovs-foo",
        "ovs-gre0",
        "gre0",
        "ovs-psk-x",
        "ovs-psk-",
        "ovs-key-192.0.2.2",
        "OVS-192.0.2.2",
        "xovs-192.0.2.2",
        "192.0.2.2",
        "psk-192.0.2.2",
        "ovs-192.0.2.2 ",
        "ovs-192.0.2.2/32",
        "ovs-192.0.2",
        "ovs-192.0.2.2-in",
        "ovs-psk-192.0.2.2-x",
    ],
)
def test_ownership_predicates_reject_foreign_names(name: str) -> None:
    """Names that merely start with "ovs-", or look like ours in another shape, belong to
    someone else."""
    assert not naming.is_owned_conn(name)
    assert not naming.is_owned_shared(name)


@given(st.ip_addresses())
def test_ownership_round_trip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """For every address, the names we derive are recognised as ours, and only as their kind."""
    text = str(address)
    assert naming.is_owned_conn(naming.conn_name(text))
    assert not naming.is_owned_shared(naming.conn_name(text))
    assert naming.is_owned_shared(naming.shared_id(text))
    assert not naming.is_owned_conn(naming.shared_id(text))
    assert naming.remote_of_conn(naming.conn_name(text)) == text
