"""OVN as a client (issue 16, section 4): real OVN creates the tunnels, the daemon protects them.

One lab for the module (ovs_ipsec/tools/ovn_lab.py): OVN's northbound and southbound
ovsdb-servers and ovn-northd in the hub namespace, and three chassis h1, h2, h3, each a lab host
with its own ovsdb-server, charon and daemon, plus ovn-controller with geneve encapsulation. No
ovs-vswitchd: ovn-controller writes br-int and its tunnel ports into OVSDB by itself. Each
chassis has a CA-signed certificate whose CN is its chassis name (system-id), as OVN's IPsec
tutorial has operators make them, and NB_Global says `ipsec=true` with
`options:ipsec_encapsulation=true` and `options:ipsec_forceencaps=true`.

What ovn-controller 23.03 writes on a tunnel with IPsec on: `remote_ip`, `local_ip`, `key=flow`,
`csum=true`, `remote_name=<peer chassis>`, and from NB_Global's options only these two, as
`ipsec_encapsulation=yes` (Libreswan's spelling) and `ipsec_forceencaps=yes` (strongSwan's); no
other `ipsec_*` option of NB_Global reaches the tunnels. Both mean forced UDP encapsulation, so
every IKE_SA here floats to port 4500 with a faked NAT.

The tests run in file order on the shared lab; each leaves it as it found it (three chassis,
`ipsec=true`, the right certificates, connections loaded), so any one can also run alone.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import resilience_lab
from resilience_lab import conns, ike_sas, key_ids, others, own, shared_ids

from ovs_ipsec.core import naming
from ovs_ipsec.tools import ovn_lab, pki_builders, pki_tool
from ovs_ipsec.tools.lab import Host, Lab, wait_for
from ovs_ipsec.tools.ovn_lab import Chassis, OvnCentral

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        bool(ovn_lab.missing()),
        reason=f"needs OVN ({', '.join(ovn_lab.missing())}): Debian's ovn-central and ovn-host, "
        "which `scripts/setup.sh test` installs",
    ),
]

WAIT = 15.0
GENEVE = 6081
# The four fail-closed policies per tunnel (FAIL_CLOSED_PRIORITY in resilience_lab).
BLOCKS_PER_TUNNEL = 4
# The blocks of a deleted port stay this long (default 30 s) in case OVS re-creates it: short,
# so that a chassis's departure is seen through to the end.
PROTECTION_LINGER = 2


@dataclass
class OvnLab:
    lab: Lab
    central: OvnCentral
    chassis: list[Chassis]
    ca: pki_builders.CertAndKey

    @property
    def hosts(self) -> list[Host]:
        return self.lab.hosts


def tunnel_name(peer: Host) -> str:
    """ovn-controller's name for its tunnel port to chassis `peer` (encaps.c
    tunnel_create_name: `ovn-` and the first six characters of the chassis name)."""
    return f"ovn-{peer.name[:6]}-0"


def ovn_options(host: Host, peer: Host) -> dict[str, str]:
    """Exactly what ovn-controller 23.03 writes on `host`'s tunnel to `peer` with this lab's
    NB_Global (ipsec=true, ipsec_encapsulation=true, ipsec_forceencaps=true)."""
    return {
        "remote_ip": peer.ipv4,
        "local_ip": host.ipv4,
        "key": "flow",
        "csum": "true",
        "remote_name": peer.name,
        "ipsec_encapsulation": "yes",
        "ipsec_forceencaps": "yes",
    }


def peers(ovn: OvnLab, host: Host, among: list[Host] | None = None) -> list[Host]:
    return [p for p in (among or ovn.hosts) if p is not host]


def show(host: Host) -> dict[str, Any]:
    return dict(json.loads(host.appctl("tunnels/show", "--json")))


def children(peer: Host) -> set[str]:
    name = tunnel_name(peer)
    return {naming.child_name(name, "-in"), naming.child_name(name, "-out")}


def loaded_as_expected(host: Host, expected_peers: list[Host]) -> bool:
    """charon holds exactly one connection of ours per expected peer, with the geneve tunnel's
    two children, and nothing else of ours."""
    held = {name: conn for name, conn in conns(host).items() if naming.is_owned_conn(name)}
    want = {naming.conn_name(p.ipv4): children(p) for p in expected_peers}
    return {name: set(conn["children"]) for name, conn in held.items()} == want


def wait_converged(ovn: OvnLab, among: list[Host] | None = None) -> None:
    """Every chassis in `among` (default: all) has ovn-controller's tunnel to every other one,
    and our daemon has loaded each into charon with its blocks in place."""
    among = among or ovn.hosts
    for host in among:
        wait_for(
            lambda host=host: (
                loaded_as_expected(host, peers(ovn, host, among))
                and len(own(host)) == BLOCKS_PER_TUNNEL * (len(among) - 1)
            ),
            WAIT,
            what=f"{host.name}: connections and blocks for {[p.name for p in among if p != host]}",
        )


def probe(host: Host, peer: Host) -> None:
    """One Geneve packet from `host` to `peer`, as OVS would send it: the trap policy turns it
    into an acquire, and charon negotiates."""
    assert host.send_probe(peer.ipv4, "udp", GENEVE) == "sent"


def initiate(host: Host, peer: Host) -> None:
    """Negotiate with `peer` now, over VICI: a probe again would be dropped without an acquire
    while the kernel still holds the larval state of the first one (xfrm_acq_expires)."""
    resilience_lab.initiate(host, naming.conn_name(peer.ipv4),
                            naming.child_name(tunnel_name(peer), "-out"))  # fmt: skip


def established(host: Host, peer: Host) -> list[dict[str, Any]]:
    return [
        sa for sa in ike_sas(host).get(naming.conn_name(peer.ipv4), [])
        if sa["state"] == "ESTABLISHED"
    ]  # fmt: skip


def terminate(host: Host, peer: Host) -> None:
    """End `host`'s IKE_SAs with `peer` (both ends: charon tells the peer) and wait for it."""
    conn = naming.conn_name(peer.ipv4)
    with host.vici() as v:
        for sa in ike_sas(host).get(conn, []):
            for _ in v.terminate({"ike-id": sa["uniqueid"], "timeout": 5000}):
                pass
    back = naming.conn_name(host.ipv4)
    wait_for(
        lambda: not ike_sas(host).get(conn) and not ike_sas(peer).get(back),
        WAIT,
        what=f"IKE_SAs {host.name}-{peer.name} gone",
    )


def write_pki(host: Host, cert: bytes, key: bytes, ca: bytes, tag: str = "") -> None:
    """Write the certificate files and point other_config at them (new paths with a new `tag`,
    so the change reaches the daemon through OVSDB)."""
    paths = {
        "certificate": (f"cert{tag}.pem", cert, 0o644),
        "private_key": (f"key{tag}.pem", key, 0o600),
        "ca_cert": ("ca.pem", ca, 0o644),
    }
    settings = []
    for column, (name, data, mode) in paths.items():
        path = os.path.join(host.dir, name)
        pki_tool.write_atomic(Path(path), data, mode)
        settings.append(f"other_config:{column}={path}")
    host.vsctl("set", "Open_vSwitch", ".", *settings)


def set_certificate(ovn: OvnLab, host: Host, common_name: str, tag: str) -> None:
    cert, key = pki_builders.make_host_cert(common_name, ovn.ca)
    write_pki(host, cert, key, ovn.ca.cert_pem, tag)


@pytest.fixture(scope="module")
def ovn() -> Iterator[OvnLab]:
    with Lab(3, daemon_args=[f"--protection-linger={PROTECTION_LINGER}"]) as lab:
        central = OvnCentral(lab).start()
        ca = pki_builders.make_ca("ovn lab CA")
        for host in lab.hosts:
            cert, key = pki_builders.make_host_cert(host.name, ca)
            write_pki(host, cert, key, ca.cert_pem)
        central.nbctl(
            "set", "NB_Global", ".", "ipsec=true",
            "options:ipsec_encapsulation=true", "options:ipsec_forceencaps=true",
        )  # fmt: skip
        chassis = [Chassis(host, central).start() for host in lab.hosts]
        ovn = OvnLab(lab, central, chassis, ca)
        wait_converged(ovn)
        yield ovn


# -- what ovn-controller writes, and what the daemon makes of it --------------------------------


def test_ovn_controller_tunnels_are_loaded_with_the_options_it_wrote(ovn: OvnLab) -> None:
    """Every chassis has a geneve tunnel to every other one, with exactly the options
    ovn-controller writes; the daemon takes each as written: CA-signed authentication with our
    identity from the certificate and the peer's from `remote_name`, `local_ip`, the two
    `ipsec_*` options as custom options. (charon's list-conns does not show `encap`; the IKE_SAs
    on port 4500 in the next test show it took effect.)"""
    assert ovn.central.chassis_names() == {"h1", "h2", "h3"}
    for chassis in ovn.chassis:
        host = chassis.host
        assert chassis.tunnels() == {
            tunnel_name(p): ovn_options(host, p) for p in peers(ovn, host)
        }, host.name  # fmt: skip
        tunnels = show(host)
        assert set(tunnels) == {tunnel_name(p) for p in peers(ovn, host)}
        held = conns(host)
        for peer in peers(ovn, host):
            tunnel = tunnels[tunnel_name(peer)]
            assert tunnel["connection"] == naming.conn_name(peer.ipv4)
            config = tunnel["config"]
            assert (config["type"], config["dst_port"], config["auth"]) == (
                "geneve", GENEVE, "ca-signed")  # fmt: skip
            assert (config["remote_ip"], config["local_ip"], config["remote_name"]) == (
                peer.ipv4, host.ipv4, peer.name)  # fmt: skip
            assert tunnel["auth"] == {"mode": "pubkey", "local_id": host.name,
                                      "remote_id": peer.name}  # fmt: skip
            assert tunnel["custom_options"] == {"encapsulation": "yes", "forceencaps": "yes"}
            conn = held[naming.conn_name(peer.ipv4)]
            assert (conn["local_addrs"], conn["remote_addrs"]) == ([host.ipv4], [peer.ipv4])
            assert set(conn["children"]) == children(peer)


@pytest.mark.keeps_ike_sa
def test_every_pair_of_chassis_establishes_an_ike_sa_and_no_esp(ovn: OvnLab) -> None:
    """A Geneve packet between any two chassis brings up an IKE_SA between them, authenticated
    by the chassis names, over UDP 4500 (forced encapsulation); the CHILD_SA is refused because
    this kernel has no ESP, and both daemons say so."""
    for host, peer in itertools.combinations(ovn.hosts, 2):
        probe(host, peer)
        sa = wait_for(
            lambda host=host, peer=peer: established(host, peer),
            WAIT,
            what=f"IKE_SA {host.name}-{peer.name}",
        )
        assert (sa[0]["local-id"], sa[0]["remote-id"]) == (host.name, peer.name)
        assert (sa[0]["local-port"], sa[0]["remote-port"]) == ("4500", "4500")
        assert sa[0]["child-sas"] == {}
        back = wait_for(
            lambda host=host, peer=peer: established(peer, host),
            WAIT,
            what=f"{peer.name}'s IKE_SA",
        )
        assert (back[0]["local-id"], back[0]["remote-id"]) == (peer.name, host.name)
        # The responder's kernel refuses the SA (no ESP: ENOSYS, or EPROTONOSUPPORT for some
        # algorithms), and the responder answers NO_PROPOSAL_CHOSEN to the initiator.
        for side, other, cause, words in (
            (
                host,
                peer,
                "negotiation",
                f"peer {peer.ipv4} refused the CHILD_SA (NO_PROPOSAL_CHOSEN)",
            ),
            (peer, host, "kernel", "kernel refused the SA: "),
        ):
            wait_for(
                lambda side=side, other=other: show(side)[tunnel_name(other)]["state"] == "ike-up",
                WAIT,
                what=f"{side.name}: tunnel to {other.name} ike-up",
            )
            tunnel = show(side)[tunnel_name(other)]
            assert tunnel["child_sas"] == []
            assert tunnel["ike_sa"]["remote"]["id"] == other.name
            assert tunnel["cause"] == cause
            assert words in tunnel["reason"], tunnel["reason"]
        assert "netlink error" in show(peer)[tunnel_name(host)]["reason"]


def speaking_as(host: Any, name: str, peers: Any) -> None:
    """Wait until `host`'s tunnels to `peers` show it identifying itself as `name`."""
    for peer in peers:
        wait_for(
            lambda peer=peer: show(host)[tunnel_name(peer)]["auth"]["local_id"] == name,
            WAIT,
            what=f"{host.name} speaking as {name}",
        )


def test_a_chassis_with_a_certificate_for_another_name_gets_no_ike_sa(ovn: OvnLab) -> None:
    """h3's certificate (CA-signed, valid) names h9. h1's tunnel to chassis h3 asks for `h3`
    (remote_name), so no IKE_SA comes up whoever starts, and the reasons say why: h3's daemon
    that h1 asked for 'h3', then that h1 rejected it as 'h9'; h1's that h3 presented 'h9'.
    h1 and h2 are not disturbed; with its own certificate back, h3 negotiates again."""
    h1, h2, h3 = ovn.hosts
    set_certificate(ovn, h3, "h9", "-h9")
    try:
        speaking_as(h3, "h9", (h1, h2))
        for peer in (h1, h2):
            # A new certificate is hitless by design (test_certs.py): IKE_SAs made with the old
            # one live on until they re-authenticate. End them, as `swanctl --terminate` would.
            terminate(h3, peer)
        for initiator, responder, at_h1, at_h3 in (
            (h1, h3, "rejected us as 'h1'", "presented identity 'h1' and asked for 'h3'"),
            (h3, h1, "presented identity 'h9' and asked for 'h1'", "rejected us as 'h9'"),
        ):
            initiate(initiator, responder)
            for host, peer, words in ((h1, h3, at_h1), (h3, h1, at_h3)):
                wait_for(
                    lambda host=host, peer=peer, words=words: (
                        words in show(host)[tunnel_name(peer)]["reason"]
                    ),
                    WAIT,
                    what=f"{host.name}: {words!r} after {initiator.name} initiated",
                )
                tunnel = show(host)[tunnel_name(peer)]
                assert (tunnel["state"], tunnel["cause"]) == ("failed", "authentication")
                assert tunnel["reason"].startswith("authentication failed: "), tunnel["reason"]
            assert not established(h1, h3) and not established(h3, h1)
        initiate(h1, h2)
        assert wait_for(lambda: established(h1, h2), WAIT, what="IKE_SA h1-h2")
    finally:
        set_certificate(ovn, h3, "h3", "")
        speaking_as(h3, "h3", (h1, h2))
    initiate(h1, h3)
    assert wait_for(lambda: established(h1, h3), WAIT, what="IKE_SA h1-h3 with h3's own name")


# -- OVN taking IPsec or a chassis away ----------------------------------------------------------


def test_ipsec_false_unloads_everything_of_ours_and_removes_the_blocks(ovn: OvnLab) -> None:
    """`ipsec=false` in NB_Global: ovn-controller rewrites its tunnels without remote_name,
    local_ip and ipsec_*, so they are no IPsec tunnels any more. Every daemon unloads all it
    loaded into charon (connections with the certificates they carry, private keys; no IKE_SA
    stays) and removes its block policies at once, and charon has no policy left for a tunnel;
    `ipsec=true` brings it all back."""
    ovn.central.nbctl("set", "NB_Global", ".", "ipsec=false")
    try:
        for chassis in ovn.chassis:
            host = chassis.host
            plain = {
                tunnel_name(p): {"remote_ip": p.ipv4, "key": "flow", "csum": "true"}
                for p in peers(ovn, host)
            }  # fmt: skip
            wait_for(
                lambda chassis=chassis, plain=plain: chassis.tunnels() == plain,
                WAIT,
                what=f"{host.name}: tunnels without IPsec",
            )
            wait_for(
                lambda host=host: not (conns(host) or key_ids(host) or ike_sas(host) or own(host)),
                WAIT,
                what=f"{host.name}: nothing of ours in charon or the kernel",
            )
            assert shared_ids(host) == set()
            # charon's socket bypass policies are all that is left.
            assert not [p for p in others(host) if "proto udp" in p], others(host)
            assert show(host) == {}
    finally:
        ovn.central.nbctl("set", "NB_Global", ".", "ipsec=true")
    wait_converged(ovn)


def test_a_chassis_that_leaves_the_southbound_takes_its_tunnel_state_with_it(
    ovn: OvnLab,
) -> None:
    """h3 dies (ovn-controller gone without cleanup) and the operator deletes its chassis from
    the southbound database: h1 and h2 drop their tunnels to it, and their daemons unload its
    connection and close its IKE_SA, and remove their blocks for it once the protection linger
    is over (the port is not coming back). Started again, h3 rejoins; when its ovn-controller
    then exits with cleanup, it leaves the southbound database itself and every chassis, h3
    included, drops what was there for it."""
    h1, h2, h3 = ovn.hosts
    initiate(h1, h3)
    wait_for(lambda: established(h1, h3), WAIT, what="IKE_SA h1-h3")
    chassis3 = ovn.chassis[2]
    for how in ("chassis-del", "exit"):
        if how == "chassis-del":
            chassis3.exit(cleanup=False)
            assert "h3" in ovn.central.chassis_names()
            ovn.central.sbctl("chassis-del", "h3")
        else:
            chassis3.exit(cleanup=True)
        assert ovn.central.chassis_names() == {"h1", "h2"}
        for chassis, peer in ((ovn.chassis[0], h2), (ovn.chassis[1], h1)):
            wait_for(
                lambda chassis=chassis, peer=peer: set(chassis.tunnels()) == {tunnel_name(peer)},
                WAIT,
                what=f"{chassis.name}: its tunnel to h3 gone",
            )
        wait_converged(ovn, [h1, h2])
        for host in (h1, h2):
            assert not established(host, h3)
            assert tunnel_name(h3) not in show(host)
            assert not [p for p in own(host) + others(host) if h3.ipv4 in p]
        if how == "exit":
            # Its own cleanup took h3's tunnels, so its daemon unloaded everything too.
            wait_for(lambda: not conns(h3) and not own(h3), WAIT, what="h3: nothing left")
            assert chassis3.tunnels() == {}
        chassis3.start()
        wait_converged(ovn)
