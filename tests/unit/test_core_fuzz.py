"""Hypothesis fuzzing of the whole pure pipeline: OVSDB snapshot -> parse_config -> plan ->
status.fold -> render, with arbitrary option maps (real and random keys, unicode, huge values,
bad addresses, marks and ports, type changes, random other_config); and of the incremental
Planner with whatever the certificate files turn out to be (what adapters/files.py says of a
FIFO, a device or a file too large; garbage; certificates too large for VICI) and names that
are not valid unicode.

PSKs are drawn from a distinctive alphabet-free pattern ("Zq9PSK" + hex + "Kx") that no other
strategy can produce, so finding one in any output is a leak, not a coincidence.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ovs.json
from fakes import unread_row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovs_ipsec.adapters.xfrm.iproute2 import parse_policies, parse_states, redact_states
from ovs_ipsec.core import render
from ovs_ipsec.core.block_policies import FAIL_CLOSED_PRIORITY, plan_protection
from ovs_ipsec.core.connections import plan
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.log_text import NAME_LIMIT, printable, redact_secrets
from ovs_ipsec.core.model import (
    InterfaceRow,
    Invalid,
    InvalidTunnel,
    PortStatus,
    Secret,
    Snapshot,
)
from ovs_ipsec.core.parse import is_ipsec_port, parse_config
from ovs_ipsec.core.reconcile import Applied, LoadKey, diff, record
from ovs_ipsec.core.status import View, fold
from ovs_ipsec.tools import pki_builders

PSK_MARK = "Zq9PSK"

psks = st.integers(0, 2**48).map(lambda n: f"{PSK_MARK}{n:x}Kx")

# A few peers, drawn often, so tunnels share peers (grouping, conflicts); then anything.
good_addresses = st.sampled_from(
    ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:DB8::2", "198.51.100.7", "fe80::1"]
)
addresses = st.one_of(
    good_addresses,
    good_addresses,
    good_addresses,
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),  # IPv4-mapped: OVS sends IPv4
    st.ip_addresses(v=6).map(lambda a: f"{a}%{a.packed[0] % 3}"),  # scoped
    st.sampled_from(
        [
            "",
            " ",
            "flow",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "1.2.3",
            "1.2.3.4/24",
            "fe80::1%eth0",
            "::ffff:192.0.2.1",
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:c000:202",
            "0:0:0:0:0:ffff:192.0.2.2",
            "::192.0.2.2",
            "192.0.2.2%eth0",
            "fe80::1%1",
            "fe80::1%",
            " 192.0.2.2 ",
            "host.example",
            "\x00",
            "１.２.３.４",
        ]
    ),
)
ports = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["", " ", " 4789", "6081 ", "0x10", "1e3", "+1", "²", "٨٠", "４７８９", "-0"]),
    # What OVS's atoi reads as a port though we refuse it: suffixes, signs, leading zeros,
    # white space, wrap-around past 65535, saturation.
    st.tuples(
        st.sampled_from(["", " ", "\t", "+", "-", "0", "00", " +0"]),
        st.integers(0, 2**20),
        st.sampled_from(["", "x", " ", ".5", "\n", "e2"]),
    ).map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
    st.sampled_from(["99999999999999999999999", "-99999999999999999999999", "4294967296"]),
)
marks = st.one_of(
    st.tuples(st.integers(0, 2**33), st.integers(0, 2**33)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.integers(0, 2**33), st.integers(0, 2**33)).map(lambda t: f"{t[0]:#x}/{t[1]:#x}"),
    st.integers(-1, 2**33).map(str),
    st.sampled_from(["0/1", "1/1", "", "/", "1/", "x/y", "1_0", "٣", "0x", "1/1/1"]),
)
paths = st.sampled_from(
    ["/etc/ipsec/host.pem", "/etc/ipsec/host.key", "/etc/ca.pem", "rel.pem", "", " ", "/"]
)
huge = st.tuples(st.sampled_from("x/é🔑0.:"), st.integers(4000, 10_000)).map(lambda t: t[0] * t[1])
short_junk = st.one_of(st.text(max_size=30), st.sampled_from(["true", "false", "yes", "maybe"]))
# Huge values are drawn now and then, not so often that they reject most tunnels.
junk = st.one_of(short_junk, short_junk, short_junk, short_junk, huge)

# Values for each real key; any other key gets junk. No strategy but `psks` yields PSK_MARK.
VALUES: dict[str, st.SearchStrategy[str]] = {
    "remote_ip": addresses,
    "local_ip": addresses,
    "dst_port": ports,
    # Plain text (tests, tools) or a Secret, as the OVSDB adapter hands it over.
    "psk": st.one_of(psks, psks.map(Secret), st.just("")),
    "remote_cert": st.one_of(paths, junk),
    "remote_name": st.one_of(
        st.sampled_from(["peer", "host1", "", "*", "*.example", "peer*", "a\nb", "x\x00", "\x85"]),
        junk,
    ),
    "ipsec_skb_mark": marks,
    "ipsec_forceencaps": junk,
    "key": junk,
}
TUNNEL_KEYS = [
    "remote_ip",
    "local_ip",
    "dst_port",
    "psk",
    "remote_cert",
    "remote_name",
    "ipsec_forceencaps",
    "key",
]
SUPPORTED_TYPES = ["gre", "ip6gre", "geneve", "vxlan", "stt"]
TYPES = ["erspan", "ip6erspan", "bareudp", "gtpu", "lisp", "", "internal"]
types = st.one_of(
    st.sampled_from(SUPPORTED_TYPES),
    st.sampled_from(SUPPORTED_TYPES),
    st.sampled_from(SUPPORTED_TYPES),
    st.sampled_from(SUPPORTED_TYPES),
    st.sampled_from(TYPES),
    st.text(max_size=6),
)


@st.composite
def option_maps(draw: st.DrawFn) -> dict[str, str]:
    keys = draw(
        st.lists(
            st.one_of(st.sampled_from(TUNNEL_KEYS), st.text(max_size=12)), max_size=5, unique=True
        )
    )
    # Most draws ask for IPsec and have a remote_ip, so deep paths get exercised.
    if draw(st.integers(0, 9)) < 8:
        keys.append(draw(st.sampled_from(["psk", "psk", "psk", "remote_cert", "remote_name"])))
        keys.append("remote_ip")
    options = {}
    for key in keys:
        options[key] = draw(VALUES.get(key, junk))
    return options


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    names = draw(
        st.lists(
            st.one_of(st.sampled_from(["gre0", "vx0", "a-in", "a b", "é/%"]), st.text(max_size=10)),
            max_size=7,
            unique=True,
        )
    )
    rows = tuple(InterfaceRow(name, draw(types), draw(option_maps())) for name in names)
    global_keys = draw(
        st.lists(
            st.sampled_from(
                ["certificate", "private_key", "ca_cert", "ipsec_skb_mark", "ipsec_fail_open"]
            ),
            unique=True,
        )
    )
    other_config = {
        key: draw(marks if key == "ipsec_skb_mark" else st.one_of(paths, junk))
        for key in global_keys
    }
    other_config.update(draw(st.dictionaries(st.text(max_size=8), junk, max_size=2)))
    return Snapshot(rows, other_config)


@dataclass(frozen=True)
class Health:
    """The fields render reads from the daemon's health (plain data, not our code)."""

    charon_reachable: bool
    charon_error: str
    ike_daemon: str = "charon"


def run_pipeline(snapshot: Snapshot, data: st.DataObject) -> dict[str, Any]:
    config = parse_config(snapshot)
    desired = plan(config)
    conns = sorted(desired.conns)
    loaded = frozenset(data.draw(st.lists(st.sampled_from(conns), unique=True)) if conns else [])
    failures = (
        data.draw(st.dictionaries(st.sampled_from(conns), st.text(max_size=20))) if conns else {}
    )
    health = Health(data.draw(st.booleans()), "connection refused")
    statuses = fold(
        View(
            desired,
            loaded,
            failures,
            charon_error=None if health.charon_reachable else health.charon_error,
        )
    )
    actions = diff(desired, Applied())
    applied = Applied()
    for action in actions:
        record(applied, action, "kid" if isinstance(action, LoadKey) else "")
    # What vswitchd reports of each port, and the kernel as listed (issue 16: upstream's lines).
    ports = {
        name: PortStatus(
            data.draw(st.none() | st.integers(1, 65279)), data.draw(st.none() | st.booleans())
        )
        for name in statuses
    }
    kernel = render.Kernel(KERNEL_POLICIES, KERNEL_STATES)
    outputs = {
        "text": render.tunnels_text(config, statuses, health, None, ports, kernel),
        "tunnels": render.to_json(render.tunnels_json(config, statuses, None, ports, kernel)),
        "status": render.to_json(render.ipsec_status_json(statuses)),
        "configs": [render.tunnel_config_json(config, name) for name in statuses],
    }
    return {
        "config": config,
        "desired": desired,
        "statuses": statuses,
        "actions": actions,
        "applied": applied,
        "outputs": outputs,
    }


_LISTINGS = Path(__file__).resolve().parent / "data" / "upstream_show"
KERNEL_POLICIES = parse_policies((_LISTINGS / "ip_xfrm_policy.txt").read_text())
KERNEL_STATES = parse_states(redact_states((_LISTINGS / "ip_xfrm_state.txt").read_text()))

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(snapshots(), st.data())
def test_pipeline_never_raises_and_every_rejection_has_a_reason(
    snapshot: Snapshot, data: st.DataObject
) -> None:
    """Any snapshot goes through parse, plan, fold, diff and render without raising; every
    IPsec port ends up exactly once (loaded or invalid) and non-IPsec ports never appear;
    every invalid tunnel carries at least one Invalid with a non-empty key and reason."""
    result = run_pipeline(snapshot, data)
    config, desired, statuses = result["config"], result["desired"], result["statuses"]
    ipsec_ports = {row.name for row in snapshot.interfaces if is_ipsec_port(row.options)}
    assert set(config.tunnels) | set(config.invalid) == ipsec_ports
    assert not set(config.tunnels) & set(config.invalid)
    planned = [name for conn in desired.conns.values() for name in conn.tunnels]
    assert len(planned) == len(set(planned))
    assert set(planned) | set(desired.invalid) == ipsec_ports
    assert not set(planned) & set(desired.invalid)
    assert set(statuses) == ipsec_ports
    for invalid in [*config.invalid.values(), *desired.invalid.values()]:
        assert isinstance(invalid, InvalidTunnel)
        assert invalid.errors
        for error in invalid.errors:
            assert isinstance(error, Invalid) and error.key and error.reason
    for error in config.global_config.errors:
        assert error.key and error.reason
    for status in statuses.values():
        if status.state.value == "invalid":
            assert status.reason
    json.loads(result["outputs"]["tunnels"])
    json.loads(result["outputs"]["status"])
    if not ipsec_ports:
        assert "No tunnels configured with IPsec" in result["outputs"]["text"]


@FUZZ
@given(snapshots(), st.data())
def test_no_psk_in_any_output_or_repr(snapshot: Snapshot, data: st.DataObject) -> None:
    """No PSK value ever appears in render output, nor in repr() or str() of the parsed model,
    the plan, the statuses, the actions or the believed state, nor in any reason."""
    result = run_pipeline(snapshot, data)
    texts = [json.dumps(result["outputs"], default=str)]
    for key in ("config", "desired", "statuses", "actions", "applied"):
        texts += [repr(result[key]), str(result[key])]
    for invalid in result["config"].invalid.values():
        texts += [e.describe(invalid.name) for e in invalid.errors]
    for invalid in result["desired"].invalid.values():
        texts += [e.describe(invalid.name) for e in invalid.errors]
    for text in texts:
        assert PSK_MARK not in text


@st.composite
def snapshot_changes(draw: st.DrawFn) -> tuple[Snapshot, Snapshot]:
    """A snapshot and a later one: same ports with some types and options changed, some
    removed, some added, and maybe another other_config."""
    before = draw(snapshots())
    rows = []
    for row in before.interfaces:
        change = draw(st.sampled_from(["keep", "type", "options", "drop"]))
        if change == "type":
            rows.append(InterfaceRow(row.name, draw(types), row.options))
        elif change == "options":
            rows.append(InterfaceRow(row.name, row.type, draw(option_maps())))
        elif change == "keep":
            rows.append(row)
    added = draw(snapshots())
    taken = {row.name for row in rows}
    rows += [row for row in added.interfaces if row.name not in taken]
    other_config = draw(st.sampled_from([before.other_config, added.other_config]))
    return before, Snapshot(tuple(rows), other_config)


@FUZZ
@given(snapshot_changes())
def test_any_change_converges_without_leaking(change: tuple[Snapshot, Snapshot]) -> None:
    """From the charon state of one snapshot, the actions towards any later snapshot (type
    changes, option changes, ports added and removed) converge: recording them leaves an
    empty diff; none of them shows a PSK in its repr."""
    before, after = change
    applied = Applied()
    for action in diff(plan(parse_config(before)), applied):
        record(applied, action, "kid" if isinstance(action, LoadKey) else "")
    desired = plan(parse_config(after))
    actions = diff(desired, applied)
    for action in actions:
        assert PSK_MARK not in repr(action) and PSK_MARK not in str(action)
        record(applied, action, "kid" if isinstance(action, LoadKey) else "")
    assert diff(desired, applied) == []
    assert set(applied.conns) == set(desired.conns)


secret_values = st.text(max_size=40).map(lambda t: f"{PSK_MARK}{t}")


@given(secret_values)
def test_secret_never_shows_its_value(value: str) -> None:
    """Secret's value never leaks through repr, str, format, f-strings, %-formatting,
    json.dumps(default=str), logging, or the repr of a container holding it; reveal() alone
    returns it."""
    secret = Secret(value)
    record_ = logging.LogRecord("t", logging.INFO, __file__, 1, "psk %s %r", (secret, secret), None)
    shown = [
        repr(secret),
        str(secret),
        format(secret),
        format(secret, ""),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        "%s %r" % (secret, secret),  # noqa: UP031 - the %-operator is what is tested
        "{} {!r}".format(secret, secret),  # noqa: UP032 - str.format is what is tested
        json.dumps({"psk": secret}, default=str),
        json.dumps([secret], default=repr),
        repr([secret, {"k": secret}, (secret,)]),
        record_.getMessage(),
        str(ValueError(secret)),
    ]
    for text in shown:
        assert PSK_MARK not in text
    assert secret.reveal() == value
    assert secret == Secret(value)
    assert secret != Secret(value + "x")


@given(secret_values, st.sampled_from(["psk", "PSK"]), st.integers(0, 3))
def test_a_psk_is_redacted_in_every_form_a_log_line_shows_it(
    value: str, key: str, cut: int
) -> None:
    """Whatever the value (quotes, backslashes, newlines, unicode), the ovs library's JSON of
    an OVSDB update, a Python repr of options and `psk=...` lose it to redact_secrets, also
    when the message is cut inside the value."""
    texts = [
        "received notification, params="
        + ovs.json.to_string(["x", {"Interface": {"u": {"new": {"options": [
            "map", [["local_ip", "1.2.3.4"], [key, value], ["remote_ip", "10.0.0.2"]]]}}}}]),
        repr({key: value, "remote_ip": "10.0.0.2"}),
        f"options:{key}={value.split()[0] if value.split() else value}",
    ]  # fmt: skip
    for text in texts:
        # A message cut anywhere after the key's value has begun.
        start = text.index(PSK_MARK)
        for end in (len(text), start + len(PSK_MARK) + cut):
            assert PSK_MARK not in redact_secrets(text[:end]), text[:end]


# -- what OVS sends, computed by the C library itself -------------------------------------------

_LIBC = ctypes.CDLL(None)
_LIBC.atoi.argtypes = [ctypes.c_char_p]
_LIBC.atoi.restype = ctypes.c_int
# lib/netdev-vport.c: each type's protocol and default port (0: none) in the kernel datapath.
_OVS_TYPES = {"gre": (47, 0), "ip6gre": (47, 0), "erspan": (47, 0), "ip6erspan": (47, 0),
              "geneve": (17, 6081), "vxlan": (17, 4789), "lisp": (17, 4341), "gtpu": (17, 2152),
              "bareudp": (17, 0), "stt": (6, 7471)}  # fmt: skip


def ovs_destination(row: InterfaceRow) -> tuple[str | None, int, int | None] | None:
    """(address or None for `flow`, protocol, port or None) that OVS sends this port's packets
    to, as OVS decides it: inet_pton (glibc) for remote_ip, unmapped when IPv4-mapped, multicast
    refused before that; `htons(atoi(dst_port))` (glibc's atoi), the default for 0. None when
    OVS creates no tunnel."""
    if row.type not in _OVS_TYPES:
        return None
    proto, default = _OVS_TYPES[row.type]
    text = row.options.get("remote_ip")
    if text is None or "\0" in text:
        return None
    address: str | None
    if text == "flow":
        address = None
    else:
        try:
            if ":" in text:
                packed = socket.inet_pton(socket.AF_INET6, text)
                if packed[0] == 0xFF or packed == bytes(16):
                    return None  # multicast refused; unset
                mapped = packed[:12] == bytes(10) + b"\xff\xff"
                ip = ipaddress.ip_address(packed[12:] if mapped else packed)
            else:
                ip = ipaddress.ip_address(socket.inet_pton(socket.AF_INET, text))
                if ip.is_multicast:
                    return None
        except OSError:
            return None
        if ip.is_unspecified:
            return None  # sent to this host, not off it: nothing to protect
        address = f"{ip}/{32 if ip.version == 4 else 128}"
    port: int | None = None
    if proto != 47:
        raw = row.options.get("dst_port")
        port = default
        if raw is not None and "\0" not in raw:
            port = (_LIBC.atoi(raw.encode()) & 0xFFFF) or default
        port = port or None
    return address, proto, port


@FUZZ
@given(snapshots())
def test_names_and_keys_reach_no_reason_raw(snapshot: Snapshot) -> None:
    """Names and option keys with control characters (a newline forges a log line) and any
    length: every invalid reason and every name as logged is one line of bounded length."""
    config = parse_config(snapshot)
    for name, invalid in config.invalid.items():
        for text in (printable(name), invalid.reason, *(e.describe("x") for e in invalid.errors)):
            assert not any(ch in text for ch in "\n\r\x00\x1b\x85\u2028"), text
        assert len(printable(name)) <= 4 * (NAME_LIMIT + 3)


@FUZZ
@given(snapshots())
def test_every_packet_ovs_sends_for_an_ipsec_port_meets_a_block(snapshot: Snapshot) -> None:
    """Whatever the options (IPv4-mapped and scoped addresses, ports OVS reads with atoi, types
    IPsec lacks), for a port with IPsec options and no ipsec_fail_open, the destination OVS
    computes is blocked both ways (issue 15, items 2 and 6), valid tunnel or not."""
    config = parse_config(snapshot)
    if config.global_config.fail_open:
        return
    blocks = {
        (spec.direction, spec.src, spec.dst, spec.proto, spec.dport)
        for spec in plan_protection(config)
        if spec.priority == FAIL_CLOSED_PRIORITY
    }
    for row in snapshot.interfaces:
        destination = ovs_destination(row) if is_ipsec_port(row.options) else None
        if destination is None:
            continue
        address, proto, port = destination
        # remote_ip=flow: every address, both families
        remotes = ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"] if address is None else [address]
        for remote in remotes:
            halves = ("::/1", "8000::/1") if ":" in remote else ("0.0.0.0/1", "128.0.0.0/1")
            for half in halves:
                assert ("out", half, remote, proto, port) in blocks, (row, destination)
                assert ("in", remote, half, proto, port) in blocks, (row, destination)


@FUZZ
@given(snapshots())
def test_no_wildcard_or_control_character_reaches_a_remote_identity(snapshot: Snapshot) -> None:
    """charon matches `*` in an FQDN identity as a wildcard: no valid tunnel, and no connection
    planned, has one (issue 15, item 9)."""
    config = parse_config(snapshot)
    for tunnel in config.tunnels.values():
        name = tunnel.remote_name or ""
        assert "*" not in name and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name)
    for conn in plan(config).conns.values():
        assert "*" not in conn.remote_id


# -- the incremental planner, with files of every kind ---------------------------------------


@functools.cache
def real_files() -> tuple[bytes, ...]:
    """A certificate and its key, one with 2,000 SANs (81 KiB: more than a VICI value holds),
    a CA, and a file of two certificates."""
    host = pki_builders.make_self_signed("peer")
    many = pki_builders.make_self_signed(
        "peer", san=["peer"] + [f"h{i:05d}.a-rather-long-subdomain.example" for i in range(2000)]
    )
    ca = pki_builders.make_ca("fuzz CA")
    return (host.cert_pem, host.key_pem, many.cert_pem, many.key_pem, ca.cert_pem,
            host.cert_pem + ca.cert_pem)  # fmt: skip


file_contents = st.one_of(
    st.sampled_from([
        "cannot read {path}: No such file or directory",
        "{path} is not a regular file (a FIFO)",
        "{path} is not a regular file (a character device)",
        "cannot read {path}: Is a directory",
        "{path} is larger than 1048576 bytes",
    ]),
    st.binary(max_size=300),
    st.sampled_from(range(6)).map(lambda i: real_files()[i]),
    st.sampled_from(range(6)).map(lambda i: real_files()[i]),
    st.integers(65_000, 70_000).map(lambda n: b"-----BEGIN CERTIFICATE-----\n" + b"A" * n),
)  # fmt: skip
# Lone surrogates: what a JSON string from OVSDB may hold, and what no UTF-8 encoder takes.
odd_names = st.sampled_from(["t\udcff", "\ud800", "é\udc80x", "a" * 300, "ok"])
cert_paths = st.sampled_from(["/c.pem", "/k.pem", "/ca.pem", "/peer.pem", "/p\udcff.pem"])


@FUZZ
@given(snapshots(), st.data())
def test_planner_never_raises_whatever_the_files_and_names(
    snapshot: Snapshot, data: st.DataObject
) -> None:
    """Certificate options pointing at files of every kind, and interface names VICI cannot
    carry: every IPsec port is loaded or invalid with a reason, never an exception and never
    an internal error (those are for bugs, and the fuzz should find none)."""
    contents: dict[str, bytes | str] = {}

    def read(paths: Iterable[str]) -> Mapping[str, bytes | str]:
        for path in paths:
            if path not in contents:
                drawn = data.draw(file_contents)
                contents[path] = drawn.format(path=path) if isinstance(drawn, str) else drawn
        return {path: contents[path] for path in paths}

    rows = list(snapshot.interfaces)
    for _ in range(data.draw(st.integers(0, 3))):
        options = {
            "remote_ip": data.draw(good_addresses),
            data.draw(st.sampled_from(["remote_cert", "remote_name"])): data.draw(cert_paths),
        }
        rows.append(InterfaceRow(data.draw(odd_names), data.draw(types), options))  # fmt: skip
    by_name = {row.name: row for row in rows}
    other_config = dict(snapshot.other_config)
    for key in ("certificate", "private_key", "ca_cert"):
        other_config[key] = data.draw(cert_paths)
    planner = Planner(read, unread_row)
    delta = planner.update({f"u{i}": r for i, r in enumerate(by_name.values())}, other_config,
                           dt.datetime.now(dt.UTC))  # fmt: skip
    assert delta.internal_errors == []
    ipsec_ports = {name for name, row in by_name.items() if is_ipsec_port(row.options)}
    planned = {name for conn in planner.desired.conns.values() for name in conn.tunnels}
    invalid = planner.desired.invalid
    assert planned | set(invalid) == ipsec_ports and not planned & set(invalid)
    for entry in invalid.values():
        assert entry.errors and all(e.key and e.reason for e in entry.errors)
    for conn in planner.desired.conns.values():
        assert len(conn.wire) < 512 * 1024
