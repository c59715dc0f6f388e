"""Bad input and churn against a running daemon, with the real ovsdb-server, charon and kernel.

The fuzz writes a few hundred random option sets (seeded: `OVS_IPSEC_FUZZ_SEED`, default 6, so a
failure replays exactly) with ovs-vsctl, several per transaction, next to a few known-good tunnels.
Each generated set knows what it should become: valid (loaded into charon), invalid because of
named keys (reported with one of them), not IPsec at all, or chaos (anything consistent). The soak
adds, changes and removes 200 tunnels in cycles for `OVS_IPSEC_SOAK_SECONDS` (default 80) and
then expects nothing of ours anywhere and a flat resident set.

Over 400 lines: the fuzzer's generators and its invariants live with the tests that run them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from resilience_lab import (
    FAIL_CLOSED_PRIORITY,
    SKB_MARK_PRIORITY,
    LogCursor,
    add_tunnel,
    charon_actions,
    conn_names,
    conns,
    key_ids,
    options_map,
    ours,
    protection,
    quote,
    rss_kib,
    shared_ids,
    traps,
    wait_loaded,
)

from ovs_ipsec.core import naming
from ovs_ipsec.core.log_text import printable
from ovs_ipsec.tools import pki_builders
from ovs_ipsec.tools.lab import Host, Lab, wait_for

pytestmark = pytest.mark.lab

SEED = int(os.environ.get("OVS_IPSEC_FUZZ_SEED", "6"))
SOAK_SECONDS = float(os.environ.get("OVS_IPSEC_SOAK_SECONDS", "80"))

# -- the fuzz's vocabulary ----------------------------------------------------------------------

SLOTS = [f"fz{i}" for i in range(12)] + ["fz-ü", "fz%41", "f" * 230]
ROUNDS, PER_ROUND = 30, 10
GOOD_MARK = "0x10/0x10"
GOOD = {  # name: (type, remote_ip, extra options); peers no fuzz set ever uses
    "good0": ("gre", "10.77.0.200", {}),
    "good1": ("vxlan", "10.77.0.201", {"dst_port": "4790"}),
    "good2": ("geneve", "fd77::200", {}),
}
ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "äöüßéñ日本語кириллицаελληνικά😀🔑\u200b\u00a0",
    " \t\"'=,{}[]:;\\%$#@!/~`|<>?-_+*&^",
)
BAD_IPS = (
    "host.example",
    "300.1.1.1",
    "10.88.1",
    "flow",
    "fe80::1%eth0",
    "224.0.0.5",
    "0.0.0.0",
    "::",
    "ff02::1",
    "１０.８８.１.１",
    "10.88.1.1/24",
    "",
    "::ffff:1.2.3.4.5",
    "::ffff:224.0.0.5",  # IPv4-mapped multicast: OVS sends to it, we refuse (and block) it
    "10.88.1.1%eth0",
)
BAD_PORTS = ("0", "65536", "-1", "x", "٣٣", "99999999999", "", "0x12b5", "1e3", "+80", "4789x",
             "004790", "70000", " 4790 x")  # fmt: skip
BAD_TYPES = ("stt", "bareudp", "internal", "", "GRE", "gre\u00e9", "patch", "vxlan ")
BAD_MARKS = ("0x10/0x1", "banana", "", "0x1ffffffff", "-1", "٣", "0x10/", "/0x10", "10/0x10/1",
             "0x10/0x10/", "𝟏𝟔")  # fmt: skip
SPECIAL_KEYS = ("psk", "remote_cert", "remote_name", "remote_ip", "local_ip", "dst_port")
# remote_cert paths to files no certificate can come from (make_special_files fills it): each
# must be refused without blocking the daemon (issue 15 items 3 and 5).
SPECIAL_FILES: list[str] = []


def make_special_files(directory: str) -> list[str]:
    """A FIFO (and a link to it), devices, a directory, a file over the size cap, a real
    certificate too large for one VICI value, binary garbage, and a name in unicode."""
    fifo = os.path.join(directory, "cert.fifo")
    os.mkfifo(fifo)
    os.symlink(fifo, os.path.join(directory, "link.pem"))
    os.mkdir(os.path.join(directory, "dir.pem"))
    sans = ["peer"] + [f"host-{i:05d}.a-rather-long-subdomain.example" for i in range(2000)]
    contents = {
        "big.pem": b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20),
        "sans.pem": pki_builders.make_self_signed("peer", san=sans).cert_pem,
        "garbage.pem": bytes(range(256)) * 8,
        "cért-ü 日本.pem": b"\xff\xfe not a certificate",
    }
    for name, data in contents.items():
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(data)
    names = ["cert.fifo", "link.pem", "dir.pem", *contents]
    return [os.path.join(directory, n) for n in names] + ["/dev/ptmx", "/dev/zero"]


def rstr(rng: random.Random, low: int, high: int) -> str:
    alphabet = rng.choice(ALPHABETS) if rng.random() < 0.7 else "".join(ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def free_key(rng: random.Random) -> str:
    """An option key that means nothing to the daemon (never `ipsec_*`, whose meaning may grow)."""
    while True:
        key = rng.choice(("key", "tos", "ttl", "csum", "df_default", "options_blob")) \
            if rng.random() < 0.5 else rstr(rng, 1, 12)  # fmt: skip
        if key and key not in SPECIAL_KEYS and not key.startswith("ipsec_"):
            return key


@dataclass
class Case:
    """One option set for one interface, and what it must become."""

    type: str
    options: dict[str, str]
    expect: str  # "valid", "invalid", "plain" (not IPsec), "chaos"
    keys: frozenset[str] = frozenset()  # invalid: any of these may be the one reported
    conn: str = ""  # valid: the connection that carries it
    psks: list[str] = field(default_factory=list)


def slot_address(slot: int, family: int, rng: random.Random) -> str:
    """Addresses of one slot only: two valid slots never share a peer, so never conflict."""
    if family == 4:
        return f"10.88.{slot}.{rng.randint(1, 254)}"
    return f"fd88::{slot:x}:{rng.randint(1, 0xFFFF):x}"


def valid_case(rng: random.Random, slot: int) -> Case:
    kind = rng.choice(("gre", "geneve", "vxlan"))
    family = rng.choice((4, 6))
    remote = slot_address(slot, family, rng)
    canonical = str(ipaddress.ip_address(remote))
    if family == 4 and rng.random() < 0.2:
        remote = f"::ffff:{remote}"  # IPv4-mapped: what OVS sends is IPv4, so is the connection
    psk = rstr(rng, 12, 64)
    options = {"remote_ip": remote, "psk": psk}
    if kind != "gre" and rng.random() < 0.5:
        options["dst_port"] = str(rng.randint(1, 65535))
    if rng.random() < 0.3:
        options["local_ip"] = "10.77.0.1" if family == 4 else "fd77::1"
    for _ in range(rng.choice((0, 0, 1, 3))):
        options[free_key(rng)] = rstr(rng, 0, 200)
    return Case(kind, options, "valid", conn=f"ovs-{canonical}", psks=[psk])


def invalid_case(rng: random.Random, slot: int) -> Case:
    case = valid_case(rng, slot)
    options, keys = case.options, set()
    kind = case.type
    breakers = rng.sample(("remote_ip", "dst_port", "type", "auth", "huge", "local_ip", "file"),
                          rng.choice((1, 1, 1, 2)))  # fmt: skip
    for breaker in breakers:
        if breaker == "remote_ip":
            if rng.random() < 0.2:
                del options["remote_ip"]
            else:
                options["remote_ip"] = rng.choice(BAD_IPS)
            options.pop("local_ip", None)
            keys.add("remote_ip")
        elif breaker == "dst_port":
            kind = rng.choice(("geneve", "vxlan")) if kind in ("gre", "geneve", "vxlan") else kind
            options["dst_port"] = rng.choice(BAD_PORTS)
            keys.add("dst_port")
        elif breaker == "type":
            kind = rng.choice(BAD_TYPES)
            keys.add("type")
        elif breaker == "auth":
            how = rng.choice(("empty", "huge", "mix", "name", "cert", "cert-abs", "name-empty",
                              "name-wild", "name-ctrl"))  # fmt: skip
            if how == "empty":
                options["psk"] = ""
                keys.add("psk")
            elif how == "huge":
                options["psk"] = rstr(rng, 4097, 4200)
                keys.add("psk")
            elif how == "mix":
                options[rng.choice(("remote_name", "remote_cert"))] = rstr(rng, 1, 20)
                keys.add("psk")
            else:
                options.pop("psk", None)  # the file breaker may have taken it
                key = "remote_name" if how.startswith("name") else "remote_cert"
                options[key] = {"name": "peer", "cert": "peer.pem", "cert-abs": "/etc/peer.pem",
                                "name-empty": " ", "name-wild": rng.choice(("*", "*.example")),
                                "name-ctrl": "peer\x01"}[how]  # fmt: skip
                keys.add(key)
        elif breaker == "huge":
            key = free_key(rng)
            options[key] = rstr(rng, 4097, rng.choice((5000, 20000)))
            keys.add(key)
        elif breaker == "file" and SPECIAL_FILES:
            options.pop("psk", None)
            options["remote_cert"] = rng.choice(SPECIAL_FILES)
            keys |= {"remote_cert", "certificate"}  # no certificate is configured either
        elif breaker == "local_ip":
            remote = options.get("remote_ip", "")
            options["local_ip"] = rng.choice(
                ("fd77::1" if "." in remote else "10.77.0.1", "not-an-ip", "10.77.0.1%x")
            )
            keys.add("local_ip")
    return Case(kind, options, "invalid", keys=frozenset(keys), psks=case.psks)


def plain_case(rng: random.Random, slot: int) -> Case:
    """Tunnel options without psk, remote_cert or remote_name: not an IPsec port at all."""
    options = {"remote_ip": rng.choice((*BAD_IPS, slot_address(slot, 4, rng)))}
    for _ in range(rng.randint(0, 3)):
        options[free_key(rng)] = rstr(rng, 0, 30)
    return Case(rng.choice(("gre", "vxlan", "geneve", "stt")), options, "plain")


def chaos_case(rng: random.Random, slot: int) -> Case:
    """Anything at all. Addresses come from their own range, so chaos never joins a valid slot's
    connection (chaos slots may conflict with each other: that is one more thing to survive)."""
    keys = (*SPECIAL_KEYS, "ipsec_ike", "ipsec_esp", "ipsec_" + rstr(rng, 1, 8), "", "PSK")
    values = (
        lambda: f"10.66.{rng.randint(0, 3)}.{rng.randint(1, 3)}",
        lambda: f"fd66::{rng.randint(1, 3)}",
        lambda: rng.choice(BAD_IPS),
        lambda: str(rng.randint(-(2**40), 2**40)),
        lambda: rstr(rng, 0, 40),
        lambda: rstr(rng, 4000, 4200),
        lambda: "",
    )
    options = {rng.choice(keys): rng.choice(values)() for _ in range(rng.randint(1, 6))}
    kind = rng.choice(("gre", "geneve", "vxlan", *BAD_TYPES, rstr(rng, 1, 10)))
    return Case(kind, options, "chaos")


def random_case(rng: random.Random, slot: int) -> Case:
    pick = rng.random()
    if pick < 0.35:
        return valid_case(rng, slot)
    if pick < 0.75:
        return invalid_case(rng, slot)
    if pick < 0.85:
        return plain_case(rng, slot)
    return chaos_case(rng, slot)


def children(name: str, kind: str) -> set[str]:
    if kind == "gre":
        return {naming.child_name(name)}
    return {naming.child_name(name, "-in"), naming.child_name(name, "-out")}


def is_ipsec(options: dict[str, str]) -> bool:
    return any(key in options for key in ("psk", "remote_cert", "remote_name"))


# -- checks ---------------------------------------------------------------------------------------


def fuzz_problems(a: Host, final: dict[str, Case], log_text: str) -> list[str]:
    """Everything that differs from what the final option sets call for (empty: converged)."""
    problems: list[str] = []
    shown = json.loads(a.appctl("tunnels/show", "--json"))
    loaded = conns(a)
    for name, case in final.items():
        status = shown.get(name)
        where = f"{name} ({case.expect}, type {case.type!r}, options {sorted(case.options)})"
        if not is_ipsec(case.options):
            if status is not None:
                problems.append(f"{where}: not an IPsec port, yet reported: {status}")
            continue
        if status is None:
            problems.append(f"{where}: IPsec port missing from tunnels/show")
            continue
        state, reason, conn = status["state"], status["reason"], status["connection"]
        if case.expect == "valid":
            if state != "configured" or conn != case.conn:
                problems.append(f"{where}: expected configured in {case.conn}, got {status}")
            elif set(loaded.get(conn, {}).get("children", {})) != children(name, case.type):
                problems.append(f"{where}: {conn} in charon lacks its children")
        elif case.expect == "invalid":
            if state != "invalid" or not any(f"{key}: " in reason for key in case.keys):
                problems.append(f"{where}: expected invalid naming one of {sorted(case.keys)}, "
                                f"got {status}")  # fmt: skip
        elif state == "configured":
            if not children(name, case.type) <= set(loaded.get(conn, {}).get("children", {})):
                problems.append(f"{where}: configured but {conn} lacks its children in charon")
        elif state == "invalid":
            if not reason:
                problems.append(f"{where}: invalid without a reason")
        elif not reason.startswith("charon refused"):
            problems.append(f"{where}: unexplained state {status}")
        logged = f"{printable(name)}: invalid IPsec configuration: {reason}"  # names are cut
        if state == "invalid" and logged not in log_text:
            problems.append(f"{where}: its reason was never logged: {reason!r}")
    expected_conns = {s["connection"] for s in shown.values() if s["state"] == "configured"}
    charon_conns = ours(set(loaded))
    if charon_conns != expected_conns:
        problems.append(
            f"charon holds {sorted(charon_conns - expected_conns)} too many and "
            f"{sorted(expected_conns - charon_conns)} too few of our connections"
        )
    expected_secrets = {"ovs-psk-" + c.removeprefix("ovs-") for c in expected_conns}
    if ours(shared_ids(a)) != expected_secrets:
        problems.append(f"secrets {sorted(ours(shared_ids(a)) ^ expected_secrets)} differ")
    return problems


def test_fuzzed_options_never_hurt_the_daemon_or_the_good_tunnels(
    make_lab: Callable[..., Lab],
) -> None:
    """Hundreds of random option sets (bad and huge values, unicode, type changes, PSK and
    certificate options mixed, certificate and remote_cert naming FIFOs, devices and files too
    large, ports removed and re-added, a garbage ipsec_skb_mark) written with
    ovs-vsctl into a running daemon's OVSDB in bursts, with periodic checks (every second) in the
    quiet moments between them. Afterwards the daemon is the same live process and answers;
    every valid tunnel is loaded, every invalid one is reported (status and log) with a key that
    is really wrong, non-IPsec ports are ignored, and charon holds exactly the connections and
    secrets of the configured tunnels. The known-good tunnels were never loaded again, unloaded
    or renegotiated, and keep the same connection and the same kernel policies; the last valid
    ipsec_skb_mark stays in force through every garbage one; no PSK ever reaches the log.
    (Whether the OVSDB session survives multibyte values is the next test's business.)"""
    rng = random.Random(SEED)
    lab = make_lab(1, daemon_args=["--reconcile-interval=1"])
    a = lab.hosts[0]
    pid = a.daemon_pid
    SPECIAL_FILES[:] = make_special_files(a.dir)
    # So that certificate tunnels get as far as reading files: a FIFO and a device, never to
    # be opened, then whatever remote_cert names.
    a.vsctl("set", "open", ".", f"other_config:certificate={SPECIAL_FILES[0]}",
            "other_config:private_key=/dev/ptmx")  # fmt: skip
    a.vsctl("set", "open", ".", f"other_config:ipsec_skb_mark={GOOD_MARK}")
    for name, (kind, remote, extra) in GOOD.items():
        add_tunnel(a, name, kind, remote, psk=f"good-{name}-secret", **extra)
        wait_loaded(a, f"ovs-{remote}", children(name, kind))
    good_conns = {f"ovs-{remote}" for _, remote, _ in GOOD.values()}
    for slot in SLOTS:
        a.vsctl("add-port", "br0", slot, "--", "set", "interface", slot, "type=gre")
    wait_for(lambda: any(p.priority == SKB_MARK_PRIORITY for p in protection(a)), 5,
             what="ipsec_skb_mark block policies")  # fmt: skip
    time.sleep(1.5)  # a periodic check or two with the valid mark in place
    log = LogCursor(a)
    baseline = {c: body for c, body in conns(a).items() if c in good_conns}
    good_policies = frozenset(traps(a)) | frozenset(
        p for p in protection(a) if p.priority == FAIL_CLOSED_PRIORITY
    )
    mark_policies = frozenset(p.key for p in protection(a) if p.mark == GOOD_MARK)

    final: dict[str, Case] = {slot: Case("gre", {}, "plain") for slot in SLOTS}
    written = 0
    psks: list[str] = []
    problems: list[str] = []
    for round_no in range(ROUNDS):
        argv: list[str] = []
        for _ in range(PER_ROUND):
            index = rng.randrange(len(SLOTS))
            slot = SLOTS[index]
            case = random_case(rng, index)
            psks += case.psks
            if rng.random() < 0.1:  # the port goes away and comes back in the same transaction
                argv += ["--", "del-port", "br0", slot, "--", "add-port", "br0", slot]
            argv += ["--", "set", "interface", slot, f"type={quote(case.type)}",
                     f"options={options_map(case.options)}"]  # fmt: skip
            final[slot] = case
            written += 1
        if round_no % 5 == 2 or round_no == ROUNDS - 1:
            argv += ["--", "set", "open", ".",
                     f"other_config:ipsec_skb_mark={quote(rng.choice(BAD_MARKS))}"]  # fmt: skip
        a.vsctl(*argv)
        time.sleep(0.05)
        if round_no % 10 == 9:
            # A quiet moment: the daemon's periodic check runs between two bursts of changes.
            time.sleep(1.3)
            now = {c: body for c, body in conns(a).items() if c in good_conns}
            if now != baseline:
                problems.append(f"round {round_no}: known-good connections changed: {sorted(now)}")

    deadline = time.monotonic() + 20
    while True:
        log_text = log.new()
        found = fuzz_problems(a, final, log_text)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems += found
    if a.daemon_pid != pid or not a.appctl("version"):
        problems.append("the daemon is not the same live process")
    if "unexpected error" in log_text or "Traceback" in log_text:
        problems.append("the daemon logged an unexpected error")
    touched = [
        what for what in charon_actions(log_text)
        if any(what.endswith(f" {c}") or what.endswith(f" ovs-psk-{c[4:]}") for c in good_conns)
    ]  # fmt: skip
    if touched:
        restarts = log_text.count("charon restarted")
        problems.append(f"known-good tunnels were touched {len(touched)} times "
                        f"({restarts} 'charon restarted' passes): {touched[:6]}")  # fmt: skip
    if {c: body for c, body in conns(a).items() if c in good_conns} != baseline:
        problems.append("known-good connections differ from before the fuzz")
    now_policies = frozenset(traps(a)) | frozenset(protection(a))
    if not good_policies <= now_policies:
        replaced = sorted(p.selector for p in good_policies - now_policies)
        problems.append(f"known-good tunnels' kernel policies replaced: {replaced[:6]}")
    kept = frozenset(p.key for p in protection(a) if p.mark == GOOD_MARK)
    if not kept or not {k for k in mark_policies if "proto gre" in k[0]} <= kept:
        problems.append(f"the valid ipsec_skb_mark {GOOD_MARK} is no longer in force after a "
                        f"garbage one ({len(kept)} of its policies left)")  # fmt: skip
    if "other_config:ipsec_skb_mark: invalid IPsec configuration" not in log_text:
        problems.append("the garbage ipsec_skb_mark was never reported")
    leaked = [p for p in psks if p in log_text or p in a.daemon_log()]
    if leaked:
        problems.append(f"{len(leaked)} PSKs appear in the daemon log")
    assert written >= 300
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems)


def test_huge_multibyte_values_never_drop_the_ovsdb_session(make_lab: Callable[..., Lab]) -> None:
    """Option values of tens of kilobytes of multibyte UTF-8, eight per transaction, two dozen
    transactions: the updates reach the daemon in many reads, and a character split between two
    reads never makes it drop its OVSDB session (and re-download the database after a back-off);
    it follows every change, and a tunnel added right after is loaded at once."""
    lab = make_lab(1)
    a = lab.hosts[0]
    text = "日本語😀" * 6000
    for round_no in range(24):
        argv: list[str] = []
        for i in range(8):
            name = f"u{i}"
            if round_no == 0:
                argv += ["--", "add-port", "br0", name]
            options = {"remote_ip": f"10.88.0.{i + 1}", "psk": "k",
                       "blob": text[: 20000 + 7 * round_no + i]}  # fmt: skip
            argv += ["--", "set", "interface", name, "type=gre",
                     f"options={options_map(options, ascii=False)}"]  # fmt: skip
        a.vsctl(*argv)
        time.sleep(0.2)
    add_tunnel(a, "last", "gre", "10.88.9.9", psk="k")
    wait_loaded(a, "ovs-10.88.9.9", {"ovs-last"}, timeout=5)
    dropped = [
        line for line in a.daemon_log().splitlines()
        if "receive error" in line or "connection dropped" in line
    ]  # fmt: skip
    assert not dropped, "\n".join(dropped)


# -- the churn soak -------------------------------------------------------------------------------

SOAK_TUNNELS = 200


def soak_tunnel(cycle: int, i: int, changed: bool) -> tuple[str, str, dict[str, str], bool]:
    """(name, type, options, valid) of tunnel i in `cycle`, before or after the change step.

    Names are new every cycle (state keyed by name must not pile up); addresses alternate between
    two pools (state keyed by address is bounded, like a real deployment's peers)."""
    pool = 90 + cycle % 2
    remote = f"10.{pool}.{i // 250}.{i % 250 + 1}"
    kind = ("gre", "vxlan", "geneve")[i % 3]
    options = {"remote_ip": remote, "psk": f"soak-{cycle}-{i}"}
    valid = i % 10 != 9
    if not valid:
        options["dst_port"] = "not-a-port"
        kind = "vxlan"
    if changed:
        step = i % 4
        if step == 0:
            options["psk"] += "-rotated"
        elif step == 1:
            if kind == "gre":
                kind = "geneve"
            else:
                options["dst_port"] = str(5000 + i)
                valid = True
        elif step == 2:
            options["remote_ip"] = f"10.{pool}.{i // 250 + 100}.{i % 250 + 1}"
    return f"c{cycle}t{i}", kind, options, valid


def soak_set(host: Host, cycle: int, changed: bool) -> set[str]:
    """Write all tunnels of `cycle` (one transaction); return the connections they call for."""
    argv: list[str] = []
    expected = set()
    for i in range(SOAK_TUNNELS):
        name, kind, options, valid = soak_tunnel(cycle, i, changed)
        if not changed:
            argv += ["--", "add-port", "br0", name]
        argv += ["--", "set", "interface", name, f"type={kind}",
                 f"options={options_map(options)}"]  # fmt: skip
        if valid:
            expected.add(f"ovs-{options['remote_ip']}")
    host.vsctl(*argv)
    return expected


def converged(host: Host, expected: set[str]) -> bool:
    return ours(conn_names(host)) == expected and ours(shared_ids(host)) == {
        "ovs-psk-" + c.removeprefix("ovs-") for c in expected
    }


def test_churn_soak_leaves_nothing_behind_and_memory_flat(make_lab: Callable[..., Lab]) -> None:
    """200 tunnels (a tenth of them invalid) added, changed (PSK rotated, port or type changed,
    peer moved) and removed, cycle after cycle, with names never reused and periodic checks every
    second: each step converges, and afterwards charon holds no connection, secret or key of
    ours, no trap policy is left and no block policy of ours is in the kernel. The daemon's
    resident set after the last cycle is within 2 MiB + 5 % of what it was after the first. The
    allowance covers the allocator's arenas and the bounded caches (address parsing, the IDL's
    row objects) settling over the first few cycles (about 0.7 MiB here); state kept by mistake
    at even 1 KiB per tunnel per cycle would add about 5 MiB over the default ~25 cycles.
    Fail-closed blocks of removed or changed ports linger for a second (--protection-linger=1),
    so the lingering itself is churned too and must leave nothing behind either."""
    lab = make_lab(1, daemon_args=["--reconcile-interval=1", "--protection-linger=1"])
    a = lab.hosts[0]
    pid = a.daemon_pid
    assert pid is not None
    started = time.monotonic()
    rss: list[int] = []
    cycle = 0
    while cycle < 3 or time.monotonic() - started < SOAK_SECONDS:
        expected = soak_set(a, cycle, changed=False)
        wait_for(lambda e=expected: converged(a, e), 30, what=f"cycle {cycle}: added")
        assert protection(a), "no fail-closed policies for 200 tunnels"
        expected = soak_set(a, cycle, changed=True)
        wait_for(lambda e=expected: converged(a, e), 30, what=f"cycle {cycle}: changed")
        names = [soak_tunnel(cycle, i, False)[0] for i in range(SOAK_TUNNELS)]
        a.vsctl(*[arg for name in names for arg in ("--", "del-port", "br0", name)])
        wait_for(lambda: converged(a, set()) and not protection(a), 30,
                 what=f"cycle {cycle}: removed")  # fmt: skip
        rss.append(rss_kib(pid))
        cycle += 1

    assert a.daemon_pid == pid, "the daemon restarted during the soak"
    assert not ours(conn_names(a)) and not ours(shared_ids(a)) and not key_ids(a)
    assert not protection(a), "block policies of ours left in the kernel"
    assert not traps(a), f"charon policies left: {sorted(p.selector for p in traps(a))[:4]}"
    assert a.appctl("ipsec/status") == "{}"
    growth = rss[-1] - rss[0]
    print(f"soak: {cycle} cycles in {time.monotonic() - started:.1f} s, RSS KiB {rss}")
    assert growth <= 2048 + rss[0] // 20, f"RSS grew {growth} KiB over {cycle} cycles: {rss}"
