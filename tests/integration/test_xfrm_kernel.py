"""Xfrm and the protection plan against the real kernel, each test in fresh network namespaces.

Hosts are namespaces joined by a veth pair: A (10.77.0.1, fd77::1) holds the policies, B
(10.77.0.2-4, fd77::2-4) is the peer. The test process enters a namespace with setns(2) (the
`ip` child processes and every socket created inside inherit it); a socket with SO_MARK stands in
for the skb mark OVS would set. Outbound: a block makes sendto() fail with EPERM and raises
XfrmOutPolBlock; a trap with no SA lets sendto() succeed, raises XfrmOutNoStates and puts nothing
on the wire. Inbound: a block raises XfrmInPolBlock and the receiving socket gets nothing.

Over 400 lines: one test per kernel behaviour the protection relies on, sharing the namespace and
packet helpers.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import shutil
import socket
import time
from dataclasses import dataclass, field

import pytest

from ovs_ipsec.adapters import proc
from ovs_ipsec.adapters.xfrm import netlink as xfrm_netlink
from ovs_ipsec.adapters.xfrm.adapter import Xfrm, XfrmApplyError
from ovs_ipsec.adapters.xfrm.iproute2 import owned_specs, parse_policies
from ovs_ipsec.core.block_policies import (
    PolicySpec,
    plan_protection,
    policies_to_add_and_remove,
)
from ovs_ipsec.core.model import (
    DEFAULT_DST_PORT,
    AuthMode,
    Config,
    GlobalConfig,
    Invalid,
    InvalidTunnel,
    Secret,
    SkbMark,
    Tunnel,
    TunnelType,
)
from ovs_ipsec.tools.lab import in_netns

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, XFRM)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

PREFIX = f"oxk{os.getpid()}-"
_names = itertools.count()
_tokens = itertools.count()
GRE_HEADER = b"\0\0\x65\x58"  # no flags, transparent Ethernet bridging
CUSTOM_PORT = 5555
OPEN_PORT = 7777  # never protected: the control
WAIT = 2.0

A4, A6 = "10.77.0.1", "fd77::1"
B4, B6 = ["10.77.0.2", "10.77.0.3", "10.77.0.4"], ["fd77::2", "fd77::3", "fd77::4"]


# --- namespaces ---------------------------------------------------------------------------------

inside = in_netns  # run the block in a namespace (this thread, its children, new sockets)


def ip(*args: str, stdin: str | None = None) -> str:
    return proc.run(["ip", *args], timeout=10, input=stdin).stdout


@dataclass
class Host:
    ns: str
    v4: list[str]
    v6: list[str]
    sockets: dict = field(default_factory=dict)
    xfrm: Xfrm = field(default_factory=lambda: Xfrm(timeout=10))

    def addr(self, family: int, i: int = 0) -> str:
        return (self.v4 if family == 4 else self.v6)[i]

    def apply(self, add=(), remove=()):
        with inside(self.ns):
            self.xfrm.apply(add, remove)

    def observe(self) -> frozenset[PolicySpec]:
        with inside(self.ns):
            return self.xfrm.observe()

    def observe_all(self):
        """Every policy in the namespace's table, foreign ones included."""
        with inside(self.ns):
            return parse_policies(self.xfrm.policies_text())

    def stat(self, name: str) -> int:
        with inside(self.ns):
            return self.xfrm.read_xfrm_stat()[name]

    def converge(self, config: Config) -> tuple[int, int]:
        """Make the namespace's own policies equal plan_protection(config)."""
        to_add, to_remove = policies_to_add_and_remove(plan_protection(config), self.observe())
        self.apply(to_add, to_remove)
        return len(to_add), len(to_remove)

    def sock(self, family: int, kind, src: str | None = None) -> socket.socket:
        """A cached socket: kind "gre" (raw, proto 47), "udp" (sender) or a port (receiver)."""
        key = (family, kind, src)
        if key not in self.sockets:
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            with inside(self.ns):
                if kind == "gre":
                    s = socket.socket(af, socket.SOCK_RAW, 47)
                else:
                    s = socket.socket(af, socket.SOCK_DGRAM)
                if family == 6 and kind != "gre":
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if isinstance(kind, int):
                    s.bind(("0.0.0.0" if family == 4 else "::", kind))
                elif src is not None:
                    s.bind((src, 0))
            s.setblocking(False)
            self.sockets[key] = s
        return self.sockets[key]


@pytest.fixture
def hosts(request):
    """Two fresh namespaces A and B joined by a veth pair; deleted (with sockets) afterwards."""
    n = next(_names)
    a = Host(f"{PREFIX}{n}a", [A4], [A6])
    b = Host(f"{PREFIX}{n}b", B4, B6)

    def cleanup():
        for host in (a, b):
            for s in host.sockets.values():
                s.close()
            proc.run(["ip", "netns", "del", host.ns], timeout=10, check=False)

    request.addfinalizer(cleanup)
    veth = f"link add va netns {a.ns} type veth peer name vb netns {b.ns}"
    ip("-batch", "-", stdin=f"netns add {a.ns}\nnetns add {b.ns}\n{veth}\n")
    for host, dev in ((a, "va"), (b, "vb")):
        lines = ["link set lo up", f"link set {dev} up"]
        lines += [f"addr add {x}/24 dev {dev}" for x in host.v4]
        lines += [f"addr add {x}/64 dev {dev} nodad" for x in host.v6]
        ip("-n", host.ns, "-batch", "-", stdin="\n".join(lines) + "\n")
    return a, b


@pytest.fixture
def host(hosts):
    return hosts[0]


# --- traffic ------------------------------------------------------------------------------------


def target_kind(target):
    return "gre" if target == "gre" else "udp"


def send(sock: socket.socket, dst: str, target, mark: int) -> tuple[bool, bytes]:
    """(sent, token): False when the kernel refused the packet with EPERM (a block policy)."""
    token = f"oxk-token-{next(_tokens)}".encode()
    payload = GRE_HEADER + token if target == "gre" else token
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    try:
        sock.sendto(payload, (dst, 0 if target == "gre" else target))
    except PermissionError as exc:
        assert exc.errno == errno.EPERM
        return False, token
    return True, token


def arrived(sock: socket.socket, token: bytes, timeout: float) -> bool:
    """Whether a datagram containing `token` reaches `sock` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            while True:
                if token in sock.recv(65535):
                    return True
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([sock], [], [], left)


def probe_out(a: Host, b: Host, family: int, target, mark: int, dst_index: int = 0) -> str:
    """A sends plaintext to B: "blocked" (EPERM), "received" by B, or "trapped" (no SA)."""
    dst = b.addr(family, dst_index)
    receiver = b.sock(family, "gre" if target == "gre" else target)
    no_states = a.stat("XfrmOutNoStates")
    sent, token = send(a.sock(family, target_kind(target)), dst, target, mark)
    if not sent:
        return "blocked"
    if a.stat("XfrmOutNoStates") > no_states:
        # Dropped by a trap (larval state, acquire). Prove nothing reached the wire: a control
        # packet sent afterwards arrives, the tunnel packet does not.
        assert probe_out(a, b, family, OPEN_PORT, 0, dst_index) == "received"
        return "lost" if arrived(receiver, token, 0.05) else "trapped"
    return "received" if arrived(receiver, token, WAIT) else "lost"


def probe_in(a: Host, b: Host, family: int, target, src_index: int = 0) -> str:
    """B sends plaintext to A: "received" by A, or "dropped" (counter rose, socket got nothing)."""
    src = b.addr(family, src_index)
    receiver = a.sock(family, "gre" if target == "gre" else target)
    counters = ("XfrmInPolBlock", "XfrmInTmplMismatch", "XfrmInNoPols")
    before = {c: a.stat(c) for c in counters}
    sent, token = send(b.sock(family, target_kind(target), src), a.addr(family), target, 0)
    assert sent
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if arrived(receiver, token, 0.01):
            return "received"
        rose = [c for c in counters if a.stat(c) > before[c]]
        if rose:
            return "lost" if arrived(receiver, token, 0.05) else f"dropped:{rose[0]}"
    return "lost"


# --- configs ------------------------------------------------------------------------------------


def tunnel(name, kind, remote, dst_port=None):
    # What parse.dst_port_of gives a port without options:dst_port: its type's default.
    dst_port = dst_port if dst_port is not None else DEFAULT_DST_PORT.get(kind)
    return Tunnel(name, kind, remote, None, dst_port, AuthMode.PSK, Secret("swordfish"))


def config(tunnels=(), invalids=(), skb_mark=None, fail_open=False, tunnel_ports=()):
    return Config(
        global_config=GlobalConfig(skb_mark=skb_mark, fail_open=fail_open),
        tunnels={t.name: t for t in tunnels},
        invalid={i.name: i for i in invalids},
        tunnel_ports=tuple(tunnel_ports),
    )


DEFAULT_DENY = SkbMark(0, 1)


def rich_config(skb_mark=DEFAULT_DENY):
    return config(
        [
            tunnel("gre0", TunnelType.GRE, "10.77.0.2"),
            tunnel("gnv0", TunnelType.GENEVE, "10.77.0.3"),
            tunnel("vx6", TunnelType.VXLAN, "fd77::2", 4790),
            tunnel("gnv6", TunnelType.GENEVE, "fd77::3"),
        ],
        [
            InvalidTunnel("bad0", (Invalid("psk", "missing"),), None, "10.77.0.4"),
            InvalidTunnel("bad1", (Invalid("remote_ip", "missing"),), TunnelType.GRE),
        ],
        skb_mark=skb_mark,
        tunnel_ports=(4790, CUSTOM_PORT),
    )


# --- table round trips --------------------------------------------------------------------------


def test_apply_plan_then_observe_round_trips_ipv4_and_ipv6(host):
    plan = plan_protection(rich_config())
    assert {s.family for s in plan} == {4, 6}
    start = time.monotonic()
    host.apply(*policies_to_add_and_remove(plan, host.observe()))
    assert host.observe() == plan
    # Re-applying is a no-op diff; applying the same adds again (update) changes nothing.
    assert policies_to_add_and_remove(plan_protection(rich_config()), host.observe()) == ((), ())
    host.apply(add=sorted(plan, key=PolicySpec.sort_key))
    assert host.observe() == plan
    assert len(host.observe_all()) == len(plan)  # no duplicates next to ours
    assert time.monotonic() - start < 2


def test_policy_count_over_netlink_agrees_with_ip(host):
    """The periodic check's fingerprint: netlink counters that follow every add and remove, the
    same numbers `ip xfrm policy count` prints."""
    plan = sorted(plan_protection(rich_config()), key=PolicySpec.sort_key)
    with inside(host.ns):
        empty = host.xfrm.policy_count()
        host.xfrm.apply(add=plan)
        full = host.xfrm.policy_count()
        printed = ip("xfrm", "policy", "count").split()
        host.xfrm.apply(remove=plan[:1])
        one_less = host.xfrm.policy_count()
    assert len({empty, full, one_less}) == 3
    counts = [int(n) for n in full.split()]
    assert sum(counts) == len(plan)
    assert [int(w) for w in printed if w.isdigit()] == counts[:3]


def test_change_replaces_old_policies(host):
    host.converge(rich_config(DEFAULT_DENY))
    changed = config(
        [
            tunnel("gre0", TunnelType.GRE, "10.77.0.2"),
            tunnel("gnv0", TunnelType.GENEVE, "fd77::3", 6000),
        ],
        skb_mark=SkbMark(1, 1),
    )
    added, removed = host.converge(changed)
    assert added and removed
    assert host.observe() == plan_protection(changed)
    assert host.converge(Config()) == (0, len(plan_protection(changed)))
    assert host.observe() == frozenset()


FOREIGN = [
    # charon-style trap (template, ROUTED priority) and a VICI drop shunt (FALLBACK, marked)
    "src 10.77.0.1/32 dst 10.77.0.2/32 proto gre dir out priority 366976 "
    "tmpl proto esp mode transport",
    "src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport 6081 dir out mark 1 mask 1 action block "
    "priority 599679",
    "src 0.0.0.0/0 dst 0.0.0.0/0 proto udp sport 6081 dir fwd mark 1 mask 1 action block "
    "priority 599679",
    # blocks that look like ours but are not: other priority, allow, extra selector parts
    "src 0.0.0.0/1 dst 10.77.0.9/32 proto gre dir out action block priority 430002",
    "src 128.0.0.0/1 dst 10.77.0.8/32 proto gre dir out action allow priority 430001",
    "src 0.0.0.0/1 dst 10.77.0.7/32 proto gre dir out action block priority 430001 ptype sub",
    "src 128.0.0.0/1 dst 10.77.0.6/32 dev lo dir out action block priority 430001",
    "src fd77::9/128 dst ::/1 proto gre dir in action block priority 430001 if_id 5",
    "src ::/0 dst fd77::9/128 proto gre dir in action block priority 430003 if_id 5",
    # charon's trap for a peer it has no route to (its own address unknown): `0.0.0.0/0`
    "src 0.0.0.0/0 dst 10.77.0.2/32 proto gre dir out priority 383360 "
    "tmpl proto esp mode transport",
    "src 10.77.0.2/32 dst 0.0.0.0/0 proto gre dir in priority 383360 tmpl proto esp mode transport",
    # Same selector as our ipsec_skb_mark 0/1 policies, unmarked: `ip xfrm policy delete ... mark
    # 0 mask 1` (iproute2 6.1) would delete these instead of ours.
    "src 0.0.0.0/0 dst 0.0.0.0/0 proto gre dir out action allow priority 5",
    "src ::/0 dst ::/0 proto udp dport 6081 dir out action block priority 100",
]


def test_foreign_policies_are_never_observed_nor_removed(host):
    ip("-n", host.ns, "-batch", "-", stdin="".join(f"xfrm policy add {p}\n" for p in FOREIGN))
    foreign = {p.text for p in host.observe_all()}
    assert len(foreign) == len(FOREIGN)
    assert host.observe() == frozenset()

    plan = plan_protection(rich_config())
    host.converge(rich_config())
    assert host.observe() == plan
    host.apply(remove=host.observe())
    assert host.observe() == frozenset()
    assert {p.text for p in host.observe_all()} == foreign


# Blocks at our priority whose selector carries what a PolicySpec does not: ICMP type and code,
# a GRE key, a flag, a half-masked port. Not ours, over netlink as through iproute2.
NOT_SPECS = [
    "src 0.0.0.0/1 dst 10.77.0.5/32 proto icmp type 8 code 0 dir out action block priority 430001",
    "src 0.0.0.0/1 dst 10.77.0.4/32 proto gre key 7 dir out action block priority 430001",
    "src 0.0.0.0/1 dst 10.77.0.3/32 proto gre dir out action block priority 430001 flag localok",
]


def test_the_netlink_dump_reads_what_iproute2_lists(host):
    """observe() dumps the table over netlink: the policies it takes as ours are exactly those
    the iproute2 listing's parser takes as ours, among ours, everyone else's and look-alikes."""
    ip("-n", host.ns, "-batch", "-",
       stdin="".join(f"xfrm policy add {p}\n" for p in FOREIGN + NOT_SPECS))  # fmt: skip
    host.converge(rich_config())
    listed = host.observe_all()
    assert len(listed) == len(FOREIGN) + len(NOT_SPECS) + len(plan_protection(rich_config()))
    with inside(host.ns):
        dumped = xfrm_netlink.dump_policies(5.0)
    from_text = {spec for p in listed if (spec := p.to_spec()) is not None}
    assert set(dumped) == from_text
    assert host.observe() == owned_specs(listed) == plan_protection(rich_config())


def test_apply_errors_are_per_policy(host, monkeypatch):
    plan = sorted(plan_protection(rich_config()), key=PolicySpec.sort_key)
    unmarked = [s for s in plan if not s.mask]
    marked = [s for s in plan if s.mask]  # ipsec_skb_mark 0/1: mark value 0, sent exactly
    # fail-closed: 7 targets x 2 directions x 2 halves; ipsec_skb_mark: 6 targets (STT's TCP
    # 7471 among them) x 2 families, outbound only
    assert len(unmarked) == 28 and len(marked) == 12
    keep, gone = unmarked[:14], unmarked[14:]
    host.apply(add=plan)
    host.apply(remove=gone + marked[:4])
    assert host.observe() == frozenset(keep + marked[4:])

    # Removing what is already gone: the kernel answers ENOENT for those, apply counts them as
    # done and carries on with the rest.
    host.apply(remove=gone + marked[:4] + keep[:2])
    assert host.observe() == frozenset(keep[2:] + marked[4:])

    # A change the kernel refuses fails alone; the rest still happens. (A PolicySpec cannot be
    # invalid, so one request is corrupted on its way: a /33 IPv4 prefix, EINVAL.)
    refused = gone[0]
    build = xfrm_netlink.new_message

    def corrupted(spec, seq):
        message = bytearray(build(spec, seq))
        if spec == refused:
            message[16 + 42] = 33  # nlmsghdr, then the selector's prefixlen_d
        return bytes(message)

    monkeypatch.setattr(xfrm_netlink, "new_message", corrupted)
    with pytest.raises(XfrmApplyError) as info:
        host.apply(add=[gone[1], refused, gone[2]], remove=keep[2:4] + marked[4:6])
    assert [(f.operation.kind, f.operation.spec) for f in info.value.failures] == [("add", refused)]
    assert "Invalid argument" in info.value.failures[0].error
    assert info.value.attempted == 7
    assert host.observe() == frozenset(keep[4:] + marked[6:] + gone[1:3])


def test_thousands_of_policies_in_one_batch(host):
    tunnels = [
        tunnel(f"g{i}", TunnelType.GRE, f"10.78.{i // 250}.{i % 250 + 1}") for i in range(1000)
    ]
    tunnels += [tunnel(f"v{i}", TunnelType.VXLAN, f"fd78::{i + 1:x}") for i in range(1000)]
    cfg = config(tunnels, skb_mark=SkbMark(0, 1))
    plan = plan_protection(cfg)
    # 2000 tunnels x 2 directions x 2 halves; ipsec_skb_mark: 2 families x (gre, 4789, 6081,
    # tcp 7471), outbound only
    assert len(plan) == 8000 + 8
    t0 = time.monotonic()
    host.apply(*policies_to_add_and_remove(plan, host.observe()))
    t1 = time.monotonic()
    assert host.observe() == plan
    t2 = time.monotonic()
    host.apply(remove=plan)
    t3 = time.monotonic()
    assert host.observe() == frozenset()
    print(f"\n{len(plan)} policies: apply {t1 - t0:.3f}s, observe {t2 - t1:.3f}s, "
          f"remove {t3 - t2:.3f}s")  # fmt: skip
    assert t1 - t0 < 3 and t2 - t1 < 3 and t3 - t2 < 3


# --- ipsec_skb_mark: 0/1 and 1/1 ----------------------------------------------------------------

TARGETS = ["gre", 4789, 6081, CUSTOM_PORT]
MARKS = [0, 1, 2, 3]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("value", "mask"), [(0, 1), (1, 1)], ids=["0/1", "1/1"])
def test_skb_mark_outbound(hosts, family, value, mask):
    a, b = hosts
    a.converge(config(skb_mark=SkbMark(value, mask), tunnel_ports=(CUSTOM_PORT,)))
    before = a.stat("XfrmOutPolBlock")
    outcomes = {(t, m): probe_out(a, b, family, t, m) for t in TARGETS + [OPEN_PORT] for m in MARKS}
    expected = {
        (t, m): "blocked" if t != OPEN_PORT and (m & mask) == value else "received"
        for t in TARGETS + [OPEN_PORT]
        for m in MARKS
    }
    assert outcomes == expected
    blocked = sum(o == "blocked" for o in outcomes.values())
    assert blocked == 8
    assert a.stat("XfrmOutPolBlock") - before == blocked


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("value", "mask"), [(0, 1), (1, 1)], ids=["0/1", "1/1"])
def test_skb_mark_inbound(hosts, family, value, mask):
    a, b = hosts
    a.converge(config(skb_mark=SkbMark(value, mask), tunnel_ports=(CUSTOM_PORT,)))
    before = a.stat("XfrmInPolBlock")
    outcomes = {t: probe_in(a, b, family, t) for t in TARGETS + [OPEN_PORT]}
    # Inbound packets carry skb mark 0 when the policy check meets them, so no mark could ever
    # let a plain tunnel's traffic in under 0/1: ipsec_skb_mark has no inbound policies, and
    # plaintext from a peer is accepted under both values (an IPsec peer's is dropped by its
    # tunnel's fail-closed blocks instead).
    assert a.observe() and all(s.direction == "out" for s in a.observe())
    assert outcomes == {t: "received" for t in TARGETS + [OPEN_PORT]}
    assert a.stat("XfrmInPolBlock") == before


# --- fail-closed per tunnel, and charon's trap winning ------------------------------------------


def fail_closed_config(family, fail_open=False):
    b = B4 if family == 4 else B6
    return config(
        [
            tunnel("gre0", TunnelType.GRE, b[0]),
            tunnel("gnv0", TunnelType.GENEVE, b[0]),
            tunnel("vx0", TunnelType.VXLAN, b[1], 4790),
        ],
        [InvalidTunnel("bad0", (Invalid("psk", "missing"),), None, b[2])],
        fail_open=fail_open,
    )


def trap(a: Host, b: Host, family: int, target, direction: str, op: str = "add") -> None:
    """A policy as charon installs it for a transport-mode trap (ESP template, no mark)."""
    bits = 32 if family == 4 else 128
    local, remote = f"{a.addr(family)}/{bits}", f"{b.addr(family)}/{bits}"
    src, dst = (local, remote) if direction == "out" else (remote, local)
    sel = "proto gre" if target == "gre" else f"proto udp dport {target}"
    if target == "gre":
        prio = 366976 if family == 4 else 268672
    else:
        prio = 366912 if family == 4 else 268608
    args = ["xfrm", "policy", op, "src", src, "dst", dst, *sel.split(), "dir", direction]
    if op == "add":
        args += ["priority", str(prio), "tmpl", "proto", "esp", "mode", "transport"]
    ip("-n", a.ns, *args)


@pytest.mark.parametrize("family", [4, 6])
def test_fail_closed_blocks_until_a_trap_takes_over(hosts, family):
    a, b = hosts
    a.converge(fail_closed_config(family))
    blocks = a.stat("XfrmOutPolBlock")
    for mark in (0, 1, 0xFFFF):  # no mark on the policy: every mark is blocked
        assert probe_out(a, b, family, "gre", mark, 0) == "blocked"  # gre0
        assert probe_out(a, b, family, 6081, mark, 0) == "blocked"  # gnv0
        assert probe_out(a, b, family, 4790, mark, 1) == "blocked"  # vx0 on its dst_port
        for target in ("gre", 4789, 6081):  # bad0: type unknown, all of them
            assert probe_out(a, b, family, target, mark, 2) == "blocked"
    assert a.stat("XfrmOutPolBlock") - blocks == 3 * 6
    # Precisely that traffic: other protocols/ports to the same peers still flow.
    assert probe_out(a, b, family, 4789, 0, 0) == "received"
    assert probe_out(a, b, family, "gre", 0, 1) == "received"
    assert probe_out(a, b, family, CUSTOM_PORT, 0, 2) == "received"
    # Inbound plaintext from the peers is dropped as well.
    assert probe_in(a, b, family, "gre", 0) == "dropped:XfrmInPolBlock"
    assert probe_in(a, b, family, 4790, 1) == "dropped:XfrmInPolBlock"
    assert probe_in(a, b, family, 6081, 2) == "dropped:XfrmInPolBlock"

    # charon loads the conn: its trap (higher precedence, different key) wins.
    for target in ("gre", 6081):
        trap(a, b, family, target, "out")
        trap(a, b, family, target, "in")
    no_states = a.stat("XfrmOutNoStates")
    assert probe_out(a, b, family, "gre", 0, 0) == "trapped"
    assert probe_out(a, b, family, 6081, 1, 0) == "trapped"
    assert a.stat("XfrmOutNoStates") - no_states == 2
    # Inbound plaintext now fails charon's template check instead of our block.
    assert probe_in(a, b, family, "gre", 0) == "dropped:XfrmInTmplMismatch"
    assert a.observe() == plan_protection(fail_closed_config(family))  # ours untouched

    # charon goes away (restart, unload): our blocks are back in charge at once.
    for target in ("gre", 6081):
        trap(a, b, family, target, "out", "delete")
    assert probe_out(a, b, family, "gre", 0, 0) == "blocked"
    assert probe_out(a, b, family, 6081, 0, 0) == "blocked"

    # ipsec_fail_open=true: the per-tunnel blocks go, plaintext flows when no trap exists.
    a.converge(fail_closed_config(family, fail_open=True))
    assert a.observe() == frozenset()
    assert probe_out(a, b, family, "gre", 0, 0) == "received"
    assert probe_out(a, b, family, 4790, 0, 1) == "received"


@pytest.mark.parametrize("family", [4, 6])
def test_a_no_route_trap_and_the_fail_closed_blocks_never_share_a_kernel_key(hosts, family):
    """charon, unable to tell its own address for a peer, installs its trap as `any <-> peer`
    (with XFRM_MSG_UPDPOLICY, which replaces a policy of the same key). The kernel keys policies by
    selector, direction and mark -- not priority -- so a fail-closed block spelled `any <-> peer`
    would be replaced by that trap, and would replace it in turn when re-added. Ours are the two
    /1 halves: the trap goes in next to them, wins while it is there, and leaves them untouched;
    once it is gone our blocks refuse the traffic again."""
    a, b = hosts
    cfg = config([tunnel("gre0", TunnelType.GRE, b.addr(family))])
    a.converge(cfg)
    plan = plan_protection(cfg)
    assert len(plan) == 4
    assert {s.src if s.direction == "out" else s.dst for s in plan} == (
        {"0.0.0.0/1", "128.0.0.0/1"} if family == 4 else {"::/1", "8000::/1"}
    )
    assert probe_out(a, b, family, "gre", 0) == "blocked"

    anynet, bits = ("0.0.0.0/0", 32) if family == 4 else ("::/0", 128)
    peer = f"{b.addr(family)}/{bits}"

    def no_route_trap(op: str, direction: str) -> None:
        src, dst = (anynet, peer) if direction == "out" else (peer, anynet)
        args = ["xfrm", "policy", op, "src", src, "dst", dst, "proto", "gre", "dir", direction]
        if op == "update":
            prio = "383360" if family == 4 else "334208"  # what charon 5.9 uses for GRE
            args += ["priority", prio, "tmpl", "proto", "esp", "mode", "transport"]
        ip("-n", a.ns, *args)

    before = {p.text for p in a.observe_all()}
    for direction in ("out", "in"):
        no_route_trap("update", direction)
    assert a.observe() == plan  # ours untouched
    after = {p.text for p in a.observe_all()}
    assert before < after and len(after - before) == 2, after - before  # the trap, beside them
    no_states = a.stat("XfrmOutNoStates")
    assert probe_out(a, b, family, "gre", 0) == "trapped"
    assert a.stat("XfrmOutNoStates") == no_states + 1

    # Re-applying our plan (what a periodic check would do) changes nothing of charon's.
    a.apply(add=sorted(plan, key=PolicySpec.sort_key))
    assert {p.text for p in a.observe_all()} == after
    assert probe_out(a, b, family, "gre", 0) == "trapped"

    for direction in ("out", "in"):
        no_route_trap("delete", direction)
    assert a.observe() == plan
    assert probe_out(a, b, family, "gre", 0) == "blocked"


def test_a_foreign_policy_with_our_key_is_neither_overwritten_nor_deleted(host):
    """Issue 15, item 15: a policy someone else holds at the kernel key of one of ours (same
    selector, direction and mark; priority is not in the key) stays as it is. Adding ours
    reports it (before: XFRM_MSG_UPDPOLICY replaced it); removing ours leaves it (before: delete
    by key removed it, whatever its priority)."""
    plan = sorted(plan_protection(fail_closed_config(4)), key=PolicySpec.sort_key)
    taken, free = plan[0], plan[1:]
    selector = f"src {taken.src} dst {taken.dst} proto {taken.proto}"
    if taken.dport is not None:
        selector += f" dport {taken.dport}"
    foreign = f"{selector} dir {taken.direction} priority 100 action allow"
    ip("-n", host.ns, "xfrm", "policy", "add", *foreign.split())
    before = {p.text for p in host.observe_all()}

    with pytest.raises(XfrmApplyError) as info:
        host.apply(add=plan)
    assert [f.operation.spec for f in info.value.failures] == [taken]
    assert "not ours" in info.value.failures[0].error
    assert host.observe() == frozenset(free)  # every other one went in
    assert before <= {p.text for p in host.observe_all()}  # the foreign one untouched

    host.apply(remove=plan)  # ours at that key is "gone": no error, the foreign one stays
    assert host.observe() == frozenset()
    assert {p.text for p in host.observe_all()} == before


def test_adding_what_is_ours_already_replaces_it_in_place(host):
    """After a failure the guard re-adds everything desired: a policy of ours already there
    (found by its key, judged ours) is replaced, not reported."""
    plan = sorted(plan_protection(fail_closed_config(6)), key=PolicySpec.sort_key)
    host.apply(add=plan)
    before = {p.text for p in host.observe_all()}
    host.apply(add=plan)
    assert host.observe() == frozenset(plan)
    assert {p.text for p in host.observe_all()} == before
