"""PSK tunnels end to end between namespace hosts: ovsdb-server, our daemon, charon-systemd, XFRM.

Each host is configured only with `ovs-vsctl --no-wait`. The kernel here has no ESP, so the most a
tunnel can reach is: connection and secret loaded, trap policies in the kernel, IKE_SA established,
and the CHILD_SA refused by the kernel when charon tries to install it. The tests assert exactly
that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from ovs_ipsec.tools.lab import Host, Lab, wait_for

pytestmark = pytest.mark.lab

GRE, GENEVE, VXLAN = "gre", "geneve", "vxlan"
DEFAULT_PORT = {GENEVE: 6081, VXLAN: 4789}


def peer_addr(host: Host, family: int) -> str:
    return host.ipv4 if family == 4 else host.ipv6


def add_tunnel(host: Host, name: str, kind: str, remote: str, **options: str) -> None:
    opts = [f"options:{k}={v}" for k, v in {"remote_ip": remote, **options}.items()]
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, f"type={kind}", *opts)


def conns(host: Host) -> dict[str, Any]:
    with host.vici() as v:
        result: dict[str, Any] = {}
        for entry in v.list_conns():
            result.update({k: v for k, v in entry.items()})
        return result


def shared_ids(host: Host) -> set[str]:
    with host.vici() as v:
        return {k.decode() for k in v.get_shared()["keys"]}


def ike_sas(host: Host, conn: str) -> list[dict[str, Any]]:
    with host.vici() as v:
        return [sa[conn] for sa in v.list_sas({"ike": conn}) if conn in sa]


def established(host: Host, conn: str) -> list[dict[str, Any]]:
    return [sa for sa in ike_sas(host, conn) if sa["state"] == b"ESTABLISHED"]


# The daemon's own block policies (fail-closed, ipsec_skb_mark) carry these priorities.
OWN_PRIORITY = re.compile(r"\bpriority (430001|430003)\b")


def policies(host: Host) -> str:
    """charon's policies in `ip xfrm policy` (the daemon's own blocks left out: they are
    test_protection_daemon.py's business, and a removed port's linger a while)."""
    blocks: list[list[str]] = []
    for line in host.run(["ip", "xfrm", "policy"]).stdout.splitlines():
        if line.startswith("src "):
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    return "".join("\n".join(b) + "\n" for b in blocks if not OWN_PRIORITY.search(" ".join(b)))


def send_probe(host: Host, dst: str, kind: str, port: int | None = None) -> None:
    """One plaintext tunnel packet (raw GRE, or UDP to the tunnel port) that hits the trap."""
    family = "AF_INET6" if ":" in dst else "AF_INET"
    if kind == GRE:
        code = (
            f"import socket; s=socket.socket(socket.{family}, socket.SOCK_RAW, 47); "
            f"s.sendto(b'\\0\\0\\x65\\x58x', ({dst!r}, 0))"
        )
    else:
        code = (
            f"import socket; s=socket.socket(socket.{family}, socket.SOCK_DGRAM); "
            f"s.sendto(b'x', ({dst!r}, {port}))"
        )
    host.run(["python3", "-c", code])


def initiate(host: Host, conn: str, child: str) -> None:
    """Negotiate now through VICI (a second trap hit within xfrm_acq_expires of the first finds
    the kernel's larval state and triggers no new acquire)."""
    with host.vici() as v:
        try:
            for _ in v.initiate({"ike": conn, "child": child, "timeout": 5000}):
                pass
        except Exception as exc:  # the CHILD_SA always fails here (no ESP in this kernel)
            assert "CHILD_SA" in str(exc), exc


def wait_loaded(host: Host, conn: str, children: set[str], timeout: float = 10) -> None:
    def loaded() -> bool:
        found = conns(host).get(conn)
        return found is not None and set(found["children"]) == children

    wait_for(loaded, timeout, what=f"{host.name}: {conn} loaded with children {children}")


@pytest.fixture
def pair(make_lab: Callable[..., Lab]) -> Lab:
    return make_lab(2)


@pytest.mark.keeps_ike_sa
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("kind", [GRE, GENEVE, VXLAN])
def test_psk_tunnel_loads_traps_and_establishes_ike(pair: Lab, kind: str, family: int) -> None:
    """A PSK port on both hosts loads one connection and secret per side, installs trap policies
    with the tunnel's selectors, and traffic matching the trap brings the IKE_SA up; the CHILD_SA
    is then refused by this kernel (no ESP), and nothing else."""
    a, b = pair.hosts
    for host, peer in ((a, b), (b, a)):
        add_tunnel(host, "t0", kind, peer_addr(peer, family), psk="swordfish")
    port = DEFAULT_PORT.get(kind)
    children = {"ovs-t0"} if kind == GRE else {"ovs-t0-in", "ovs-t0-out"}
    for host, peer in ((a, b), (b, a)):
        conn = f"ovs-{peer_addr(peer, family)}"
        wait_loaded(host, conn, children)
        assert f"ovs-psk-{peer_addr(peer, family)}" in shared_ids(host)
        loaded = conns(host)[conn]
        assert loaded["remote_addrs"] == [peer_addr(peer, family).encode()]
        text = policies(host)
        me, them = peer_addr(host, family), peer_addr(peer, family)
        bits = 32 if family == 4 else 128
        if kind == GRE:
            assert f"src {me}/{bits} dst {them}/{bits} proto gre" in text
            assert f"src {them}/{bits} dst {me}/{bits} proto gre" in text
        else:
            assert f"src {me}/{bits} dst {them}/{bits} proto udp dport {port}" in text
            assert f"src {them}/{bits} dst {me}/{bits} proto udp dport {port}" in text

    conn_a = f"ovs-{peer_addr(b, family)}"
    send_probe(a, peer_addr(b, family), kind, port)
    wait_for(lambda: established(a, conn_a), 10, what="IKE_SA established on the initiator")
    sa = established(a, conn_a)[0]
    assert sa["remote-host"] == peer_addr(b, family).encode()
    # The kernel cannot install ESP SAs: charon keeps the IKE_SA without any CHILD_SA.
    wait_for(
        lambda: (
            "unable to install inbound and outbound IPsec SA" in b.charon_log()
            or "unable to install inbound and outbound IPsec SA" in a.charon_log()
        ),
        10,
        what="CHILD_SA refused by the kernel",
    )
    assert not established(a, conn_a)[0].get("child-sas")
    # IPsec works either way; OVS would not send GRE to an IPv6 peer, and the operator is told.
    warned = a.daemon_log().count("t0: type=gre to an IPv6 remote_ip carries no traffic")
    assert warned == (1 if kind == GRE and family == 6 else 0)


def tunnel_status(host: Host, name: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(host.appctl("tunnels/show", "--json")).get(name, {})
    return status


@pytest.mark.drops_ike_sa
def test_strongswan_6_drops_the_ike_sa_when_the_kernel_refuses_the_child_sa(pair: Lab) -> None:
    """strongSwan 6 on this kernel (no ESP, no AEAD): the responder authenticates the initiator
    and establishes the IKE_SA, its kernel refuses the CHILD_SA, and its IKE_AUTH answer is
    N(NO_PROP) alone; the initiator drops the IKE_SA ("IDr payload missing") and the responder
    deletes its own. Both daemons report the tunnel failed for that, not for authentication."""
    a, b = pair.hosts
    for host, peer in ((a, b), (b, a)):
        add_tunnel(host, "t0", GRE, peer.ipv4, psk="swordfish")
        wait_loaded(host, f"ovs-{peer.ipv4}", {"ovs-t0"})
    send_probe(a, b.ipv4, GRE)

    def told() -> bool:
        theirs, ours = tunnel_status(b, "t0"), tunnel_status(a, "t0")
        return (theirs.get("state"), theirs.get("cause"), ours.get("state")) == (
            "failed",
            "kernel",
            "failed",
        ) and "NO_PROPOSAL_CHOSEN alone" in ours.get("reason", "")

    wait_for(told, 15, what="both daemons to report the refusal and its consequence")
    responder, initiator = b.charon_log(), a.charon_log()
    assert f"authentication of '{a.ipv4}' with pre-shared key successful" in responder
    assert f"IKE_SA ovs-{a.ipv4}[1] established between" in responder
    assert "unable to install inbound and outbound IPsec SA (SAD) in kernel" in responder
    assert "generating IKE_AUTH response 1 [ N(NO_PROP) ]" in responder
    assert "parsed IKE_AUTH response 1 [ N(NO_PROP) ]" in initiator
    assert "IDr payload missing" in initiator
    assert not ike_sas(a, f"ovs-{b.ipv4}") and not ike_sas(b, f"ovs-{a.ipv4}")
    theirs, ours = tunnel_status(b, "t0"), tunnel_status(a, "t0")
    assert theirs["reason"].startswith("the kernel refused the CHILD_SA (netlink error: ")
    assert f"peer {a.ipv4}, which we had authenticated, dropped the IKE_SA" in theirs["reason"]
    assert ours["cause"] == "negotiation"
    assert f"peer {b.ipv4} answered IKE_AUTH with NO_PROPOSAL_CHOSEN alone" in ours["reason"]


@pytest.mark.keeps_ike_sa
def test_wrong_psk_gives_no_ike_sa_and_daemon_keeps_running(pair: Lab) -> None:
    """Different PSKs: authentication fails, no IKE_SA comes up, and both daemons stay alive."""
    a, b = pair.hosts
    add_tunnel(a, "t0", GRE, b.ipv4, psk="swordfish")
    add_tunnel(b, "t0", GRE, a.ipv4, psk="not-swordfish")
    wait_loaded(a, f"ovs-{b.ipv4}", {"ovs-t0"})
    wait_loaded(b, f"ovs-{a.ipv4}", {"ovs-t0"})
    send_probe(a, b.ipv4, GRE)
    wait_for(lambda: "AUTHENTICATION_FAILED" in a.charon_log(), 10, what="authentication failure")
    assert not established(a, f"ovs-{b.ipv4}")
    assert not established(b, f"ovs-{a.ipv4}")
    for host in (a, b):
        assert host.appctl("version").startswith("ovs-monitor-ipsec (Open vSwitch)")


@pytest.mark.keeps_ike_sa
def test_psk_change_on_both_sides_reestablishes_with_the_new_key(pair: Lab) -> None:
    """Changing the PSK closes the SA negotiated with the old key; with the new key on both sides
    a fresh IKE_SA comes up, and a host left with the old key can no longer authenticate."""
    a, b = pair.hosts
    conn_a, conn_b = f"ovs-{b.ipv4}", f"ovs-{a.ipv4}"
    add_tunnel(a, "t0", GRE, b.ipv4, psk="old-key")
    add_tunnel(b, "t0", GRE, a.ipv4, psk="old-key")
    wait_loaded(a, conn_a, {"ovs-t0"})
    wait_loaded(b, conn_b, {"ovs-t0"})
    send_probe(a, b.ipv4, GRE)
    wait_for(lambda: established(a, conn_a), 10, what="IKE_SA with the old key")
    old_id = established(a, conn_a)[0]["uniqueid"]

    logs = {host.name: len(host.daemon_log()) for host in (a, b)}
    a.vsctl("set", "interface", "t0", "options:psk=new-key")
    b.vsctl("set", "interface", "t0", "options:psk=new-key")
    # Either side's close ends the old SA; negotiating before both daemons are done would race a
    # daemon still holding the old key, or one whose close is yet to come.
    a.await_psk_change(b.ipv4, since=logs[a.name])
    b.await_psk_change(a.ipv4, since=logs[b.name])
    wait_for(
        lambda: all(sa["uniqueid"] != old_id for sa in established(a, conn_a)),
        10,
        what="the old IKE_SA closed after the PSK change",
    )
    initiate(a, conn_a, "ovs-t0")
    wait_for(lambda: established(a, conn_a), 10, what="IKE_SA with the new key")
    assert established(a, conn_a)[0]["uniqueid"] != old_id

    # Only one side changes now: the next negotiation must fail authentication.
    failures_before = a.charon_log().count("AUTHENTICATION_FAILED")
    log_a = len(a.daemon_log())
    a.vsctl("set", "interface", "t0", "options:psk=third-key")
    a.await_psk_change(b.ipv4, since=log_a)
    wait_for(lambda: not established(a, conn_a), 10, what="SA closed after the second change")
    initiate(a, conn_a, "ovs-t0")
    wait_for(
        lambda: a.charon_log().count("AUTHENTICATION_FAILED") > failures_before,
        10,
        what="authentication failure with mismatched keys",
    )
    assert not established(a, conn_a)


def test_removing_the_port_unloads_connection_secret_and_traps(pair: Lab) -> None:
    """del-port (or losing the psk) unloads the connection and its secret and removes the trap
    policies; other tunnels stay."""
    a, b = pair.hosts
    add_tunnel(a, "t0", GRE, b.ipv4, psk="swordfish")
    add_tunnel(a, "t1", VXLAN, b.ipv6, psk="swordfish")
    wait_loaded(a, f"ovs-{b.ipv4}", {"ovs-t0"})
    wait_loaded(a, f"ovs-{b.ipv6}", {"ovs-t1-in", "ovs-t1-out"})
    assert "proto gre" in policies(a)

    a.vsctl("del-port", "br0", "t0")
    wait_for(lambda: f"ovs-psk-{b.ipv4}" not in shared_ids(a), 10, what="secret unloaded")
    assert f"ovs-{b.ipv4}" not in conns(a)
    assert "proto gre" not in policies(a)
    assert f"ovs-{b.ipv6}" in conns(a)

    a.vsctl("remove", "interface", "t1", "options", "psk")
    wait_for(lambda: f"ovs-psk-{b.ipv6}" not in shared_ids(a), 10, what="secret unloaded")
    assert f"ovs-{b.ipv6}" not in conns(a)
    assert "dport 4789" not in policies(a)


@pytest.mark.keeps_ike_sa
def test_several_tunnel_types_to_one_peer_share_one_connection(pair: Lab) -> None:
    """GRE, Geneve and VXLAN ports to the same peer become children of one connection, so the
    responder finds every child config (two connections to one peer break the second)."""
    a, b = pair.hosts
    for host, peer in ((a, b), (b, a)):
        add_tunnel(host, "g0", GRE, peer.ipv4, psk="swordfish")
        add_tunnel(host, "n0", GENEVE, peer.ipv4, psk="swordfish")
        add_tunnel(host, "x0", VXLAN, peer.ipv4, psk="swordfish", dst_port="4790")
    children = {"ovs-g0", "ovs-n0-in", "ovs-n0-out", "ovs-x0-in", "ovs-x0-out"}
    wait_loaded(a, f"ovs-{b.ipv4}", children)
    wait_loaded(b, f"ovs-{a.ipv4}", children)
    assert "dport 4790" in policies(a)
    send_probe(a, b.ipv4, VXLAN, 4790)
    wait_for(lambda: established(a, f"ovs-{b.ipv4}"), 10, what="IKE_SA for the VXLAN child")
    log = b.charon_log()
    assert "traffic selectors" not in log or "unacceptable" not in log


def test_bad_tunnels_are_reported_and_do_not_disturb_good_ones(pair: Lab) -> None:
    """Each bad port is skipped with a log line naming the interface and the key; the good
    tunnel is loaded and the daemon keeps running."""
    a, b = pair.hosts
    add_tunnel(a, "good", GRE, b.ipv4, psk="swordfish")
    bad = {
        "noip": ("gre", {"psk": "x"}),
        "notip": ("gre", {"remote_ip": "host.example", "psk": "x"}),
        "mixed": ("gre", {"remote_ip": "10.77.0.50", "psk": "x", "remote_name": "peer"}),
        "emptypsk": ("gre", {"remote_ip": "10.77.0.51", "psk": '""'}),
        "badtype": ("gtpu", {"remote_ip": "10.77.0.52", "psk": "x"}),  # stt is supported
    }
    for name, (kind, options) in bad.items():
        opts = [f"options:{k}={v}" for k, v in options.items()]
        a.vsctl("add-port", "br0", name, "--", "set", "interface", name, f"type={kind}", *opts)
    wait_loaded(a, f"ovs-{b.ipv4}", {"ovs-good"})
    expected = {
        "noip": "remote_ip",
        "notip": "remote_ip",
        "mixed": "psk",
        "emptypsk": "psk",
        "badtype": "type",
    }

    def all_reported() -> bool:
        log = a.daemon_log()
        return all(
            re.search(rf"{n}: invalid IPsec configuration: {k}:", log) for n, k in expected.items()
        )

    wait_for(all_reported, 10, what="every bad port reported with its key")
    assert set(conns(a)) == {f"ovs-{b.ipv4}"}
    assert a.appctl("version")
    assert "swordfish" not in a.daemon_log()
