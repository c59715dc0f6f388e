"""Model -> the kernel XFRM block policies the daemon owns (plaintext protection). Pure.

Two kinds of policy, both `action block`, both installed and removed by the daemon itself (never
through charon), so they hold while charon or the daemon is down:

* **fail-closed**, per IPsec tunnel (valid or invalid, as long as its remote address is known):
  OUT `any -> remote/host` and IN `remote/host -> any` for the tunnel's protocol (GRE, or UDP or
  STT's TCP to its destination port; for a port of a type IPsec lacks, the protocol and port OVS
  sends it with; `remote_ip=flow`: to and from every address), no mark (so they match every skb
  mark). Whenever charon's per-peer trap or IPsec policy exists it wins and the traffic is
  encrypted; whenever it does not, the packet is dropped instead of leaving (or being accepted)
  in clear.
  `other_config:ipsec_fail_open=true` turns these off: plaintext then flows while no charon
  policy exists (upstream's behaviour).
* **ipsec_skb_mark**: OUT, IPv4 and IPv6, `0/0 <-> 0/0`, GRE, and UDP (TCP for STT) to every
  tunnel destination port, carrying `mark VALUE mask MASK`.

Ownership lives in the kernel object: a block policy at one of our reserved priorities, of a
shape these plans make, is ours (`is_owned`); the netlink adapter creates a policy only where its
key is free and replaces or deletes only ours. See the comment above `FAIL_CLOSED_PRIORITY` for
why these numbers.

Here: one policy (`PolicySpec`) and which ones are ours (`is_owned`); the policies a config wants
and why (`explain_protection`, each reason a typed `PolicyReason`; `protect_*`); what to add and
remove to get them (`policies_to_add_and_remove`, `policies_to_add_and_remove_for_change`).
Address text is parsed in `addresses`.

About 610 lines, in one file because a policy's shape (and its compact storage, issue 14), its
priority (the long comment below is why these numbers are safe next to charon's) and the reasons
it is wanted are read together.

May import: addresses, model, stdlib.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from ovs_ipsec.core.addresses import canonical_prefix
from ovs_ipsec.core.model import (
    DEFAULT_DST_PORT,
    IPPROTO_GRE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OVS_TUNNEL_WIRE,
    REMOTE_FLOW,
    Config,
    InvalidTunnel,
    SkbMark,
    Tunnel,
    TunnelType,
)

# Priorities (lower number = higher precedence; the kernel uses the matching policy with the
# lowest number). charon 5.9.8 computes every priority as
#     base - 512*(src+dst prefix bits) - 256*(proto set) - 4*(port-mask bits) - 2*(interface)
#          - (1 unless the class is ROUTED)
# with base PASS 200,000, ROUTED/DEFAULT 400,000 and FALLBACK 600,000. So:
#   * ROUTED (trap) policies are always even and <= 400,000; DEFAULT (installed IPsec) and PASS
#     are <= 399,999; FALLBACK (VICI drop/pass shunts) is >= 600,000 - 512*256 - 256 - 128 - 3
#     = 468,541. Nothing charon computes lies strictly between 400,000 and 468,541, and we also
#     pick odd numbers, which ROUTED can never produce.
#   * Being numerically greater than every per-peer trap/IPsec policy (IPv4 /32<->/32 GRE: 366,976;
#     IPv6 /128<->/128 UDP+port: 268,608), ours lose whenever charon's exist: a trap turns the
#     packet into an acquire, an installed SA encrypts it. Ours only decide when charon has
#     nothing for that traffic.
#   * Priority is not part of the kernel's policy key (selector + direction + mark [+ type,
#     if_id]), so distinct priorities alone would not keep us apart from charon: the keys differ
#     too. Fail-closed policies always have a /1 side (see _ANY_HALVES) while charon's transport
#     policies are /32<->/32 or /128<->/128; the skb-mark policies are `0/0 <-> 0/0` like a VICI
#     drop shunt, and the daemon never loads VICI drop shunts (a shunt with the same selector and
#     mark would adopt our policy and delete it when unloaded).
# The two numbers are distinct only so that `describe()` and the status output can tell the kinds
# apart; both are blocks, so their relative precedence never changes a verdict.
FAIL_CLOSED_PRIORITY = 430_001
SKB_MARK_PRIORITY = 430_003
OWNED_PRIORITIES = frozenset({FAIL_CLOSED_PRIORITY, SKB_MARK_PRIORITY})

BLOCK = "block"
DIRECTIONS = ("out", "in")

# The tunnel ports ipsec_skb_mark always covers, whatever OVSDB holds: the default ports of the
# types IPsec supports (UDP: VXLAN, Geneve; TCP: STT), as upstream's prevent_unencrypted_* did.
_ALWAYS_PORTS = tuple(sorted((kind.protocol, port) for kind, port in DEFAULT_DST_PORT.items()))
_ALWAYS_UDP_PORTS = tuple(port for proto, port in _ALWAYS_PORTS if proto == IPPROTO_UDP)
_ALWAYS_TCP_PORTS = tuple(port for proto, port in _ALWAYS_PORTS if proto == IPPROTO_TCP)
_ANY = {4: "0.0.0.0/0", 6: "::/0"}
# "Any address" as two halves. charon installs a trap as `0.0.0.0/0 <-> peer/32` when it cannot
# tell its own address for a peer (no route yet, local_ip unset); one `0/0` block of ours would
# then have the very same kernel key (selector + direction + mark; priority is not part of it),
# and the two would overwrite each other. charon never uses /1, so the halves never collide.
_ANY_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}
_HOST_BITS = {4: 32, 6: 128}
_BLOCKED_PROTOCOLS = frozenset({IPPROTO_GRE, IPPROTO_UDP, IPPROTO_TCP})
# Protocol names as iproute2 prints and reads them (/etc/protocols); others are numbers.
PROTOCOL_NUMBERS: Mapping[str, int] = MappingProxyType(
    {
        "ip": 0,
        "icmp": 1,
        "igmp": 2,
        "ipencap": 4,
        "tcp": 6,
        "udp": 17,
        "ipv6": 41,
        "gre": 47,
        "esp": 50,
        "ah": 51,
        "ipv6-icmp": 58,
        "dccp": 33,
        "ipcomp": 108,
        "sctp": 132,
        "mobility-header": 135,
        "udplite": 136,
    }
)
# 0 in a selector means any protocol: shown as a number, not as "ip".
PROTOCOL_NAMES: Mapping[int, str] = MappingProxyType(
    {number: name for name, number in PROTOCOL_NUMBERS.items() if number}
)
_PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite
_PURPOSE = {FAIL_CLOSED_PRIORITY: "fail-closed", SKB_MARK_PRIORITY: "ipsec_skb_mark"}


def protocol_name(number: int) -> str:
    """`gre` for 47, `proto 253` for a protocol without a name."""
    return PROTOCOL_NAMES.get(number, f"proto {number}")


class PolicyShape(NamedTuple):
    """Everything of a policy but its two addresses."""

    direction: str
    family: int
    proto: int
    sport: int | None
    dport: int | None
    mark: int
    mask: int
    priority: int
    action: str


_SHAPES: dict[PolicyShape, PolicyShape] = {}
_SORT_PARTS: dict[PolicyShape, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
# Ours take a few dozen shapes; observed foreign policies could bring any number of them, so
# past this many a new shape is validated every time and not kept (equality never needs it).
_MAX_SHAPES = 4096
_FIELDS = ("direction", "family", "src", "dst", "proto", "sport", "dport", "mark", "mask",
           "priority", "action")  # fmt: skip


def _sort_parts(shape: PolicyShape) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A shape's fields before the addresses and after them, in `PolicySpec.sort_key` order."""
    direction, family, proto, sport, dport, mark, mask, priority, action = shape
    sport_key = -1 if sport is None else sport
    dport_key = -1 if dport is None else dport
    parts = ((family, priority, direction), (proto, sport_key, dport_key, mark, mask, action))
    if len(_SORT_PARTS) < _MAX_SHAPES:
        _SORT_PARTS[shape] = parts
    return parts


def _validated_shape(shape: PolicyShape) -> PolicyShape:
    """The one shared copy of a policy's shape. Thousands of tunnels' policies have a few dozen
    shapes between them, so each spec keeps only its addresses and a reference (issue 14: memory
    per tunnel)."""
    known = _SHAPES.get(shape)
    if known is not None:
        return known
    direction, family, proto, sport, dport, mark, mask, _priority, action = shape
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")
    if action not in ("block", "allow"):
        raise ValueError(f"action must be 'block' or 'allow', got {action!r}")
    if family not in _ANY:
        raise ValueError(f"family must be 4 or 6, got {family!r}")
    if not 0 <= proto <= 255:
        raise ValueError(f"proto must be 0..255, got {proto}")
    for port in (sport, dport):
        if port is not None and not 1 <= port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {port}")
        if port is not None and proto not in _PORT_PROTOCOLS:
            # The kernel would take it (and match nothing); iproute2 refuses it.
            raise ValueError(f"a port selector needs TCP, UDP, SCTP, DCCP or UDP-Lite, not "
                             f"protocol {proto}")  # fmt: skip
    if not (0 <= mark <= 0xFFFFFFFF and 0 <= mask <= 0xFFFFFFFF):
        raise ValueError("mark and mask must be 32-bit")
    if mark & ~mask:
        # The kernel stores value & mask; anything else would never equal what we observe.
        raise ValueError(f"mark {mark:#x} has bits outside mask {mask:#x}")
    return _SHAPES.setdefault(shape, shape) if len(_SHAPES) < _MAX_SHAPES else shape


@functools.total_ordering
class PolicySpec:
    """One kernel XFRM policy, as the daemon wants it and as `Xfrm.observe()` reports it.

    `src`/`dst` are canonical prefixes (`canonical_prefix`); `mark`/`mask` 0/0 means no mark
    (matches every skb mark); `sport`/`dport` None means any port. Immutable; equal, hashed and
    ordered by its fields in the order of the constructor's arguments, like a frozen ordered
    dataclass; sort mixed collections with `sort_key` (None ports do not compare with ints).

    Stored as the two addresses and a shared, validated `PolicyShape` (the other nine fields).
    """

    __slots__ = ("_shape", "src", "dst")
    _shape: PolicyShape
    src: str
    dst: str

    def __init__(
        self,
        direction: str,
        family: int,
        src: str,
        dst: str,
        proto: int,
        sport: int | None,
        dport: int | None,
        mark: int,
        mask: int,
        priority: int,
        action: str = BLOCK,
    ) -> None:
        shape = _validated_shape(
            PolicyShape(direction, family, proto, sport, dport, mark, mask, priority, action)
        )
        for side in (src, dst):
            # Canonical IPv6 text always has a colon, IPv4 never.
            if canonical_prefix(side) != side or (":" in side) != (family == 6):
                raise ValueError(f"{side!r} is not a canonical IPv{family} prefix")
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PolicySpec is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PolicySpec is immutable: cannot delete {name!r}")

    @property
    def direction(self) -> str:
        return self._shape.direction

    @property
    def family(self) -> int:
        return self._shape.family

    @property
    def proto(self) -> int:
        return self._shape.proto

    @property
    def sport(self) -> int | None:
        return self._shape.sport

    @property
    def dport(self) -> int | None:
        return self._shape.dport

    @property
    def mark(self) -> int:
        return self._shape.mark

    @property
    def mask(self) -> int:
        return self._shape.mask

    @property
    def priority(self) -> int:
        return self._shape.priority

    @property
    def action(self) -> str:
        return self._shape.action

    def replace(self, **changes: Any) -> PolicySpec:
        """A copy with some fields changed (what `dataclasses.replace` does for a dataclass)."""
        return PolicySpec(**{**dict(zip(_FIELDS, self._fields(), strict=True)), **changes})

    def _fields(self) -> tuple[Any, ...]:
        d, family, proto, sport, dport, mark, mask, priority, action = self._shape
        return (d, family, self.src, self.dst, proto, sport, dport, mark, mask, priority, action)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not PolicySpec:
            return NotImplemented
        assert isinstance(other, PolicySpec)
        return self.src == other.src and self.dst == other.dst and self._shape == other._shape

    def __hash__(self) -> int:
        return hash((self._shape, self.src, self.dst))

    def __lt__(self, other: PolicySpec) -> bool:
        if other.__class__ is not PolicySpec:
            return NotImplemented
        return self._fields() < other._fields()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(_FIELDS, self._fields(), strict=True))
        return f"PolicySpec({shown})"

    def key(self) -> tuple[Any, ...]:
        """What the kernel keys a policy by (selector, direction, mark); priority is not in it."""
        return (
            self.direction,
            self.family,
            self.src,
            self.dst,
            self.proto,
            self.sport,
            self.dport,
            self.mark,
            self.mask,
        )

    def sort_key(self) -> tuple[Any, ...]:
        """Orders as (family, priority, direction, src, dst, proto, sport, dport, mark, mask,
        action) does, a None port first. The fields around the addresses come as two tuples
        kept per shape: sorting a bulk load's 20,000 policies builds 20,000 tuples of four,
        not of eleven (transients whose memory the daemon kept afterwards; issue 14)."""
        parts = _SORT_PARTS.get(self._shape) or _sort_parts(self._shape)
        return (parts[0], self.src, self.dst, parts[1])

    @property
    def purpose(self) -> str | None:
        """`fail-closed`, `ipsec_skb_mark`, or None for a priority that is not ours."""
        return _PURPOSE.get(self.priority)

    def describe(self) -> str:
        """One line for humans, e.g. `out 0.0.0.0/0 -> 10.0.0.2/32 gre any mark: block ...`."""
        proto = protocol_name(self.proto)
        ports = "".join(
            f" {name} {port}"
            for name, port in (("sport", self.sport), ("dport", self.dport))
            if port is not None
        )
        mark = f"mark {self.mark:#x}/{self.mask:#x}" if self.mask else "any mark"
        purpose = f", {self.purpose}" if self.purpose else ""
        return (
            f"{self.direction} {self.src} -> {self.dst} {proto}{ports} {mark}: "
            f"{self.action} (priority {self.priority}{purpose})"
        )


class Purpose(enum.Enum):
    """Why a block policy is wanted."""

    TUNNEL = "tunnel"  # fail-closed for a valid tunnel
    INVALID_TUNNEL = "invalid tunnel"  # fail-closed for a tunnel rejected by parse or plan
    SKB_MARK = "ipsec_skb_mark"  # other_config:ipsec_skb_mark


@dataclass(frozen=True, slots=True)
class PolicyReason:
    """One reason a block policy is wanted: its purpose and, for fail-closed ones, the tunnel.
    `str()` is how people read it: `tunnel NAME`, `invalid tunnel NAME`, `ipsec_skb_mark`."""

    purpose: Purpose
    tunnel: str | None = None

    def __str__(self) -> str:
        if self.tunnel is None:
            return self.purpose.value
        return f"{self.purpose.value} {self.tunnel}"


SKB_MARK_REASON = PolicyReason(Purpose.SKB_MARK)


def is_owned(policy: Any) -> bool:
    """True for a policy (PolicySpec or observed) the daemon created: a block at our priority,
    and, for a PolicySpec, of a shape the daemon makes (a fail-closed block: no mark, a /1 on
    the local side; an skb-mark block: `0/0 -> 0/0`), with a protocol it blocks.

    charon never produces these priorities (see FAIL_CLOSED_PRIORITY), and operators are told
    not to use them; any other policy is foreign and is never returned by observe nor removed.
    """
    if policy.action != BLOCK or policy.priority not in OWNED_PRIORITIES:
        return False
    return not isinstance(policy, PolicySpec) or _has_our_shape(policy)


def _has_our_shape(spec: PolicySpec) -> bool:
    # Earlier versions' shapes count too (a `0/0` local side, inbound skb-mark blocks), so
    # that an upgraded daemon still removes what its predecessor left.
    if spec.sport is not None or spec.proto not in _BLOCKED_PROTOCOLS:
        return False
    if spec.priority == SKB_MARK_PRIORITY:
        return spec.src == spec.dst == _ANY[spec.family]
    local = spec.src if spec.direction == "out" else spec.dst
    return not spec.mask and (local in _ANY_HALVES[spec.family] or local == _ANY[spec.family])


def explain_protection(config: Config) -> dict[PolicySpec, tuple[PolicyReason, ...]]:
    """Every desired policy, with the reasons it exists.

    Deterministic (insertion order follows sorted tunnel names) and O(tunnels + ports).
    """
    reasons: dict[PolicySpec, list[PolicyReason]] = {}

    def want(specs: Iterable[PolicySpec], reason: PolicyReason) -> None:
        for spec in specs:
            bucket = reasons.setdefault(spec, [])
            if reason not in bucket:
                bucket.append(reason)

    gc = config.global_config
    if not gc.fail_open:
        for name in sorted(config.tunnels):
            want(protect_tunnel(config.tunnels[name]), PolicyReason(Purpose.TUNNEL, name))
        for name in sorted(config.invalid):
            want(protect_invalid(config.invalid[name]), PolicyReason(Purpose.INVALID_TUNNEL, name))
    if gc.skb_mark is not None:
        ports = {IPPROTO_UDP: set(config.tunnel_ports), IPPROTO_TCP: set(config.tcp_tunnel_ports)}
        for t in config.tunnels.values():
            if t.dst_port is not None and t.type.protocol in ports:
                ports[t.type.protocol].add(t.dst_port)
        for i in config.invalid.values():
            known = i.type.protocol if i.type else IPPROTO_UDP
            proto = OVS_TUNNEL_WIRE.get(i.row_type, (known,))[0]
            if i.dst_port is not None and proto in ports:
                ports[proto].add(i.dst_port)
        want(protect_skb_mark(gc.skb_mark, ports[IPPROTO_UDP], ports[IPPROTO_TCP]), SKB_MARK_REASON)
    return {spec: tuple(why) for spec, why in reasons.items()}


def protect_tunnel(tunnel: Tunnel) -> tuple[PolicySpec, ...]:
    """Fail-closed blocks for one valid tunnel's traffic, both directions."""
    return tuple(_fail_closed(tunnel.remote_ip, (_wire(tunnel.type, tunnel.dst_port),)))


def protect_invalid(invalid: InvalidTunnel) -> tuple[PolicySpec, ...]:
    """Fail-closed blocks for an invalid tunnel, as far as its traffic is known: the protocol
    and port OVS sends it with (`parse.dst_port_of`), for every type OVS creates, IPsec's or not.
    `remote_ip=flow` (OVS sends wherever a flow says) is blocked to every address."""
    if not invalid.remote_ip:
        return ()  # nothing is known to block
    wire = OVS_TUNNEL_WIRE.get(invalid.row_type or (invalid.type or ""))
    targets: tuple[tuple[int, int | None], ...]
    if invalid.type is not None:
        targets = (_wire(invalid.type, invalid.dst_port),)
    elif wire is not None:
        proto = wire[0]
        targets = ((proto, None if proto == IPPROTO_GRE else invalid.dst_port),)
    else:
        # A type OVS does not know: cover everything it could be (fail closed).
        ports = set(_ALWAYS_UDP_PORTS)
        if invalid.dst_port is not None:
            ports.add(invalid.dst_port)
        targets = ((IPPROTO_GRE, None),) + tuple((IPPROTO_UDP, p) for p in sorted(ports))
    if invalid.remote_ip == REMOTE_FLOW:
        return tuple(_fail_closed_anywhere(targets))
    return tuple(_fail_closed(invalid.remote_ip, targets))


def protect_skb_mark(
    skb_mark: SkbMark, tunnel_ports: Iterable[int], tcp_tunnel_ports: Iterable[int] = ()
) -> tuple[PolicySpec, ...]:
    """ipsec_skb_mark blocks: GRE, every tunnel UDP port and every STT (TCP) port, IPv4 and
    IPv6, outbound.

    Outbound only: a received packet meets the kernel's inbound policy check before anything
    could mark it, so its mark is always 0. An inbound rule would thus drop every plain
    tunnel's traffic under `0/1` (no flow or egress_pkt_mark could ever let it in, against the
    OVS document's promise that marking enables non-IPsec tunnels) and nothing under `1/1`.
    Plaintext arriving from an IPsec peer is dropped per tunnel by the fail-closed blocks (and
    by charon's inbound trap policies) instead.
    """
    mask = skb_mark.mask & 0xFFFFFFFF
    value = skb_mark.value & mask  # what the kernel would store anyway
    udp_ports = set(_ALWAYS_UDP_PORTS) | set(tunnel_ports)
    tcp_ports = set(_ALWAYS_TCP_PORTS) | set(tcp_tunnel_ports)
    targets = (
        ((IPPROTO_GRE, None),)
        + tuple((IPPROTO_UDP, p) for p in sorted(udp_ports) if _valid_port(p))
        + tuple((IPPROTO_TCP, p) for p in sorted(tcp_ports) if _valid_port(p))
    )
    return tuple(
        PolicySpec(
            direction=direction,
            family=family,
            src=_ANY[family],
            dst=_ANY[family],
            proto=proto,
            sport=None,
            dport=dport,
            mark=value,
            mask=mask,
            priority=SKB_MARK_PRIORITY,
        )
        for family in (4, 6)
        for direction in ("out",)
        for proto, dport in targets
    )


def plan_protection(config: Config) -> frozenset[PolicySpec]:
    """The complete set of block policies the daemon should own for `config`."""
    return frozenset(explain_protection(config))


def policies_to_add_and_remove(
    desired: Iterable[PolicySpec], observed: Iterable[PolicySpec]
) -> tuple[tuple[PolicySpec, ...], tuple[PolicySpec, ...]]:
    """(to_add, to_remove), each sorted.

    Order rule: callers must apply every addition before any removal (Xfrm.apply does), so a
    change (say ipsec_skb_mark 0/1 -> 1/1, or a tunnel's port) never leaves a moment with neither
    the old nor the new block in place.

    An observed policy whose key (selector + direction + mark) is re-added with another priority is
    not removed: `ip xfrm policy update` replaces it in place, and deleting by key afterwards would
    delete the new one.
    """
    desired_set = frozenset(desired)
    observed_set = frozenset(observed)
    to_add = desired_set - observed_set
    to_remove = not_replaced(observed_set - desired_set, to_add)
    return (
        tuple(sorted(to_add, key=PolicySpec.sort_key)),
        tuple(sorted(to_remove, key=PolicySpec.sort_key)),
    )


def not_replaced(
    removals: Iterable[PolicySpec], additions: Iterable[PolicySpec]
) -> set[PolicySpec]:
    """The removals that keep their policy's kernel key to themselves: one with the key of an
    addition was replaced in place by it, and deleting by key would delete the new one. The
    keys are built only when there is a removal (a bulk load has thousands of additions)."""
    kept = set(removals)
    if kept:
        added_keys = {spec.key() for spec in additions}
        kept = {spec for spec in kept if spec.key() not in added_keys}
    return kept


def policies_to_add_and_remove_for_change(
    current: AbstractSet[PolicySpec], wanted: Iterable[PolicySpec], unwanted: Iterable[PolicySpec]
) -> tuple[tuple[PolicySpec, ...], tuple[PolicySpec, ...]]:
    """`policies_to_add_and_remove((current - unwanted) | wanted, current)`, in time proportional
    to the change rather than to the thousands of policies in `current`."""
    wanted_set = set(wanted)
    to_add = {spec for spec in wanted_set if spec not in current}
    to_remove = not_replaced(
        (spec for spec in unwanted if spec in current and spec not in wanted_set), to_add
    )
    return (
        tuple(sorted(to_add, key=PolicySpec.sort_key)),
        tuple(sorted(to_remove, key=PolicySpec.sort_key)),
    )


def _wire(kind: TunnelType, dst_port: int | None) -> tuple[int, int | None]:
    # The port comes from parse.dst_port_of (the type's default when options:dst_port is unset),
    # never from a default of this module's own.
    return (kind.protocol, dst_port if kind.has_port else None)


def _valid_port(port: int) -> bool:
    return 1 <= port <= 0xFFFF


def _host(address: str) -> tuple[int, str] | None:
    """(family, `addr/32|128`) for a remote address; None if it is not a literal address."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return None  # parse never yields one; there is no host to block
    return ip.version, f"{ip.compressed}/{_HOST_BITS[ip.version]}"


def _fail_closed(remote_ip: str, targets: Iterable[tuple[int, int | None]]) -> list[PolicySpec]:
    host = _host(remote_ip)
    if host is None:
        return []
    family, remote = host
    return _blocks(family, ((half, remote) for half in _ANY_HALVES[family]), targets)


def _fail_closed_anywhere(targets: Iterable[tuple[int, int | None]]) -> list[PolicySpec]:
    """Blocks to and from every address, both families: halves on both sides, so that no key
    is a `0/0` one (a VICI drop shunt's or an skb-mark block's) nor a charon trap's."""
    specs = []
    for family, halves in _ANY_HALVES.items():
        pairs = [(local, remote) for local in halves for remote in halves]
        specs += _blocks(family, pairs, tuple(targets))
    return specs


def _blocks(
    family: int, pairs: Iterable[tuple[str, str]], targets: Iterable[tuple[int, int | None]]
) -> list[PolicySpec]:
    """OUT `local -> remote` and IN `remote -> local` blocks of each (local, remote) pair."""
    pairs, targets = tuple(pairs), tuple(targets)
    specs = []
    for proto, dport in targets:
        if dport is not None and not _valid_port(dport):
            continue
        for direction in DIRECTIONS:
            for local, remote in pairs:
                src, dst = (local, remote) if direction == "out" else (remote, local)
                specs.append(
                    PolicySpec(
                        direction=direction,
                        family=family,
                        src=src,
                        dst=dst,
                        proto=proto,
                        sport=None,
                        dport=dport,
                        mark=0,
                        mask=0,
                        priority=FAIL_CLOSED_PRIORITY,
                    )
                )
    return specs
