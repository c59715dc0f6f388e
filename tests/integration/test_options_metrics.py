"""Per-tunnel ipsec_* options reach charon (encapsulation, proposals) and decide real IKE
outcomes; the Prometheus endpoint follows IKE success, failure and blocked plaintext."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovs_ipsec.adapters.metrics_http import MAX_CLIENTS
from ovs_ipsec.tools.lab import Host, Lab, in_netns, wait_for

pytestmark = pytest.mark.lab

METRICS_PORT = 9109


def add_gre(host: Host, peer: Host, name: str = "t0", **options: str) -> None:
    opts = [f"options:{k}={v}" for k, v in {"remote_ip": peer.ipv4, **options}.items()]
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, "type=gre", *opts)


def conn(host: Host, peer: Host) -> dict[str, Any]:
    name = f"ovs-{peer.ipv4}"
    with host.vici() as v:
        for entry in v.list_conns({"ike": name}):
            if name in entry:
                return entry[name]
    return {}


def initiate(host: Host, peer: Host, child: str = "ovs-t0") -> None:
    with host.vici() as v:
        try:
            for _ in v.initiate({"ike": f"ovs-{peer.ipv4}", "child": child, "timeout": 5000}):
                pass
        except Exception as exc:  # the CHILD_SA always fails on this kernel (no ESP)
            assert "failed" in str(exc), exc


def ike_sa(host: Host, peer: Host) -> dict[str, Any] | None:
    name = f"ovs-{peer.ipv4}"
    with host.vici() as v:
        for entry in v.list_sas({"ike": name}):
            if name in entry and entry[name]["state"] == b"ESTABLISHED":
                return entry[name]
    return None


def status(host: Host) -> dict[str, Any]:
    return json.loads(host.appctl("ipsec/status", "--json"))


@pytest.mark.keeps_ike_sa
def test_forceencaps_and_libreswan_encapsulation_force_udp_encapsulation(
    make_lab: Callable[..., Lab],
) -> None:
    """`ipsec_forceencaps=yes` (strongSwan) on one side and `ipsec_encapsulation=yes`
    (Libreswan, as OVN sends it) on the other both become `encap=yes` in the connection loaded
    into charon (5.9.8's list-conns does not show it back, so the proof is on the wire): IKE
    moves to port 4500 between the hosts, with charon faking NAT detection."""
    a, b = make_lab(2).hosts
    add_gre(a, b, psk="swordfish", ipsec_forceencaps="yes")
    add_gre(b, a, psk="swordfish", ipsec_encapsulation="yes")
    wait_for(lambda: conn(a, b) and conn(b, a), 10, what="connections loaded")
    initiate(a, b)
    sa = wait_for(lambda: ike_sa(a, b), 10, what="IKE_SA")
    assert sa["remote-port"] == b"4500" and sa["local-port"] == b"4500"
    assert sa.get("nat-fake") == b"yes" or sa.get("nat-any") == b"yes"


@pytest.mark.keeps_ike_sa
def test_custom_proposals_negotiate_and_mismatched_ones_fail_with_a_reason(
    make_lab: Callable[..., Lab],
) -> None:
    """The same strict custom proposal on both sides negotiates it; different strict
    proposals fail, and the tunnel's state says no proposal was chosen."""
    a, b = make_lab(2).hosts
    add_gre(a, b, psk="swordfish", ipsec_ike="aes128gcm16-prfsha384-ecp384!")
    add_gre(b, a, psk="swordfish", ipsec_ike="aes128gcm16-prfsha384-ecp384!")
    wait_for(lambda: conn(a, b) and conn(b, a), 10, what="connections loaded")
    initiate(a, b)
    sa = wait_for(lambda: ike_sa(a, b), 10, what="IKE_SA with the custom proposal")
    assert sa["encr-alg"] == b"AES_GCM_16" and sa["encr-keysize"] == b"128"
    assert sa["dh-group"] == b"ECP_384"

    # A second pair of tunnels over IPv6 (its own connection) with different strict proposals.
    for host, peer, ike in (
        (a, b, "aes128gcm16-prfsha384-ecp384!"),
        (b, a, "aes256gcm16-prfsha256-modp3072!"),
    ):
        host.vsctl("add-port", "br0", "t1", "--", "set", "interface", "t1", "type=gre",
                   f"options:remote_ip={peer.ipv6}", "options:psk=swordfish",
                   f"options:ipsec_ike={ike}")  # fmt: skip
    # Known is not enough: negotiate once both daemons have loaded t1's connection into charon.
    wait_for(
        lambda: all(status(h).get("t1", {}).get("state") == "configured" for h in (a, b)),
        10,
        what="t1 loaded on both hosts",
    )
    with a.vici() as v:
        try:
            for _ in v.initiate({"ike": f"ovs-{b.ipv6}", "child": "ovs-t1", "timeout": 5000}):
                pass
        except Exception as exc:
            assert "failed" in str(exc), exc

    def proposal_failure() -> bool:
        t1 = status(a).get("t1", {})
        return t1.get("state") == "failed" and "proposal" in t1.get("reason", "").lower()

    wait_for(proposal_failure, 10, what=f"a proposal failure in the state: {status(a)}")


def test_unknown_option_makes_only_that_tunnel_invalid(make_lab: Callable[..., Lab]) -> None:
    """A key we cannot honour invalidates that tunnel, naming the key; its plaintext stays
    blocked; the other tunnel is loaded."""
    a, b = make_lab(2).hosts
    add_gre(a, b, psk="swordfish")
    a.vsctl(
        "add-port",
        "br0",
        "t1",
        "--",
        "set",
        "interface",
        "t1",
        "type=vxlan",
        f"options:remote_ip={b.ipv6}",
        "options:psk=x",
        "options:ipsec_leftupdown=/bin/sh",
    )
    wait_for(lambda: status(a).get("t1", {}).get("state") == "invalid", 10, what="t1 invalid")
    assert "ipsec_leftupdown" in status(a)["t1"]["reason"]
    assert status(a)["t0"]["state"] == "configured"
    assert a.send_probe(b.ipv6, "vxlan", 4789) == "EPERM"


def scrape(host: Host) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return host.scrape_metrics(METRICS_PORT)


@pytest.mark.keeps_ike_sa
def test_metrics_follow_ike_success_failure_and_blocked_plaintext(
    make_lab: Callable[..., Lab],
) -> None:
    """Scraped with a real HTTP client: tunnel states, IKE_SA up, failures by cause, our
    protection policies and the kernel's XfrmOutPolBlock all move as they should; no secret
    appears anywhere in the exposition."""
    lab = make_lab(2, daemon_args=[f"--metrics-address=127.0.0.1:{METRICS_PORT}"])
    a, b = lab.hosts
    add_gre(a, b, psk="metrics-secret-1")
    add_gre(b, a, psk="metrics-secret-1")
    wait_for(lambda: conn(a, b) and conn(b, a), 10, what="connections loaded")
    labels = (("auth", "psk"), ("interface", "t0"), ("remote_ip", b.ipv4), ("type", "gre"))
    got = scrape(a)
    assert got[("ovs_ipsec_tunnels", (("state", "configured"),))] == 1
    assert got[("ovs_ipsec_tunnel_ike_sa_up", labels)] == 0
    assert got[("ovs_ipsec_charon_up", ())] == 1 and got[("ovs_ipsec_ovsdb_up", ())] == 1
    assert got[("ovs_ipsec_protection_policies", (("purpose", "fail-closed"),))] == 4

    # Success: IKE comes up.
    initiate(a, b)
    wait_for(
        lambda: scrape(a)[("ovs_ipsec_tunnel_ike_sa_up", labels)] == 1,
        10,
        what="ike_sa_up in metrics",
    )

    # Failure: B changes its key; a new negotiation fails authentication.
    logs = {host.name: len(host.daemon_log()) for host in (a, b)}
    b.vsctl("set", "interface", "t0", "options:psk=metrics-secret-2")
    a.vsctl("set", "interface", "t0", "options:psk=metrics-secret-3")
    # Negotiate only once both daemons are done with the change. b's close can end the SA before
    # a's daemon has taken its key; a's pass then closes whatever IKE_SA a has, the one this test
    # starts included (no failure at all), and its new key makes an earlier failure history.
    for host, peer in ((a, b), (b, a)):
        host.await_psk_change(peer.ipv4, since=logs[host.name])
    wait_for(lambda: ike_sa(a, b) is None, 10, what="SA closed")
    initiate(a, b)
    wait_for(
        lambda: scrape(a).get(("ovs_ipsec_tunnel_failures_total",
                               (("reason", "authentication"),)), 0) >= 1,
        10, what="an authentication failure counted",
    )  # fmt: skip

    # Blocked plaintext: charon stopped, our block policy drops the packet.
    blocked = scrape(a).get(("ovs_ipsec_xfrm_errors_total", (("counter", "XfrmOutPolBlock"),)), 0)
    a.stop_charon()
    assert a.send_probe(b.ipv4, "gre") == "EPERM"
    # A scrape may be answered from the page of up to a second ago (metrics_http.CACHE_SECONDS).
    wait_for(
        lambda: scrape(a)[("ovs_ipsec_xfrm_errors_total", (("counter", "XfrmOutPolBlock"),))]
        > blocked,
        5, what="XfrmOutPolBlock counted",
    )  # fmt: skip
    wait_for(lambda: scrape(a)[("ovs_ipsec_charon_up", ())] == 0, 10, what="charon down")
    # The failed negotiation counted once, under its cause: not also as "negotiation", the cause
    # it has until charon's log line saying why arrives (which may be a turn of the loop later).
    got = scrape(a)
    assert got[("ovs_ipsec_tunnel_failures_total", (("reason", "authentication"),))] == 1
    assert ("ovs_ipsec_tunnel_failures_total", (("reason", "negotiation"),)) not in got
    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"  # noqa: E501
    text = a.run([sys.executable, "-c", code]).stdout
    assert "metrics-secret" not in text


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_metrics_default_to_loopback_and_a_full_client_table_costs_no_cpu(
    make_lab: Callable[..., Lab],
) -> None:
    """`--metrics-address=:PORT` listens on 127.0.0.1 only (before: every address, IPv4 and
    IPv6); with all MAX_CLIENTS slots held by silent clients and one more waiting, the real
    daemon uses next to no CPU (before: a whole core, the loop spinning) and answers the
    waiting scrape once a slot frees."""
    lab = make_lab(1, daemon_args=[f"--metrics-address=:{METRICS_PORT}"])
    host = lab.hosts[0]
    pid = host.daemon_pid
    assert pid is not None
    assert ("ovs_ipsec_charon_up", ()) in scrape(host)
    refused = (
        "import socket\n"
        f"for address in (({host.ipv4!r}, {METRICS_PORT}), ({host.ipv6!r}, {METRICS_PORT})):\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=2).close(); print('open')\n"
        "    except OSError:\n"
        "        print('refused')\n"
    )
    assert host.run([sys.executable, "-c", refused]).stdout.split() == ["refused", "refused"]

    silent: list[socket.socket] = []
    with in_netns(host.ns):
        try:
            for _ in range(MAX_CLIENTS):
                silent.append(socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=2))
            time.sleep(0.3)
            waiting = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5)
            silent.append(waiting)
            waiting.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            before = cpu_seconds(pid)
            time.sleep(2.0)
            used = cpu_seconds(pid) - before
            print(f"metrics: {MAX_CLIENTS} slots held, one waiting: {used:.2f} s CPU in 2 s")
            assert used < 0.3, used
            silent.pop(0).close()
            assert waiting.recv(4096).startswith(b"HTTP/1.0 200 OK")
        finally:
            for sock in silent:
                sock.close()
