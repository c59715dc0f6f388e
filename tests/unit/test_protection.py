"""core.block_policies: which block policies the daemon owns for a given Config (pure).

Over 400 lines: one table of configurations and the block policies each must give."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovs_ipsec.adapters.xfrm import iproute2
from ovs_ipsec.adapters.xfrm.adapter import Operation, PolicyFailure, XfrmApplyError
from ovs_ipsec.core.addresses import canonical_prefix, is_canonical_ip
from ovs_ipsec.core.block_policies import (
    FAIL_CLOSED_PRIORITY,
    OWNED_PRIORITIES,
    SKB_MARK_PRIORITY,
    SKB_MARK_REASON,
    PolicyReason,
    PolicySpec,
    Purpose,
    explain_protection,
    is_owned,
    plan_protection,
    policies_to_add_and_remove,
    policies_to_add_and_remove_for_change,
)
from ovs_ipsec.core.model import (
    DEFAULT_DST_PORT,
    IPPROTO_GRE,
    IPPROTO_TCP,
    IPPROTO_UDP,
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

GRE, UDP, TCP = IPPROTO_GRE, IPPROTO_UDP, IPPROTO_TCP


def default_port(kind, dst_port):
    """What parse.dst_port_of gives a port without options:dst_port."""
    return dst_port if dst_port is not None or kind is None else DEFAULT_DST_PORT.get(kind)


def tunnel(name, kind, remote, dst_port=None, local=None):
    dst_port = default_port(kind, dst_port)
    return Tunnel(
        name=name,
        type=kind,
        remote_ip=remote,
        local_ip=local,
        dst_port=dst_port,
        auth=AuthMode.PSK,
        psk=Secret("swordfish"),
    )


def invalid(name, remote=None, kind=None, dst_port=None):
    dst_port = default_port(kind, dst_port)
    return InvalidTunnel(
        name=name,
        errors=(Invalid("psk", "missing"),),
        type=kind,
        remote_ip=remote,
        dst_port=dst_port,
    )


def config(
    tunnels=(), invalids=(), skb_mark=None, fail_open=False, tunnel_ports=(), tcp_tunnel_ports=()
):
    return Config(
        global_config=GlobalConfig(skb_mark=skb_mark, fail_open=fail_open),
        tunnels={t.name: t for t in tunnels},
        invalid={i.name: i for i in invalids},
        tunnel_ports=tuple(tunnel_ports),
        tcp_tunnel_ports=tuple(tcp_tunnel_ports),
    )


def fc(direction, src, dst, proto, dport=None):
    """A fail-closed spec."""
    family = 6 if ":" in src else 4
    return PolicySpec(direction, family, src, dst, proto, None, dport, 0, 0, FAIL_CLOSED_PRIORITY)


def both(remote, proto, dport=None):
    """OUT any -> remote and IN remote -> any, fail-closed."""
    family = 6 if ":" in remote else 4
    host = f"{remote}/{32 if family == 4 else 128}"
    halves = ("0.0.0.0/1", "128.0.0.0/1") if family == 4 else ("::/1", "8000::/1")
    return {fc("out", h, host, proto, dport) for h in halves} | {
        fc("in", host, h, proto, dport) for h in halves
    }


# --- fail-closed per tunnel ---------------------------------------------------------------------


def test_gre_tunnel_blocks_its_peer_both_ways_without_mark():
    plan = plan_protection(config([tunnel("gre0", TunnelType.GRE, "10.0.0.2")]))
    assert plan == both("10.0.0.2", GRE)
    out = min(s for s in plan if s.direction == "out")
    assert (out.src, out.dst, out.sport, out.dport, out.mark, out.mask) == (
        "0.0.0.0/1",
        "10.0.0.2/32",
        None,
        None,
        0,
        0,
    )


@pytest.mark.parametrize(
    ("kind", "dst_port", "port"),
    [
        (TunnelType.GENEVE, None, 6081),
        (TunnelType.VXLAN, None, 4789),
        (TunnelType.GENEVE, 7000, 7000),
        (TunnelType.VXLAN, 4790, 4790),
    ],
)
def test_udp_tunnel_blocks_destination_port_both_ways(kind, dst_port, port):
    plan = plan_protection(config([tunnel("t0", kind, "10.0.0.2", dst_port)]))
    assert plan == both("10.0.0.2", UDP, port)
    # Outgoing tunnel packets have a hashed source port and the fixed destination port; incoming
    # ones arrive to our fixed destination port. Never a source port.
    assert all(s.sport is None and s.dport == port for s in plan)


def test_ipv6_tunnel_uses_canonical_prefixes():
    plan = plan_protection(config([tunnel("g6", TunnelType.GENEVE, "FD77:0:0::2")]))
    assert plan == both("fd77::2", UDP, 6081)
    assert {(s.src, s.dst) for s in plan} == {
        ("::/1", "fd77::2/128"),
        ("8000::/1", "fd77::2/128"),
        ("fd77::2/128", "::/1"),
        ("fd77::2/128", "8000::/1"),
    }
    assert {s.family for s in plan} == {6}


def test_two_tunnels_to_one_peer_share_nothing_but_dedupe_identical_specs():
    cfg = config(
        [
            tunnel("gre0", TunnelType.GRE, "10.0.0.2"),
            tunnel("gre1", TunnelType.GRE, "10.0.0.2"),
            tunnel("gnv0", TunnelType.GENEVE, "10.0.0.2"),
        ]
    )
    assert plan_protection(cfg) == both("10.0.0.2", GRE) | both("10.0.0.2", UDP, 6081)
    reasons = explain_protection(cfg)
    assert reasons[fc("out", "0.0.0.0/1", "10.0.0.2/32", GRE)] == (
        PolicyReason(Purpose.TUNNEL, "gre0"),
        PolicyReason(Purpose.TUNNEL, "gre1"),
    )


def test_fail_closed_keys_never_equal_a_charon_trap_without_local_address():
    """charon installs `0.0.0.0/0 <-> peer/32` when it cannot tell its own address; the kernel
    keys policies by selector, direction and mark (not priority), so ours must differ."""
    plan = plan_protection(config([tunnel("gre0", TunnelType.GRE, "10.0.0.2")]))
    charon = {
        fc("out", "0.0.0.0/0", "10.0.0.2/32", GRE).key(),
        fc("in", "10.0.0.2/32", "0.0.0.0/0", GRE).key(),
    }
    assert not {spec.key() for spec in plan} & charon


@pytest.mark.parametrize(("dst_port", "port"), [(None, 7471), (7500, 7500)])
def test_stt_tunnel_blocks_its_tcp_destination_port_both_ways(dst_port, port):
    """STT is sent to a fixed TCP port (from a hashed source port): TCP, never UDP."""
    for remote in ("10.0.0.2", "fd77::2"):
        plan = plan_protection(config([tunnel("stt0", TunnelType.STT, remote, dst_port)]))
        assert plan == both(remote, TCP, port)


def test_ip6gre_tunnel_blocks_gre_to_its_ipv6_peer_both_ways():
    plan = plan_protection(config([tunnel("g6", TunnelType.IP6GRE, "fd77::2")]))
    assert plan == both("fd77::2", GRE)


def test_invalid_tunnel_without_remote_ip_blocks_nothing():
    assert plan_protection(config(invalids=[invalid("bad0", kind=TunnelType.GRE)])) == frozenset()


@pytest.mark.parametrize(
    ("kind", "dst_port", "expected"),
    [
        (TunnelType.GRE, None, [(GRE, None)]),
        (TunnelType.GENEVE, None, [(UDP, 6081)]),
        (TunnelType.VXLAN, 5000, [(UDP, 5000)]),
        (TunnelType.STT, None, [(TCP, 7471)]),
        (TunnelType.STT, 7500, [(TCP, 7500)]),
        (TunnelType.IP6GRE, None, [(GRE, None)]),
        # Type unknown: everything it could be (fail closed), plus its port if that parsed.
        (None, None, [(GRE, None), (UDP, 4789), (UDP, 6081)]),
        (None, 5000, [(GRE, None), (UDP, 4789), (UDP, 5000), (UDP, 6081)]),
    ],
)
def test_invalid_tunnel_with_remote_ip_fails_closed(kind, dst_port, expected):
    cfg = config(invalids=[invalid("bad0", "10.0.0.9", kind, dst_port)])
    want = set()
    for proto, port in expected:
        want |= both("10.0.0.9", proto, port)
    assert plan_protection(cfg) == want
    assert set(explain_protection(cfg).values()) == {
        (PolicyReason(Purpose.INVALID_TUNNEL, "bad0"),)
    }


def test_fail_open_drops_per_tunnel_blocks_but_keeps_skb_mark():
    tunnels = [tunnel("gre0", TunnelType.GRE, "10.0.0.2")]
    invalids = [invalid("bad0", "10.0.0.9")]
    assert plan_protection(config(tunnels, invalids, fail_open=True)) == frozenset()
    plan = plan_protection(config(tunnels, invalids, skb_mark=SkbMark(1, 1), fail_open=True))
    assert plan and all(s.priority == SKB_MARK_PRIORITY for s in plan)


# --- ipsec_skb_mark ------------------------------------------------------------------------------


def test_skb_mark_covers_gre_and_every_tunnel_port_outbound_both_families():
    """Outbound only: received packets carry no mark at the inbound check, so an inbound rule
    would block every plain tunnel under 0/1 (see protect_skb_mark)."""
    cfg = config(
        skb_mark=SkbMark(1, 1),
        fail_open=True,
        tunnel_ports=(4789, 5555),
        tcp_tunnel_ports=(7500,),
    )
    plan = plan_protection(cfg)
    targets = {
        (GRE, None),
        (UDP, 4789),
        (UDP, 5555),
        (UDP, 6081),
        (TCP, 7471),
        (TCP, 7500),
    }
    want = {
        PolicySpec("out", f, a, a, p, None, port, 1, 1, SKB_MARK_PRIORITY)
        for f, a in ((4, "0.0.0.0/0"), (6, "::/0"))
        for p, port in targets
    }
    assert plan == want
    assert len(plan) == 12
    assert set(explain_protection(cfg).values()) == {(SKB_MARK_REASON,)}


def test_skb_mark_always_covers_vxlan_geneve_and_stt_and_ipsec_tunnel_ports():
    """The default ports of every type IPsec supports (upstream's prevent_unencrypted_* for
    gre, geneve, vxlan and, up to 3.5, stt's tcp/7471), and every IPsec tunnel's own, each with
    its protocol: an STT port is TCP, never UDP."""
    cfg = config(
        [
            tunnel("g", TunnelType.GENEVE, "10.0.0.2", 7000),
            tunnel("s", TunnelType.STT, "10.0.0.4", 7600),
        ],
        [
            invalid("v", "10.0.0.3", TunnelType.VXLAN, 7001),
            invalid("t", "10.0.0.5", TunnelType.STT, 7601),
        ],
        skb_mark=SkbMark(0, 1),
    )
    targets = {(s.proto, s.dport) for s in plan_protection(cfg) if s.priority == SKB_MARK_PRIORITY}
    assert targets == {
        (GRE, None),
        (UDP, 4789),
        (UDP, 6081),
        (UDP, 7000),
        (UDP, 7001),
        (TCP, 7471),
        (TCP, 7600),
        (TCP, 7601),
    }


@pytest.mark.parametrize(
    ("mark", "value", "mask"),
    [
        (SkbMark(0, 1), 0, 1),
        (SkbMark(1, 1), 1, 1),
        (SkbMark(0x10, 0xFFFFFFFF), 0x10, 0xFFFFFFFF),
        # The kernel stores value & mask; planning the same keeps observe() == plan.
        (SkbMark(3, 1), 1, 1),
    ],
)
def test_skb_mark_value_and_mask(mark, value, mask):
    plan = plan_protection(config(skb_mark=mark))
    assert {(s.mark, s.mask) for s in plan} == {(value, mask)}


def test_no_skb_mark_no_tunnels_no_policies():
    assert plan_protection(Config()) == frozenset()


def test_plan_is_deterministic_and_keys_are_unique():
    tunnels = [
        tunnel("a", TunnelType.GRE, "10.0.0.2"),
        tunnel("b", TunnelType.GENEVE, "fd77::2"),
        tunnel("c", TunnelType.VXLAN, "10.0.0.3", 4790),
    ]
    invalids = [invalid("x", "10.0.0.9"), invalid("y")]
    forward = config(tunnels, invalids, SkbMark(0, 1), tunnel_ports=(4790,))
    backward = config(tunnels[::-1], invalids[::-1], SkbMark(0, 1), tunnel_ports=(4790,))
    assert list(explain_protection(forward)) == list(explain_protection(backward))
    plan = plan_protection(forward)
    assert len({s.key() for s in plan}) == len(plan)
    assert all(is_owned(s) for s in plan)


# --- priorities versus charon ---------------------------------------------------------------------

# charon 5.9.8 (kernel_netlink / policy priorities): base per class, then subtract.
PASS, ROUTED, DEFAULT, FALLBACK = "pass", "routed", "default", "fallback"
_BASE = {PASS: 200_000, ROUTED: 400_000, DEFAULT: 400_000, FALLBACK: 600_000}


def charon_priority(cls, prefix_bits, proto, port_mask_bits, iface):
    prio = _BASE[cls] - 512 * prefix_bits - 256 * bool(proto) - 4 * port_mask_bits - 2 * iface
    return prio if cls == ROUTED else prio - 1


def test_charon_formula_reproduces_the_captured_priorities():
    assert charon_priority(ROUTED, 64, True, 0, False) == 366_976  # IPv4 trap, gre
    assert charon_priority(ROUTED, 64, True, 16, False) == 366_912  # IPv4 trap, udp port
    assert charon_priority(ROUTED, 256, True, 16, False) == 268_608  # IPv6 trap, udp port
    assert charon_priority(FALLBACK, 0, True, 0, False) == 599_743  # drop shunt, gre
    assert charon_priority(FALLBACK, 0, True, 16, False) == 599_679  # drop shunt, udp port


def test_no_charon_priority_is_ours_exhaustive():
    # Every combination charon can compute (prefix bits 0..256, port-mask bits 0..32).
    for cls in _BASE:
        for bits in range(257):
            for proto in (False, True):
                for ports in range(33):
                    for iface in (False, True):
                        prio = charon_priority(cls, bits, proto, ports, iface)
                        assert prio not in OWNED_PRIORITIES
                        if cls != FALLBACK:
                            assert prio < min(OWNED_PRIORITIES)


@given(
    cls=st.sampled_from(sorted(_BASE)),
    family=st.sampled_from([4, 6]),
    src_bits=st.integers(0, 128),
    dst_bits=st.integers(0, 128),
    proto=st.booleans(),
    sport_bits=st.integers(0, 16),
    dport_bits=st.integers(0, 16),
    iface=st.booleans(),
)
def test_no_charon_priority_is_ours_property(
    cls, family, src_bits, dst_bits, proto, sport_bits, dport_bits, iface
):
    width = 32 if family == 4 else 128
    bits = min(src_bits, width) + min(dst_bits, width)
    prio = charon_priority(cls, bits, proto, sport_bits + dport_bits, iface)
    assert prio not in OWNED_PRIORITIES
    if cls in (ROUTED, DEFAULT):
        # Per-peer trap and IPsec policies always take precedence over ours.
        assert prio < FAIL_CLOSED_PRIORITY and prio < SKB_MARK_PRIORITY
    if cls == ROUTED:
        assert prio % 2 == 0
    assert all(p % 2 == 1 and 400_000 < p < 468_000 for p in OWNED_PRIORITIES)


def charon_trap_keys(t: Tunnel, local: str):
    """The keys of charon's transport-mode trap policies for one tunnel (as captured)."""
    family = 6 if ":" in t.remote_ip else 4
    bits = 32 if family == 4 else 128
    lo = canonical_prefix(f"{local}/{bits}")
    re = canonical_prefix(f"{t.remote_ip}/{bits}")
    if not t.type.has_port:
        children = [(None, None)]
    else:
        port = t.dst_port or DEFAULT_DST_PORT[t.type]
        # out child: remote port fixed; in child: local port fixed (traffic in both roles).
        children = [(None, port), (port, None)]
    proto = t.type.protocol
    keys = set()
    for sport, dport in children:
        keys.add(("out", family, lo, re, proto, sport, dport, 0, 0))
        keys.add(("in", family, re, lo, proto, dport, sport, 0, 0))
    return keys


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@given(
    data=st.data(),
    kind=st.sampled_from(list(TunnelType)),
    dst_port=st.one_of(st.none(), st.integers(1, 65535)),
    family=st.sampled_from([4, 6]),
    mark=st.one_of(st.none(), st.builds(SkbMark, st.just(0), st.integers(0, 0xFFFFFFFF))),
)
def test_keys_never_collide_with_charon_traps(data, kind, dst_port, family, mark):
    addresses = ipv4 if family == 4 else ipv6
    local, remote = data.draw(addresses), data.draw(addresses)
    t = tunnel("t", kind, remote, dst_port if kind.has_port else None)
    ours = {s.key() for s in plan_protection(config([t], skb_mark=mark))}
    assert not ours & charon_trap_keys(t, local)


# --- diff -------------------------------------------------------------------------------------


def test_diff_adds_missing_removes_stale_sorted():
    a = both("10.0.0.2", GRE)
    b = both("10.0.0.3", UDP, 6081)
    c = both("fd77::2", UDP, 4789)
    to_add, to_remove = policies_to_add_and_remove(frozenset(a | b), frozenset(b | c))
    assert set(to_add) == a and set(to_remove) == c
    assert list(to_add) == sorted(to_add, key=PolicySpec.sort_key)
    assert policies_to_add_and_remove(frozenset(a), frozenset(a)) == ((), ())


def test_sort_key_orders_by_the_fields_in_sequence():
    """sort_key nests the fields around the addresses (shared per shape): the order is that of
    the eleven fields one after the other, a None port before any port."""
    specs = [*both("10.0.0.2", GRE), *both("10.0.0.3", UDP, 6081), *both("fd77::2", UDP, 4789)]
    specs += [s.replace(priority=FAIL_CLOSED_PRIORITY + 1) for s in both("10.0.0.1", TCP, 80)]
    specs += [s.replace(sport=5, mark=1, mask=1) for s in both("10.0.0.2", UDP, 4789)]
    specs += [s.replace(action="allow") for s in both("10.0.0.2", GRE)]

    def in_sequence(s: PolicySpec) -> tuple[object, ...]:
        sport, dport = (-1 if p is None else p for p in (s.sport, s.dport))
        return (s.family, s.priority, s.direction, s.src, s.dst, s.proto, sport, dport,
                s.mark, s.mask, s.action)  # fmt: skip

    for ordered in (specs, specs[::-1], specs[1::2] + specs[::2]):
        assert sorted(ordered, key=PolicySpec.sort_key) == sorted(ordered, key=in_sequence)


def test_diff_does_not_remove_a_key_that_is_being_replaced():
    old = fc("out", "0.0.0.0/0", "10.0.0.2/32", GRE)
    new = old.replace(priority=FAIL_CLOSED_PRIORITY + 2)
    assert old.key() == new.key()
    # `update` replaces the policy in place; deleting the old key afterwards would delete it.
    assert policies_to_add_and_remove(frozenset({new}), frozenset({old})) == ((new,), ())


def test_diff_skb_mark_change_adds_new_and_removes_old():
    before = plan_protection(config(skb_mark=SkbMark(0, 1)))
    after = plan_protection(config(skb_mark=SkbMark(1, 1)))
    to_add, to_remove = policies_to_add_and_remove(after, before)
    assert set(to_add) == after and set(to_remove) == before


# --- PolicySpec -----------------------------------------------------------------------------------


def test_spec_is_hashable_comparable_and_describes_itself():
    spec = PolicySpec("out", 4, "0.0.0.0/0", "0.0.0.0/0", UDP, None, 6081, 1, 1, SKB_MARK_PRIORITY)
    assert spec == PolicySpec(
        "out", 4, "0.0.0.0/0", "0.0.0.0/0", UDP, None, 6081, 1, 1, SKB_MARK_PRIORITY
    )
    assert len({spec, spec}) == 1
    assert spec.describe() == (
        "out 0.0.0.0/0 -> 0.0.0.0/0 udp dport 6081 mark 0x1/0x1: block "
        "(priority 430003, ipsec_skb_mark)"
    )
    gre = fc("in", "fd77::2/128", "::/0", GRE)
    assert gre.describe() == (
        "in fd77::2/128 -> ::/0 gre any mark: block (priority 430001, fail-closed)"
    )
    assert sorted([spec, gre]) == sorted([gre, spec])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"direction": "fwd"},
        {"family": 5},
        {"src": "10.0.0.1/24"},  # host bits
        {"family": 6, "src": "::/0", "dst": "fd77:0::2/128"},  # not canonical
        {"dst": "fd77::2/128"},  # wrong family
        {"dport": 0},
        {"mark": 3, "mask": 1},  # the kernel would store 1/1
    ],
)
def test_spec_rejects_non_canonical_values(kwargs):
    base = dict(
        direction="out",
        family=4,
        src="0.0.0.0/0",
        dst="10.0.0.2/32",
        proto=GRE,
        sport=None,
        dport=None,
        mark=0,
        mask=0,
        priority=FAIL_CLOSED_PRIORITY,
    )
    with pytest.raises(ValueError):
        PolicySpec(**{**base, **kwargs})


def test_is_owned_needs_block_and_our_priority():
    spec = fc("out", "0.0.0.0/1", "10.0.0.2/32", GRE)
    assert is_owned(spec)
    assert not is_owned(spec.replace(action="allow"))
    assert not is_owned(spec.replace(priority=FAIL_CLOSED_PRIORITY + 1))
    assert not is_owned(spec.replace(priority=366_976))


def test_is_owned_needs_a_shape_the_daemon_makes():
    """Priority alone does not make a policy ours (issue 15, item 15): a block at our priority
    that no plan of ours produces (host to host, a mark on a fail-closed block, an addressed
    skb-mark block, a source port, another protocol) is someone else's."""
    ours = [
        *plan_protection(rich_config_for_ownership()),
        fc("in", "fd77::2/128", "8000::/1", UDP, 4789),
    ]
    assert all(is_owned(spec) for spec in ours)
    skb = PolicySpec("out", 4, "0.0.0.0/0", "0.0.0.0/0", GRE, None, None, 1, 1, SKB_MARK_PRIORITY)
    assert is_owned(skb)
    # Earlier versions' shapes: a `0/0` local side, inbound skb-mark blocks.
    assert is_owned(fc("out", "0.0.0.0/0", "10.0.0.2/32", GRE))
    assert is_owned(skb.replace(direction="in"))
    foreign = [
        fc("out", "10.0.0.1/32", "10.0.0.2/32", GRE),
        fc("in", "10.0.0.2/32", "10.0.0.1/32", GRE),
        fc("out", "0.0.0.0/1", "10.0.0.2/32", GRE).replace(mark=1, mask=1),
        fc("out", "0.0.0.0/1", "10.0.0.2/32", UDP, 4789).replace(sport=1),
        fc("out", "0.0.0.0/1", "10.0.0.2/32", 1),
        skb.replace(dst="10.0.0.2/32"),
    ]
    assert not [spec for spec in foreign if is_owned(spec)]


def rich_config_for_ownership():
    return config(
        [tunnel("g", TunnelType.GRE, "10.0.0.2"), tunnel("v6", TunnelType.VXLAN, "fd77::2")],
        [invalid("bad", "10.0.0.3")],
        skb_mark=SkbMark(0, 1),
        tunnel_ports=(4790,),
    )


def test_canonical_prefix():
    assert canonical_prefix("10.0.0.2") == "10.0.0.2/32"
    assert canonical_prefix("FD77:0::2/128") == "fd77::2/128"
    assert canonical_prefix("::/0") == "::/0"
    with pytest.raises(ValueError):
        canonical_prefix("10.0.0.1/24")
    assert str(ipaddress.ip_network(canonical_prefix("0.0.0.0/0"))) == "0.0.0.0/0"


_SPECS = [
    PolicySpec(direction=d, family=4, src=src, dst="10.0.0.2/32", proto=47, sport=None,
               dport=None, mark=0, mask=0, priority=prio)
    for d in ("in", "out")
    for src in ("0.0.0.0/1", "128.0.0.0/1")
    for prio in (430001, 430003)
]  # fmt: skip
_SPEC_SETS = st.frozensets(st.sampled_from(_SPECS))


@given(current=_SPEC_SETS, wanted=_SPEC_SETS, unwanted=_SPEC_SETS)
def test_the_changes_for_one_pass_equal_those_of_the_full_comparison(
    current: frozenset[PolicySpec], wanted: frozenset[PolicySpec], unwanted: frozenset[PolicySpec]
) -> None:
    """The additions and removals of one pass are those of a full comparison of the resulting
    wish, including keys replaced in place (the same selector at two priorities)."""
    incremental = policies_to_add_and_remove_for_change(current, wanted, unwanted)
    assert incremental == policies_to_add_and_remove((current - unwanted) | wanted, current)


def test_port_selectors_need_a_port_protocol():
    with pytest.raises(ValueError, match="port selector"):
        PolicySpec("out", 4, "0.0.0.0/1", "10.0.0.2/32", GRE, None, 4789, 0, 0, 430001)
    assert PolicySpec("out", 4, "0.0.0.0/1", "10.0.0.2/32", UDP, None, 4789, 0, 0, 430001).dport


def _reference_prefix(text: str) -> str:
    net = ipaddress.ip_network(text.strip(), strict=True)
    return f"{net.network_address.compressed}/{net.prefixlen}"


_OCTETS = st.sampled_from(["0", "00", "01", "1", "9", "10", "99", "100", "199", "249", "255",
                           "256", "300", "999", "1000", "-1", "", "a"])  # fmt: skip
_DOTTED = st.lists(_OCTETS, min_size=3, max_size=5).map(".".join)


@given(_DOTTED, st.sampled_from(["", "/32", "/31", "/0", "/033", " /32"]), st.booleans())
def test_prefixes_recognised_without_parsing_agree_with_ipaddress(
    address: str, suffix: str, pad: bool
) -> None:
    """canonical_prefix, is_canonical_ip (naming's ownership check) and the listing parser skip
    ipaddress for canonical IPv4 hosts; for any spelling they agree with what ipaddress says."""
    text = f" {address}{suffix}" if pad else f"{address}{suffix}"
    try:
        expected: str | None = _reference_prefix(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            canonical_prefix(text)
    else:
        assert canonical_prefix(text) == expected
    try:
        interface = ipaddress.ip_interface(text)
        listed = (interface.version, f"{interface.ip.compressed}/{interface.network.prefixlen}")
    except ValueError:
        listed = None
    assert iproute2._prefix(text) == listed
    try:
        owned = str(ipaddress.ip_address(text)) == text
    except ValueError:
        owned = False
    assert is_canonical_ip(text) == owned


def test_an_apply_error_names_a_few_failures_and_counts_the_rest():
    specs = sorted(plan_protection(config([tunnel("g", TunnelType.GRE, "10.0.0.2")])))
    few = [PolicyFailure(Operation("add", s), "Operation not permitted") for s in specs[:2]]
    assert str(XfrmApplyError(few, 2)) == (
        "2 of 2 XFRM policy changes failed: "
        + "; ".join(f"add {s.describe()}: Operation not permitted" for s in specs[:2])
    )
    many = [
        PolicyFailure(Operation("add", specs[i % 2]), "Operation not permitted" if i else "busy")
        for i in range(4000)
    ]
    message = str(XfrmApplyError(many, 4000))
    assert len(message) < 1000
    assert message.endswith("; and 3997 more (in all: 3999 Operation not permitted, 1 busy)")


def test_a_policy_spec_is_its_fields_whatever_shares_its_shape() -> None:
    """PolicySpec keeps a shared shape and its addresses: equality, hash, order and replace
    behave as for a frozen ordered dataclass of all eleven fields."""
    a = fc("out", "0.0.0.0/1", "10.0.0.2/32", GRE)
    b = fc("out", "0.0.0.0/1", "10.0.0.2/32", GRE)
    c = fc("out", "0.0.0.0/1", "10.0.0.3/32", GRE)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a._shape is b._shape is c._shape  # one shared shape: the point (issue 14, memory)
    assert a != c and a < c and sorted([c, a]) == [a, c]
    assert a.replace(dst="10.0.0.3/32") == c
    shape = (a.direction, a.family, a.proto, a.sport, a.dport, a.mark, a.mask, a.priority)
    assert shape == ("out", 4, GRE, None, None, 0, 0, FAIL_CLOSED_PRIORITY) and a.action == "block"
    assert repr(a).startswith("PolicySpec(direction='out', family=4, src='0.0.0.0/1'")
    with pytest.raises(AttributeError):
        a.src = "10.0.0.9/32"  # type: ignore[misc]
    with pytest.raises(ValueError):
        fc("sideways", "0.0.0.0/1", "10.0.0.2/32", GRE)
