"""Libreswan's words for the shared desired state (core/libreswan_conf.py) and pluto's status
output read back (core/pluto_status.py). The conn texts are checked whole (they are the
contract with pluto) and, where Libreswan's own parser is unpacked (scripts/setup.sh test), by
it; the status fixtures are pluto's output in the documented formats of 4.x (with its
three-digit codes) and 5.x (without)."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from ovs_ipsec.core import libreswan_conf as lc
from ovs_ipsec.core import naming
from ovs_ipsec.core.admission import admit
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.connections import ConnSpec, plan
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ike_options.settings import IkeSettings
from ovs_ipsec.core.model import Config, InterfaceRow, Secret, Snapshot
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.pluto_status import (
    addconn_failure,
    asked_up,
    failure_of,
    loaded_conns,
    outcome_of,
    parse_states,
    routed_conns,
    serials_of,
    unreachable,
)

PSK = "swordfish"
LIBRESWAN_TOOLS = os.path.join(
    os.environ.get("OVS_IPSEC_LIBRESWAN_ROOT", "/opt/ovs-ipsec-test/libreswan"),
    "usr/libexec/ipsec",
)


def planned(
    *rows: tuple[str, str, dict[str, str]], use_default_crypto: bool = False
) -> tuple[Config, dict[str, ConnSpec], dict[str, IkeSettings]]:
    config = parse_config(Snapshot(tuple(InterfaceRow(*row) for row in rows), {}))
    desired = plan(config, use_default_crypto=use_default_crypto)
    assert not desired.invalid, desired.invalid
    settings: dict[str, IkeSettings] = {}
    for tunnel in config.tunnels.values():
        translated, _ = admit(tunnel, Credentials(), use_default_crypto)
        assert translated is not None
        settings[tunnel.name] = translated
    return config, dict(desired.conns), settings


def rendered(*rows: tuple[str, str, dict[str, str]], **kw: Any) -> tuple[lc.PlutoConn, ...]:
    config, conns, settings = planned(*rows, **kw)
    out: list[lc.PlutoConn] = []
    for spec in conns.values():
        out += lc.render_conns(
            spec, config.tunnels, settings, use_default_crypto=kw.get("use_default_crypto", False)
        )
    return tuple(out)


def psk(name: str, type_: str, remote: str, **options: str) -> tuple[str, str, dict[str, str]]:
    return name, type_, {"remote_ip": remote, "psk": PSK, **options}


def test_gre_psk_conn_is_routed_transport_with_upstream_crypto() -> None:
    (conn,) = rendered(psk("gre0", "gre", "10.0.0.2"))
    assert conn.name == "ovs-10.0.0.2--ovs-gre0"
    assert (conn.conn, conn.child, conn.tunnel) == ("ovs-10.0.0.2", "ovs-gre0", "gre0")
    assert conn.text == (
        "conn ovs-10.0.0.2--ovs-gre0\n"
        "\tikev2=insist\n"
        "\ttype=transport\n"
        "\tauto=route\n"
        "\tkeyingtries=%forever\n"
        "\tpriority=366976\n"
        "\tleftupdown=%disabled\n"
        "\tleft=%defaultroute\n"
        "\tright=10.0.0.2\n"
        "\tauthby=secret\n"
        "\tleftprotoport=47/0\n"
        "\trightprotoport=47/0\n"
        "\tike=aes_gcm256-sha2_256\n"
        "\tesp=aes_gcm256\n"
    )
    assert conn.unhonoured == ()


def test_udp_tunnels_get_one_conn_per_direction_with_their_dst_port() -> None:
    conns = rendered(
        psk("gnv0", "geneve", "10.0.0.2", local_ip="10.0.0.1"),
        psk("vx0", "vxlan", "10.0.0.2", local_ip="10.0.0.1", dst_port="4790"),
    )
    lines = {c.name: [ln.strip() for ln in c.text.splitlines()] for c in conns}
    assert sorted(lines) == [
        "ovs-10.0.0.2--ovs-gnv0-in", "ovs-10.0.0.2--ovs-gnv0-out",
        "ovs-10.0.0.2--ovs-vx0-in", "ovs-10.0.0.2--ovs-vx0-out",
    ]  # fmt: skip
    assert {"leftprotoport=17/6081", "rightprotoport=17/0"} <= set(lines[
        "ovs-10.0.0.2--ovs-gnv0-in"])  # fmt: skip
    assert {"leftprotoport=17/0", "rightprotoport=17/4790"} <= set(lines[
        "ovs-10.0.0.2--ovs-vx0-out"])  # fmt: skip
    assert all("left=10.0.0.1" in ls for ls in lines.values())


def test_stt_and_ipv6() -> None:
    conns = rendered(psk("stt0", "stt", "fd01::2"))
    texts = {c.name: c.text for c in conns}
    out = texts["ovs-fd01::2--ovs-stt0-out"]
    assert "\tleftprotoport=6/0\n\trightprotoport=6/7471\n" in out
    # %defaultroute would pick an IPv4 address without it.
    assert "\tleft=%defaultroute\n\tright=fd01::2\n\thostaddrfamily=ipv6\n" in out
    (with_local,) = rendered(psk("gre6", "ip6gre", "fd01::2", local_ip="fd01::1"))
    assert "hostaddrfamily" not in with_local.text


def test_default_crypto_omits_proposals() -> None:
    (conn,) = rendered(psk("gre0", "gre", "10.0.0.2"), use_default_crypto=True)
    assert "ike=" not in conn.text and "esp=" not in conn.text


def test_ipsec_options_in_libreswan_words_and_unhonoured_ones_named() -> None:
    (conn,) = rendered(
        psk("gre0", "gre", "10.0.0.2", ipsec_ike="aes256gcm16-prfsha256-ecp256",
            ipsec_esp="aes_gcm_b256", ipsec_dpddelay="30", ipsec_encapsulation="yes",
            **{"ipsec_replay-window": "128"})
    )  # fmt: skip
    text = conn.text
    assert "\tike=aes_gcm256-sha2_256-dh19\n" in text
    assert "\tesp=aes_gcm_b256\n" in text
    assert "\tencapsulation=yes\n" in text
    assert "\treplay-window=128\n" in text
    assert "dpddelay=" in text
    (tries,) = rendered(psk("gre0", "gre", "10.0.0.2", ipsec_keyingtries="3"))
    assert tries.text.count("keyingtries=") == 1 and "\tkeyingtries=3\n" in tries.text
    (lifebytes,) = rendered(psk("gre0", "gre", "10.0.0.2", ipsec_lifebytes="1000000"))
    assert lifebytes.unhonoured == ("ipsec_lifebytes",)


@pytest.mark.parametrize(
    ("strongswan", "proto", "libreswan"),
    [
        ("aes256gcm16-prfsha256-modp2048", "IKE", "aes_gcm256-sha2_256-modp2048"),
        ("aes128-sha256-curve25519", "IKE", "aes128-sha2_256-dh31"),
        ("aes256gcm16-modp2048", "ESP", "aes_gcm256"),
        ("aes128gcm8", "ESP", "aes_gcm_a128"),
        ("aes256-sha512-esn", "ESP", "aes256-sha2_512"),
        ("serpent256-sha256-modp2048", "IKE", None),
    ],
)
def test_proposals_back_to_libreswan(strongswan: str, proto: str, libreswan: str | None) -> None:
    assert lc.libreswan_proposal(strongswan, proto) == libreswan


def test_names_are_ours_and_split_back() -> None:
    name = lc.pluto_name(naming.conn_name("fd01::2"), naming.child_name("tun-1", "-in"))
    assert lc.split_name(name) == ("ovs-fd01::2", "ovs-tun%2D1-in")
    assert lc.split_name(name + "[3]") == ("ovs-fd01::2", "ovs-tun%2D1-in")
    for foreign in ("ovs-fd01::2", "mine--ovs-gre0", "ovs-host--ovs-gre0", "ovs-10.0.0.2--x"):
        assert lc.split_name(foreign) is None, foreign


def test_secrets_hold_only_ours_in_hex_and_read_back() -> None:
    config, conns, _ = planned(psk("gre0", "gre", "10.0.0.2"))
    desired = plan(config)
    text = lc.secrets_text(desired.shared.values())
    assert PSK not in text  # hex: no quoting rule of the file can be broken by a PSK
    assert f"%any 10.0.0.2 : PSK 0x{PSK.encode().hex()}\n" in text
    back = lc.secrets_of(text)
    assert list(back) == ["ovs-psk-10.0.0.2"]
    assert back["ovs-psk-10.0.0.2"].secret.reveal() == PSK
    assert back["ovs-psk-10.0.0.2"].conn == "ovs-10.0.0.2"
    assert lc.secrets_of("%any 10.0.0.3 : PSK 0x00\n# foo\n%any 1.2.3.4 : PSK 0x00\n") == {}


def test_endpoints_of_a_conn_text() -> None:
    (conn,) = rendered(psk("gre0", "gre", "10.0.0.2", local_ip="10.0.0.1"))
    assert lc.endpoints(conn.text) == ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2")
    (default,) = rendered(psk("gre0", "gre", "10.0.0.2"))
    assert lc.endpoints(default.text) == ("", "10.0.0.2", "", "10.0.0.2")
    text = "conn x\n\tleft=10.0.0.1\n\tright=10.0.0.2\n\tleftid=@h1\n\trightid=@h2\n"
    assert lc.endpoints(text) == ("10.0.0.1", "10.0.0.2", "h1", "h2")


def test_conf_text_read_back_by_section() -> None:
    conns = rendered(psk("gre0", "gre", "10.0.0.2"), psk("gnv0", "geneve", "10.0.0.3"))
    text = lc.conf_text(conns)
    assert text.startswith(lc.HEADER)
    assert lc.conf_sections(text) == {c.name: c.text for c in conns}
    assert lc.conf_text(()) == lc.HEADER


@pytest.mark.skipif(
    not os.access(os.path.join(LIBRESWAN_TOOLS, "addconn"), os.X_OK),
    reason="Libreswan not unpacked (scripts/setup.sh test)",
)
def test_libreswan_parses_what_we_write(tmp_path: Any) -> None:
    conns = rendered(
        psk("gre0", "gre", "10.0.0.2"), psk("gnv0", "geneve", "fd01::3"),
        psk("vx0", "vxlan", "10.0.0.4", local_ip="10.0.0.1", ipsec_ike="aes256-sha256-ecp256",
            ipsec_dpddelay="10s"),
    )  # fmt: skip
    path = tmp_path / "ovs.conf"
    path.write_text("config setup\n\n" + lc.conf_text(conns))
    result = subprocess.run(
        [os.path.join(LIBRESWAN_TOOLS, "readwriteconf"), "--config", str(path)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for conn in conns:
        assert f"conn {conn.name}" in result.stdout


# -- pluto's status -------------------------------------------------------------------------

SHOWSTATES_4 = """\
000 #1: "ovs-10.0.0.2--ovs-gre0":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 28523s; REPLACE in 28793s; newest; idle;
000 #2: "ovs-10.0.0.2--ovs-gre0":500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); REKEY in 28523s; REPLACE in 28793s; newest; eroute owner; IKE SA #1; idle;
000 #2: "ovs-10.0.0.2--ovs-gre0" esp.9a3c2b1d@10.0.0.2 esp.c0ffee01@10.0.0.1 ref=0 refhim=0 Traffic: ESPin=0B ESPout=0B ESPmax=2^63B
000 #3: "ovs-10.0.0.2--ovs-gnv0-in":500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); REKEY in 28000s; newest; eroute owner; IKE SA #1; idle;
000 #4: "ovs-10.0.0.3--ovs-vx0-out":500 STATE_V2_PARENT_I1 (sent IKE_SA_INIT request); RETRANSMIT in 1s; idle;
000 #9: "someone-else":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); newest;
"""  # noqa: E501
# 5.x: no three-digit code, no STATE_V2_ prefix, initiator states named after the exchange.
SHOWSTATES_5 = "\n".join(
    line[4:].replace("STATE_V2_PARENT_I1", "IKE_SA_INIT_I").replace("STATE_V2_", "")
    for line in SHOWSTATES_4.splitlines()
)
TRAFFIC_4 = """\
006 #2: "ovs-10.0.0.2--ovs-gre0", type=ESP, add_time=1733580000, inBytes=840, outBytes=1260, maxBytes=2^63B, id='10.0.0.2'
006 #3: "ovs-10.0.0.2--ovs-gnv0-in", type=ESP, add_time=1733580000, inBytes=0, outBytes=0, maxBytes=2^63B, id='10.0.0.2'
"""  # noqa: E501


@pytest.mark.parametrize("showstates", [SHOWSTATES_4, SHOWSTATES_5], ids=["4.x", "5.x"])
def test_states_become_charons_typed_sas(showstates: str) -> None:
    sas = parse_states(showstates, TRAFFIC_4)
    assert sorted(sas) == ["ovs-10.0.0.2", "ovs-10.0.0.3"]
    (ike,) = sas["ovs-10.0.0.2"]
    assert (ike.uniqueid, ike.state, ike.remote_host, ike.is_established) == (
        1, "ESTABLISHED", "10.0.0.2", True,
    )  # fmt: skip
    assert [(c.name, c.uniqueid, c.state) for c in ike.children] == [
        ("ovs-gnv0-in", 3, "INSTALLED"), ("ovs-gre0", 2, "INSTALLED"),
    ]  # fmt: skip
    gre = ike.children[1]
    assert (gre.spi_out, gre.spi_in, gre.bytes_in, gre.bytes_out) == (
        "9a3c2b1d", "c0ffee01", 840, 1260,
    )  # fmt: skip
    (connecting,) = sas["ovs-10.0.0.3"]
    assert (connecting.state, connecting.initiator, connecting.children) == (
        "CONNECTING", True, (),
    )  # fmt: skip
    assert serials_of(showstates, "ovs-10.0.0.2") == (2, 3, 1)


STATUS_4 = """\
000 "ovs-10.0.0.2--ovs-gre0": 10.0.0.1/32:GRE/0-65535===10.0.0.1...10.0.0.2===10.0.0.2/32:GRE/0-65535; prospective erouted; eroute owner: #0
000 "ovs-10.0.0.2--ovs-gre0":     oriented; my_ip=unset; their_ip=unset; my_updown=ipsec _updown;
000 "ovs-10.0.0.2--ovs-gre0":   conn_prio: 32,32; interface: eth0; metric: 0; mtu: unset; sa_prio:366976; sa_tfc:none;
000 "ovs-10.0.0.3--ovs-vx0-in": 10.0.0.1/32:UDP/4789===10.0.0.1...10.0.0.3===10.0.0.3/32:UDP/0-65535; unrouted; eroute owner: #0
000 "other": 10.0.0.1...10.0.0.9; erouted; eroute owner: #4
"""  # noqa: E501
STATUS_5 = """\
"ovs-10.0.0.2--ovs-gre0": 10.0.0.1/32/GRE===10.0.0.1...10.0.0.2===10.0.0.2/32/GRE; routing: ondemand; owner: Child SA #0
"ovs-10.0.0.3--ovs-vx0-in": 10.0.0.1...10.0.0.3; routing: unrouted;
"other": 10.0.0.1...10.0.0.9; routing: routed-tunnel; owner: Child SA #4
"""  # noqa: E501


def test_addconn_failures_are_read_from_its_words() -> None:
    out = (
        "while loading 'ovs-10.0.0.2--ovs-gre0': Invalid protoport value\n"
        "conn ovs-10.0.0.2--ovs-gre0 did not load properly\n"
    )
    assert addconn_failure(out, "ovs-10.0.0.2--ovs-gre0") is not None
    assert addconn_failure(out, "ovs-10.0.0.3--ovs-gre0") is None
    assert addconn_failure("", "ovs-10.0.0.2--ovs-gre0") is None


@pytest.mark.parametrize("status", [STATUS_4, STATUS_5], ids=["4.10", "5.x"])
def test_loaded_and_routed_conns(status: str) -> None:
    assert loaded_conns(status) == {
        "ovs-10.0.0.2--ovs-gre0", "ovs-10.0.0.3--ovs-vx0-in", "other",
    }  # fmt: skip
    assert routed_conns(status) == {"ovs-10.0.0.2--ovs-gre0", "other"}


def test_failures_from_plutos_replies() -> None:
    reply = '002 "ovs-10.0.0.2--ovs-gre0" #1: IKE SA authentication request rejected by peer: ' \
        "AUTHENTICATION_FAILED"  # fmt: skip
    cause, reason = failure_of(reply) or (None, "")
    assert cause is Cause.AUTHENTICATION and "authentication failed" in reason
    cause, reason = failure_of("... NO_PROPOSAL_CHOSEN ...") or (None, "")
    assert cause is Cause.PROPOSAL and "no proposal chosen" in reason
    assert failure_of('004 "x" #2: initiator established Child SA') is None


def test_outcome_of_a_synchronous_initiation() -> None:
    reply = (
        '181 "ovs-10.0.0.2--ovs-gre0" #3: initiating IKEv2 connection\n'
        '003 "ovs-10.0.0.2--ovs-gre0" #3: IKE SA authentication request rejected by peer: '
        "AUTHENTICATION_FAILED\n"
    )
    outcome = outcome_of(reply)
    assert outcome is not None
    assert (outcome.cause, outcome.ike_id) == (Cause.AUTHENTICATION, 3)
    assert outcome_of('004 "x" #2: initiator established Child SA') is None
    child_refused = (
        '004 "x" #1: initiator established IKE SA; authenticated peer using authby=secret\n'
        '036 "x" #2: IKE_AUTH response rejected Child SA with NO_PROPOSAL_CHOSEN\n'
    )
    assert outcome_of(child_refused) is None
    assert unreachable("10.0.0.2", 2).cause is Cause.UNREACHABLE


def test_secret_never_in_repr() -> None:
    spec = lc.secrets_of(lc.secrets_text(plan(planned(psk("g", "gre", "10.0.0.9"))[0])
                                          .shared.values()))["ovs-psk-10.0.0.9"]  # fmt: skip
    assert PSK not in repr(spec) and isinstance(spec.secret, Secret)


# -- the command line -----------------------------------------------------------------------


def test_openshift_command_line_selects_pluto_with_upstreams_paths() -> None:
    from ovs_ipsec import cli
    from ovs_ipsec.daemon.loop import Settings

    args = cli.build_parser().parse_args([
        "--pidfile=/var/run/openvswitch/ovs-monitor-ipsec.pid", "--ike-daemon=libreswan",
        "--no-restart-ike-daemon", "--ipsec-conf", "/etc/ipsec.d/openshift.conf",
        "--ipsec-d", "/var/lib/ipsec/nss", "--log-file", "--monitor",
        "unix:/var/run/openvswitch/db.sock",
    ])  # fmt: skip
    pluto = cli.make_pluto(args, Settings(database=args.database, vici_path=""))
    assert (pluto.conf, pluto.root_conf) == ("/etc/ipsec.d/openshift.conf",) * 2
    assert (pluto.secrets, pluto.ctl) == ("/etc/ipsec.secrets", "/run/pluto/pluto.ctl")
    assert pluto.tools == "/usr/libexec/ipsec"
    prefixed = cli.build_parser().parse_args([
        "--ike-daemon=libreswan", "--root-prefix=/sandbox", "--root-ipsec-conf=/etc/ipsec.conf",
    ])  # fmt: skip
    pluto = cli.make_pluto(prefixed, Settings(database="", vici_path=""))
    assert (pluto.conf, pluto.root_conf) == ("/sandbox/etc/ipsec.conf", "/etc/ipsec.conf")
    assert pluto.ctl == "/sandbox/run/pluto/pluto.ctl"
    assert pluto.tools == "/sandbox/usr/libexec/ipsec"


# -- certificates -----------------------------------------------------------------------------


def test_nicknames_carry_a_digest_and_only_ours_are_ours() -> None:
    key = lc.local_nickname("host 1", "sha256:" + "ab" * 32)
    assert key == "ovs_certkey_host_1_abababababab"
    peer = lc.peer_nickname("h2", "AB:CD:EF:01:23:45:67")
    assert peer == "ovs_cert_h2_abcdef012345"
    ca = lc.ca_nickname("01:02:03:04:05:06:07")
    assert ca == "ovs_cert_cacert_010203040506"
    assert all(lc.is_our_nickname(n) for n in (key, peer, ca))
    # upstream's and an operator's entries are not ours
    for other in ("ovs_certkey_h1", "ovs_cert_cacert", "mine", "ovs_cert_h2_ABCDEF012345"):
        assert not lc.is_our_nickname(other), other


def test_certificate_conns_name_nss_entries_and_signature_methods() -> None:
    import dataclasses

    from ovs_ipsec.core.connections import AuthClass

    (psk_conn,) = planned(psk("c0", "gre", "10.0.0.2"))[1].values()
    spec = dataclasses.replace(psk_conn, auth=AuthClass.PUBKEY, local_id="h1", remote_id="h2")
    config = parse_config(Snapshot((InterfaceRow(
        "c0", "gre", {"remote_ip": "10.0.0.2", "remote_cert": "/p/h2.pem"}),), {
        "certificate": "/p/h1.pem", "private_key": "/p/k.pem"}))  # fmt: skip
    nss = lc.NssNames("ovs_certkey_h1_0123456789ab", {"/p/h2.pem": "ovs_cert_h2_0123456789ab"},
                      "EC", {"/p/h2.pem": "RSA"})  # fmt: skip
    (conn,) = lc.render_conns(spec, config.tunnels, {}, nss=nss)
    lines = [line.strip() for line in conn.text.splitlines()]
    assert {"leftauth=ecdsa", "rightauth=rsasig", "leftid=@h1", "rightid=@h2",
            "leftcert=ovs_certkey_h1_0123456789ab", "rightcert=ovs_cert_h2_0123456789ab",
            "leftsendcert=always"} <= set(lines)  # fmt: skip
    same = lc.NssNames("ovs_certkey_h1_0123456789ab", {}, "EC")
    (ca_conn,) = lc.render_conns(spec, {"c0": dataclasses.replace(
        config.tunnels["c0"], remote_cert=None, remote_name="h2")}, {}, nss=same)  # fmt: skip
    assert "\tauthby=ecdsa\n" in ca_conn.text and "\trightca=%same\n" in ca_conn.text


# -- real pluto 4.10 output (recorded by the lab: tests/unit/data/libreswan/4.10) --------------

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "libreswan", "4.10")


def fixture(name: str) -> dict[str, str]:
    """A recorded scenario's sections ("$ whack --showstates", ..., "$ pluto log"), with the
    lab's conn names (`ovs-<peer>`) as ours are (`ovs-<peer>--ovs-t0`)."""
    with open(os.path.join(FIXTURES, f"{name}.txt"), encoding="utf-8") as handle:
        text = re.sub(r'"(ovs-[0-9a-f.:]+)"', r'"\1--ovs-t0"', handle.read())
    sections: dict[str, str] = {}
    for part in re.split(r"^\$ ", text, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
    return sections


def test_recorded_routed_idle() -> None:
    f = fixture("routed-idle")
    assert routed_conns(f["whack --status"]) == {"ovs-10.77.0.2--ovs-t0"}
    assert parse_states(f["whack --showstates"]) == {}


def test_recorded_ike_up_child_refused() -> None:
    for name in ("ike-up-child-refused", "responder-child-refused"):
        f = fixture(name)
        (ike,) = parse_states(f["whack --showstates"], f["whack --trafficstatus"])["ovs-10.77.0.2"]
        assert ike.is_established and ike.children == (), name


def test_recorded_failures() -> None:
    retransmitting = fixture("peer-unreachable-retransmitting")
    (ike,) = parse_states(retransmitting["whack --showstates"])["ovs-10.77.0.2"]
    assert (ike.state, ike.initiator) == ("CONNECTING", True)
    for name, cause in (
        ("auth-failed", Cause.AUTHENTICATION),
        ("no-proposal-chosen", Cause.PROPOSAL),
        ("peer-unreachable-gave-up", Cause.UNREACHABLE),
    ):
        found = failure_of(fixture(name)["pluto log"])
        assert found is not None and found[0] is cause, name


def test_commands_serve_the_control_socket_while_they_run() -> None:
    """whack and addconn run through proc.run with on_wait: called while the program runs,
    the program killed at its timeout."""
    from ovs_ipsec.adapters import proc
    from ovs_ipsec.errors import CommandError

    waits: list[int] = []
    result = proc.run(["sh", "-c", "sleep 0.2; cat"], timeout=5, input="hi",
                      on_wait=lambda: waits.append(1))  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "hi") and waits
    with pytest.raises(CommandError, match="timed out"):
        proc.run(["sleep", "5"], timeout=0.2, on_wait=lambda: None)


def test_asked_up_is_the_up_flag_of_a_conns_policy() -> None:
    """A conn traffic or whack initiated carries UP in its policy until deleted: how a failing
    negotiation whose states no listing saw is still noticed."""
    data = os.path.join(os.path.dirname(__file__), "data", "libreswan", "4.10")

    def read(name: str) -> str:
        with open(os.path.join(data, name), encoding="utf-8") as handle:
            return handle.read()

    assert asked_up(read("auth-failed.txt")) == {"ovs-10.77.0.2"}
    assert asked_up(read("routed-idle.txt")) == frozenset()
    assert asked_up(read("responder-child-refused.txt")) == frozenset()
