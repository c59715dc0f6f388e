"""What charon may hold, say or refuse that the daemon must survive, against a real charon:
foreign IKE_SAs with odd names, and which names charon's VICI takes at all (issue 15 item 11);
charon's 512 KiB message limit and a certificate too large for one VICI value (item 5). A flood
of log events (item 20) is measured by bench/ike_flood.py.

Foreign connections are loaded with VICI messages written by the test itself (the vici package
encodes every name as UTF-8, and charon keeps names as plain bytes)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from resilience_lab import add_tunnel, conns

from ovs_ipsec.adapters.charon import Charon
from ovs_ipsec.core import vici_wire
from ovs_ipsec.core.sas import parse_sas
from ovs_ipsec.core.vici_wire import PacketType
from ovs_ipsec.tools import pki_builders, pki_tool
from ovs_ipsec.tools.lab import Host, Lab, wait_for

pytestmark = pytest.mark.lab

# No host answers here (the lab's hosts are 10.77.0.1..n): an IKE_SA charon initiates to it
# stays CONNECTING, retransmitting, for minutes.
SILENT_PEER = "10.77.0.200"


def raw_request(host: Host, command: bytes, message: bytes) -> dict[str, object]:
    """One VICI request whose command and message are given as bytes, not text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(host.vici_path)
        packet = bytes((PacketType.CMD_REQUEST, len(command))) + command + message
        sock.sendall(vici_wire.frame(packet))
        buffer = bytearray()
        while (reply := vici_wire.next_packet(buffer)) is None:
            chunk = sock.recv(65536)
            assert chunk, "charon closed the session"
            buffer += chunk
    parsed = vici_wire.decode_packet(reply)
    assert parsed.type == PacketType.CMD_RESPONSE, parsed
    return vici_wire.decode_message(parsed.payload)


def load_foreign_conn(host: Host, name: bytes) -> dict[str, object]:
    """A PSK connection named `name` (any bytes) to SILENT_PEER, its IKE_SA initiated; charon's
    reply to the load-conn."""
    body = vici_wire.encode_message({
        "version": "2", "local_addrs": [host.ipv4], "remote_addrs": [SILENT_PEER],
        "local": {"auth": "psk"}, "remote": {"auth": "psk"},
        "children": {"foreign-child": {"esp_proposals": ["aes128-sha256"]}},
    })  # fmt: skip
    conn = bytes((vici_wire.SECTION_START, len(name))) + name + body
    reply = raw_request(host, b"load-conn", conn + bytes((vici_wire.SECTION_END,)))
    if reply.get("success") != "yes":
        return reply
    secret = vici_wire.encode_message({"type": "IKE", "data": "foreign", "owners": [SILENT_PEER]})
    assert raw_request(host, b"load-shared", secret).get("success") == "yes"
    initiate = vici_wire.encode_message({"child": "foreign-child", "timeout": "-1"})
    initiate += bytes((vici_wire.KEY_VALUE, 3)) + b"ike" + len(name).to_bytes(2, "big") + name
    raw_request(host, b"initiate", initiate)
    return reply


def test_foreign_sas_with_odd_names_leave_charon_reachable(make_lab: Callable[..., Lab]) -> None:
    """issue 15 item 11, against a real charon. What charon allows: its VICI parser refuses
    any name that is not printable ASCII (`vici_stringify`), so a name that is not UTF-8 can
    only come from another config back-end (stroke, sql), which the lab's charon does not load;
    that listing is tests/unit/test_charon_session.py's. Here a foreign IKE_SA with every
    printable character in its name lives beside ours, listed at every check, and the daemon
    never takes it for a lost charon."""
    lab = make_lab(2, daemon_args=["--reconcile-interval=1"])
    a, b = lab.hosts
    add_tunnel(a, "tb", "gre", b.ipv4, psk="bee-key")
    wait_for(lambda: "tb" in a.appctl("tunnels/show"), 10, what="tunnel shown")
    refused = load_foreign_conn(a, b"foreign-\xff\xfe-\xc3(")
    assert refused == {"success": "no", "errmsg": "parsing request failed"}
    odd = bytes(range(0x20, 0x7F))
    assert load_foreign_conn(a, odd).get("success") == "yes"

    charon = Charon(a.vici_path, timeout=10)
    try:
        listing = wait_for(
            lambda: [e for e in charon.list_sas() if odd.decode() in e],
            10,
            what="the foreign IKE_SA listed",
        )
        assert parse_sas(listing) == {}  # foreign: not ours, and not an error
    finally:
        charon.close()
    log_before = len(a.daemon_log())
    time.sleep(4)  # several periodic checks, each with a list-sas
    assert "charon unreachable" not in a.daemon_log()[log_before:]
    assert "charon unreachable" not in a.daemon_log()


def test_charon_drops_a_session_announcing_more_than_512_kib(make_lab: Callable[..., Lab]) -> None:
    """The limit the daemon keeps every request under (vici_wire.MAX_PACKET), as charon
    enforces it: a longer message costs the whole session, every request pipelined on it."""
    (a,) = make_lab(1, daemon=False).hosts
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(a.vici_path)
        sock.sendall((vici_wire.MAX_PACKET + 1).to_bytes(4, "big"))
        assert sock.recv(1) == b""  # closed, not waiting for the rest
    charon = Charon(a.vici_path, timeout=10)
    try:
        body = vici_wire.encode_message({f"k{i}": "x" * 60000 for i in range(9)})
        (refused, version) = charon.pipeline([("load-conn", body), ("version", {})])
        assert "not sent" in str(refused) and version["daemon"]
    finally:
        charon.close()


def test_an_80_kib_remote_cert_makes_its_tunnel_invalid_and_the_daemon_lives(
    make_lab: Callable[..., Lab],
) -> None:
    """issue 15 item 5 against a real daemon and charon: a remote_cert with 2,000 SANs (81 KiB
    as PEM) raised OverflowError while planning, and the daemon exited, again at every
    restart. Now that tunnel is invalid with the reason and a PSK tunnel beside it is loaded."""
    lab = make_lab(2, daemon_args=["--reconcile-interval=1"])
    a, b = lab.hosts
    local = pki_builders.make_self_signed("h1")
    names = ["h2"] + [f"host-{i:05d}.a-rather-long-subdomain.example" for i in range(2000)]
    big = pki_builders.make_self_signed("h2", san=names).cert_pem
    assert len(big) > 80 * 1024
    paths = {}
    for name, data in (("cert", local.cert_pem), ("key", local.key_pem), ("peer", big)):
        paths[name] = os.path.join(a.dir, f"{name}.pem")
        pki_tool.write_atomic(Path(paths[name]), data, 0o600)
    a.vsctl("set", "Open_vSwitch", ".", f"other_config:certificate={paths['cert']}",
            f"other_config:private_key={paths['key']}")  # fmt: skip
    add_tunnel(a, "big", "gre", b.ipv4, remote_cert=paths["peer"])
    add_tunnel(a, "ok", "gre", b.ipv6, psk="fine")
    wait_for(
        lambda: "big: invalid IPsec configuration: remote_cert: a certificate of" in a.daemon_log(),
        10,
        what="the certificate refused with its key named",
    )
    wait_for(lambda: f"ovs-{b.ipv6}" in conns(a), 10, what="the PSK tunnel loaded")
    pid = a.daemon_pid
    time.sleep(2.5)  # periodic re-reads plan it again, and again refuse it
    assert a.daemon_pid == pid and "charon takes at most 65535" in a.appctl("tunnels/show")
    assert f"ovs-{b.ipv4}" not in conns(a)
