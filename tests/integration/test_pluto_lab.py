"""Libreswan's pluto (h1) against the connection our daemon loads into charon (h2), without the
daemon: the facts docs/libreswan-notes.md states, proven on real components. One lab for the
module; each test starts from no conns, SAs or secrets on either side.

This kernel has no ESP: IKE SAs establish, every CHILD SA is refused (pluto as initiator hears
NO_PROPOSAL_CHOSEN; as responder its kernel says errno 38). Selectors are spelled numerically
(`47/0`, `17/6081`), which needs no /etc/protocols (Libreswan 5 refuses `gre` without netbase).

About 400 lines because the module shares one lab (start-up and teardown paid once) across the
facts the adapter needs, certificates included.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator

import pytest

from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core import credentials as creds
from ovs_ipsec.core.block_policies import FAIL_CLOSED_PRIORITY, PolicySpec, plan_protection
from ovs_ipsec.core.model import AuthMode, Config, GlobalConfig, Secret, Tunnel, TunnelType
from ovs_ipsec.tools import pki_builders
from ovs_ipsec.tools.lab import Host, Lab, LabCommandError, in_netns, wait_for
from ovs_ipsec.tools.pluto_lab import (
    Pluto,
    conn_section,
    interop_conn,
    libreswan_missing,
    libreswan_tool,
    libreswan_version,
    load_daemon_conn,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(libreswan_missing() is not None, reason=str(libreswan_missing())),
]

PSK = "swordfish-test-psk"
ESTABLISHED = "STATE_V2_ESTABLISHED_IKE_SA"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(2, daemon=False, libreswan_hosts=[1]) as lab:
        yield lab


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[Pluto, Host]]:
    pluto, charon = lab[1].pluto, lab[2]
    assert pluto is not None
    yield pluto, charon
    # Every conn's first status line: `000 "NAME": 10.77.0.1/32:GRE/0-65535===10.77.0.1...`
    for name in set(re.findall(r'^000 "([^"]+)": \S+===', pluto.whack("--status"), re.M)):
        pluto.delete(name, check=False)
    with charon.vici() as v:
        for name in v.get_conns()["conns"]:
            v.unload_conn({"name": name})
        for sa in v.list_sas():
            for ike in sa:
                v.terminate({"ike": ike, "force": "yes", "timeout": "-1"})
        for key in v.get_shared()["keys"]:
            v.unload_shared({"id": key})
    pluto.write_secrets("")
    pluto.reread_secrets()


def psk_tunnel(kind: TunnelType, remote: str, port: int | None = None) -> Tunnel:
    return Tunnel("t0", kind, remote, None, port, AuthMode.PSK, Secret(PSK))


def load_pluto(pluto: Pluto, name: str, text: str, route: bool = True) -> None:
    path = os.path.join(pluto.dir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(text)
    pluto.addconn(path, name)
    if route:
        pluto.route(name)


def log_since(pluto: Pluto, start: int) -> str:
    return pluto.log()[start:]


def charon_ike_states(charon: Host) -> list[str]:
    with charon.vici() as v:
        return [sa[name]["state"].decode() for sa in v.list_sas() for name in sa]


def policies(host: Host) -> list[str]:
    """`ip xfrm policy` entries other than pluto's socket and ICMPv6 neighbour-discovery
    bypasses, one line each."""
    text = host.run(["ip", "xfrm", "policy"]).stdout
    entries = [e for e in re.split(r"^(?=src )", text, flags=re.M) if e.strip()]
    return [
        " ".join(e.split())
        for e in entries
        if "socket " not in e and "ipv6-icmp" not in e
    ]  # fmt: skip


@pytest.mark.keeps_ike_sa
def test_psk_gre_ipv4_ike_up_both_ways_child_refused(pair: tuple[Pluto, Host]) -> None:
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    load_daemon_conn(charon, psk_tunnel(TunnelType.GRE, h1.ipv4))
    name = f"ovs-{h2.ipv4}"
    pluto.write_secrets(f'{h1.ipv4} {h2.ipv4} : PSK "{PSK}"\n')
    pluto.reread_secrets()
    load_pluto(pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0"))

    start = len(pluto.log())
    pluto.initiate(name)
    wait_for(lambda: "rejected Child SA" in log_since(pluto, start), 5, what="pluto's IKE_AUTH")
    assert ESTABLISHED in pluto.show_states()
    assert "IKE_AUTH response rejected Child SA with NO_PROPOSAL_CHOSEN" in log_since(pluto, start)
    assert charon_ike_states(charon) == ["ESTABLISHED"]
    assert "unable to install inbound and outbound IPsec SA (SAD) in kernel" in charon.charon_log()

    # The other way round: charon initiates a fresh IKE_SA, pluto's kernel refuses the SA.
    pluto.whack("--terminate", "--name", name)
    wait_for(lambda: not charon_ike_states(charon), 5, what="charon's IKE_SA gone")
    start = len(pluto.log())
    with charon.vici() as v, pytest.raises(Exception, match="CHILD_SA"):
        for _ in v.initiate({"child": "ovs-t0", "timeout": "5000"}):
            pass
    log = log_since(pluto, start)
    assert "responder established IKE SA; authenticated peer using authby=secret" in log
    assert "Function not implemented (errno 38)" in log
    assert ESTABLISHED in pluto.show_states()
    assert charon_ike_states(charon) == ["ESTABLISHED"]


@pytest.mark.keeps_ike_sa
def test_psk_geneve_ipv6_two_conns_match_our_two_children(pair: tuple[Pluto, Host]) -> None:
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    load_daemon_conn(charon, psk_tunnel(TunnelType.GENEVE, h1.ipv6, 6081))
    pluto.write_secrets(f'{h1.ipv6} {h2.ipv6} : PSK "{PSK}"\n')
    pluto.reread_secrets()
    # Our charon conn has a child per direction of the flow (-in: local port 6081; -out: remote).
    load_pluto(pluto, "gnv-in", interop_conn("gnv-in", h1.ipv6, h2.ipv6, "17/6081", "17/0"))
    load_pluto(pluto, "gnv-out", interop_conn("gnv-out", h1.ipv6, h2.ipv6, "17/0", "17/6081"))
    assert sorted(p for p in policies(h1) if "udp" in p) == sorted([
        f"src {h1.ipv6}/128 dst {h2.ipv6}/128 proto udp sport 6081 dir out priority 1310721 "
        "ptype main tmpl src :: dst :: proto esp reqid 0 mode transport",
        f"src {h1.ipv6}/128 dst {h2.ipv6}/128 proto udp dport 6081 dir out priority 1310721 "
        "ptype main tmpl src :: dst :: proto esp reqid 0 mode transport",
    ])  # fmt: skip

    # Each side names a child by its own port: pluto's "out" (to h2's 6081) is h2's "-in".
    for name, child in (("gnv-out", "ovs-t0-in"), ("gnv-in", "ovs-t0-out")):
        start = len(charon.charon_log())
        pluto.initiate(name)
        wait_for(
            lambda child=child, start=start: (
                f'found matching child config "{child}"' in charon.charon_log()[start:]
            ),
            5,
            what=f"charon choosing {child}",
        )
    wait_for(lambda: ESTABLISHED in pluto.show_states(), 5, what="pluto's IKE SA")
    assert set(charon_ike_states(charon)) == {"ESTABLISHED"}


def test_wrong_psk_is_refused_and_rereadsecrets_takes_the_fixed_file(
    pair: tuple[Pluto, Host],
) -> None:
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    load_daemon_conn(charon, psk_tunnel(TunnelType.GRE, h1.ipv4))
    name = f"ovs-{h2.ipv4}"
    pluto.write_secrets(f'{h1.ipv4} {h2.ipv4} : PSK "wrong-test-psk"\n')
    pluto.reread_secrets()
    # One try: otherwise the conn, once initiated, keeps reviving.
    load_pluto(pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0", keyingtries="1"))
    start = len(pluto.log())
    pluto.initiate(name)
    wait_for(
        lambda: "rejected by peer: AUTHENTICATION_FAILED" in log_since(pluto, start),
        5,
        what="AUTHENTICATION_FAILED",
    )
    assert ESTABLISHED not in pluto.show_states()
    assert "MAC mismatched" in charon.charon_log()

    # pluto reads PSKs only from files: the file changes, then --rereadsecrets.
    pluto.write_secrets(f'{h1.ipv4} {h2.ipv4} : PSK "{PSK}"\n')
    out = pluto.reread_secrets()
    assert f'loading secrets from "{pluto.ovs_secrets_path}"' in out
    assert f"PSK {h2.ipv4} {h1.ipv4}" in pluto.whack("--listpsks")
    pluto.delete(name)
    load_pluto(pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0", keyingtries="1"))
    pluto.initiate(name)
    wait_for(lambda: ESTABLISHED in pluto.show_states(), 5, what="IKE SA with the fixed PSK")


def test_our_blocks_beat_plutos_default_priority_and_lose_to_an_explicit_one(
    pair: tuple[Pluto, Host],
) -> None:
    """pluto computes priorities far above charon's (numerically: lower precedence), so the
    daemon's fail-closed blocks win over pluto's trap; `priority=` in the conn fixes that."""
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    load_daemon_conn(charon, psk_tunnel(TunnelType.GRE, h1.ipv4))
    pluto.write_secrets(f'{h1.ipv4} {h2.ipv4} : PSK "{PSK}"\n')
    pluto.reread_secrets()
    name = f"ovs-{h2.ipv4}"
    # The daemon's own fail-closed blocks for a GRE tunnel to h2, planned and installed by its
    # code (core/block_policies.py, adapters/xfrm): any <-> h2/32, GRE, at FAIL_CLOSED_PRIORITY.
    blocks = plan_protection(Config(tunnels={"t0": psk_tunnel(TunnelType.GRE, h2.ipv4)}))
    assert {b.priority for b in blocks} == {FAIL_CLOSED_PRIORITY}
    xfrm = Xfrm(timeout=10)
    with in_netns(h1.ns):
        xfrm.apply(add=sorted(blocks, key=PolicySpec.sort_key), remove=())
    try:
        load_pluto(pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0"))
        trap = [p for p in policies(h1) if "action block" not in p]
        assert trap == [
            f"src {h1.ipv4}/32 dst {h2.ipv4}/32 proto gre dir out priority 1622209 ptype main "
            "tmpl src 0.0.0.0 dst 0.0.0.0 proto esp reqid 0 mode transport"
        ]  # only OUT: pluto 4.10 traps no inbound traffic
        before = h1.xfrm_stat()
        assert h1.send_probe(h2.ipv4, "gre") == "EPERM"  # our block won: no acquire, no IKE
        assert h1.xfrm_stat()["XfrmOutPolBlock"] == before["XfrmOutPolBlock"] + 1

        # Same conn with charon's number for this selector: the trap wins, the packet acquires.
        pluto.delete(name)
        load_pluto(
            pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0", priority="366976")
        )
        assert any("priority 366976" in p for p in policies(h1))
        start, before = len(pluto.log()), h1.xfrm_stat()
        assert h1.send_probe(h2.ipv4, "gre") == "sent"
        assert h1.xfrm_stat()["XfrmOutNoStates"] == before["XfrmOutNoStates"] + 1
        wait_for(lambda: ESTABLISHED in pluto.show_states(), 5, what="IKE SA from the acquire")
        assert "initiate on-demand for packet" in log_since(pluto, start)
        if libreswan_version() < (5,):
            # 4.10 replaces the trap by a %hold it does not install, then deletes the "narrow
            # %hold": the OUT policy is gone until a route (`assign_holdpass() delete_bare_shunt()
            # failed`). Without our block the next packet would leave in clear; with it, EPERM.
            assert "assign_holdpass() delete_bare_shunt() failed" in log_since(pluto, start)
            assert not any("priority 366976" in p for p in policies(h1))
            assert h1.send_probe(h2.ipv4, "gre") == "EPERM"
            pluto.route(name)
            assert any("priority 366976" in p for p in policies(h1))
    finally:
        with in_netns(h1.ns):
            xfrm.apply(add=(), remove=sorted(blocks, key=PolicySpec.sort_key))


def test_addconn_replaces_by_name_and_unroutes_delete_removes_unknown_names_fail(
    pair: tuple[Pluto, Host],
) -> None:
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    name = f"ovs-{h2.ipv4}"
    load_pluto(pluto, name, interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0"))
    assert [p for p in policies(h1) if "proto gre" in p]
    path = os.path.join(pluto.dir, "replaced.conf")
    with open(path, "w") as f:
        f.write(interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0", esp="aes_gcm128"))
    start = len(pluto.log())
    pluto.addconn(path, name)  # the same name again: replaces it
    log = log_since(pluto, start)
    assert f'"{name}": terminating SAs using this connection' in log
    assert "ESP=AES_GCM_C_128" in log
    assert not [p for p in policies(h1) if "proto gre" in p]  # replaced means unrouted
    pluto.route(name)
    assert [p for p in policies(h1) if "proto gre" in p]
    pluto.delete(name)
    assert not [p for p in policies(h1) if "proto gre" in p]
    with pytest.raises(LabCommandError) as failed:
        pluto.route(name)
    assert failed.value.returncode == 25
    assert f"no connection or alias '{name}'" in failed.value.stdout

    # addconn exits 0 although the conn did not load: only its words (or status) tell.
    with open(path, "w") as f:
        f.write(interop_conn(name, h1.ipv4, h2.ipv4, "47", "47"))
    result = h1.run(
        [libreswan_tool("addconn"), "--ctlsocket", pluto.ctl_path, "--config", path, name],
        check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert f"conn {name} did not load properly" in result.stdout + result.stderr
    assert f'"{name}"' not in pluto.whack("--status")


# -- certificates ----------------------------------------------------------------------------


def load_charon_cert_conn(
    charon: Host,
    peer_ip: str,
    local: pki_builders.CertAndKey,
    *,
    ca: pki_builders.CertAndKey | None = None,
    remote_name: str | None = None,
    pinned: bytes | None = None,
) -> None:
    """What our daemon loads for a CA-signed (`ca`, `remote_name`) or self-signed (`pinned`)
    tunnel to `peer_ip`, through its own credential resolution."""
    files = {"/cert": local.cert_pem, "/key": local.key_pem}
    if ca is not None:
        files["/ca"] = ca.cert_pem
        tunnel = Tunnel("t0", TunnelType.GRE, peer_ip, None, None, AuthMode.CA_SIGNED,
                        remote_name=remote_name)  # fmt: skip
        glob = GlobalConfig(certificate="/cert", private_key="/key", ca_cert="/ca")
    else:
        assert pinned is not None
        files["/peer"] = pinned
        tunnel = Tunnel("t0", TunnelType.GRE, peer_ip, None, None, AuthMode.SELF_SIGNED,
                        remote_cert="/peer")  # fmt: skip
        glob = GlobalConfig(certificate="/cert", private_key="/key")
    config = Config(global_config=glob, tunnels={"t0": tunnel})
    resolved = creds.resolve(config, files, dt.datetime.now(dt.UTC))
    assert resolved.local is not None, resolved.local_errors
    load_daemon_conn(charon, tunnel, resolved)


def negotiate(pluto: Pluto, name: str) -> str:
    """Initiate once (keyingtries=1 in the conn) and return the log of the attempt."""
    start = len(pluto.log())
    pluto.initiate(name)
    wait_for(
        lambda: (
            ESTABLISHED in pluto.show_states() or "AUTHENTICATION_FAILED" in log_since(pluto, start)
        ),
        5,
        what="the end of IKE_AUTH",
    )
    return log_since(pluto, start)


@pytest.mark.keeps_ike_sa
def test_certificates_from_nss_with_our_cn_identities(pair: tuple[Pluto, Host]) -> None:
    """Our charon side's identities are the certificates' CNs as FQDNs (`fqdn:host2`): pluto
    matches with `@CN` ids; a DN (its default for leftid with a cert) is refused."""
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    name = f"ovs-{h2.ipv4}"
    ca = pki_builders.make_ca("labca", org="lab")
    host1 = pki_builders.make_host_cert("host1", ca, org="lab")
    host2 = pki_builders.make_host_cert("host2", ca, org="lab")
    ss1 = pki_builders.make_self_signed("sshost1", org="lab")
    ss2 = pki_builders.make_self_signed("sshost2", org="lab")
    pluto.import_cert_and_key("host1", *host1)
    pluto.import_cert_and_key("sshost1", *ss1)
    for nick, pem, importer in (
        ("ovs_cert_cacert", ca.cert_pem, pluto.import_ca),
        ("ovs_cert_sshost2", ss2.cert_pem, pluto.import_peer_cert),
    ):
        path = os.path.join(pluto.dir, f"{nick}.pem")
        with open(path, "wb") as f:
            f.write(pem)
        importer(nick, path)
    nss = pluto.certutil("-L")
    assert all(n in nss for n in ("host1", "sshost1", "ovs_cert_cacert", "ovs_cert_sshost2"))

    base = {
        "left": h1.ipv4, "right": h2.ipv4, "ikev2": "insist", "type": "transport",
        "leftprotoport": "47/0", "rightprotoport": "47/0", "ike": "aes_gcm256-sha2_256",
        "esp": "aes_gcm256", "authby": "ecdsa", "keyingtries": "1",
    }  # fmt: skip
    load_charon_cert_conn(charon, h1.ipv4, host2, ca=ca, remote_name="host1")
    ca_conn = {**base, "leftcert": "host1", "leftid": "@host1", "rightid": "@host2",
               "rightca": "%same"}  # fmt: skip
    load_pluto(pluto, name, conn_section(name, ca_conn), route=False)
    log = negotiate(pluto, name)
    assert "issued by CA 'O=lab, CN=labca'" in log
    assert ESTABLISHED in pluto.show_states()
    pluto.delete(name)

    # Without leftid pluto sends its certificate's DN; charon wants fqdn:host1.
    without_id = {k: v for k, v in ca_conn.items() if k != "leftid"}
    load_pluto(pluto, name, conn_section(name, without_id), route=False)
    assert "AUTHENTICATION_FAILED" in negotiate(pluto, name)
    assert ESTABLISHED not in pluto.show_states()
    pluto.delete(name)

    # Self-signed: the peer's certificate in NSS with trust P,, and named by rightcert.
    with charon.vici() as v:
        v.unload_conn({"name": f"ovs-{h1.ipv4}"})
    load_charon_cert_conn(charon, h1.ipv4, ss2, pinned=ss1.cert_pem)
    ss_conn = {**base, "leftcert": "sshost1", "leftid": "@sshost1", "rightid": "@sshost2",
               "rightcert": "ovs_cert_sshost2"}  # fmt: skip
    load_pluto(pluto, name, conn_section(name, ss_conn), route=False)
    assert "using preloaded certificate '@sshost2'" in negotiate(pluto, name)
    assert ESTABLISHED in pluto.show_states()


def test_upstream_style_ipsec_commands_reach_the_lab_pluto(pair: tuple[Pluto, Host]) -> None:
    """Upstream's monitor runs `ipsec auto ...` and `ipsec whack ...`; with the lab's daemon_env
    those run the unpacked Libreswan against this host's pluto (not strongSwan's `ipsec`)."""
    pluto, charon = pair
    h1, h2 = pluto.host, charon
    path = os.path.join(pluto.dir, "upstream.conf")
    with open(path, "w") as f:
        f.write(interop_conn("tun", h1.ipv4, h2.ipv4, "47/0", "47/0"))
    ipsec = ["env", *pluto.daemon_env(), "ipsec"]
    auto = [*ipsec, "auto", "--ctlsocket", pluto.ctl_path, "--config", path]
    h1.run([*auto, "--add", "tun"])
    h1.run([*auto, "--route", "tun"])
    assert [p for p in policies(h1) if "proto gre" in p]
    assert '"tun": ' in h1.run([*ipsec, "whack", "--ctlsocket", pluto.ctl_path, "--status"]).stdout
    h1.run([*auto, "--delete", "tun"])
    assert not [p for p in policies(h1) if "proto gre" in p]
