"""Plain, frozen data that the pure core passes around.

Everything here is stdlib-only and immutable: OVSDB rows arrive as `InterfaceRow`/`Snapshot`,
`parse` turns them into `Tunnel`/`GlobalConfig` (or `Invalid` reasons), and `plan` turns those into
desired charon and kernel state. May import: log_text, stdlib.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ovs_ipsec.core.log_text import printable


class TunnelType(enum.StrEnum):
    """The tunnel types IPsec protects: GRE (IPv4 `gre`, IPv6 `ip6gre`: OVS's kernel datapath
    sends GRE over IPv6 only as ip6gre), the UDP ones, and STT (TCP-like, to a TCP port)."""

    GRE = "gre"
    IP6GRE = "ip6gre"
    GENEVE = "geneve"
    VXLAN = "vxlan"
    STT = "stt"

    @property
    def protocol(self) -> int:
        """The IP protocol of its packets on the wire (OVS_TUNNEL_WIRE)."""
        return OVS_TUNNEL_WIRE[self.value][0]

    @property
    def has_port(self) -> bool:
        """True for the types sent to a destination port (UDP, STT's TCP); GRE has none."""
        return self.protocol != IPPROTO_GRE


IPPROTO_TCP = 6
IPPROTO_GRE = 47
IPPROTO_UDP = 17
# Every tunnel type Open vSwitch creates in the kernel datapath, as its packets leave the host:
# (IP protocol, destination port when options:dst_port is unset; None: no port or no default).
# From OVS lib/netdev-vport.c: set_tunnel_config's defaults and netdev_vport_needs_dst_port (the
# types that read options:dst_port). Fail-closed blocks of a port that carries IPsec options
# cover this, whether or not IPsec supports its type.
OVS_TUNNEL_WIRE: Mapping[str, tuple[int, int | None]] = MappingProxyType(
    {
        "gre": (IPPROTO_GRE, None),
        "ip6gre": (IPPROTO_GRE, None),
        "erspan": (IPPROTO_GRE, None),
        "ip6erspan": (IPPROTO_GRE, None),
        "geneve": (IPPROTO_UDP, 6081),
        "vxlan": (IPPROTO_UDP, 4789),
        "lisp": (IPPROTO_UDP, 4341),
        "gtpu": (IPPROTO_UDP, 2152),
        "bareudp": (IPPROTO_UDP, None),
        "stt": (IPPROTO_TCP, 7471),
    }
)
# OVS tunnel types whose UDP destination port matters for ipsec_skb_mark, IPsec or not, and the
# IANA port the kernel's device uses when options:dst_port is unset (None: no default).
UDP_TUNNEL_PORTS: Mapping[str, int | None] = MappingProxyType(
    {kind: port for kind, (proto, port) in OVS_TUNNEL_WIRE.items() if proto == IPPROTO_UDP}
)
# The types that read options:dst_port (netdev_vport_needs_dst_port), STT's TCP port included.
DST_PORT_TYPES = frozenset(
    kind for kind, (proto, _) in OVS_TUNNEL_WIRE.items() if proto != IPPROTO_GRE
)
# The same ports for the tunnel types IPsec supports that have one (Geneve, VXLAN: UDP; STT: TCP).
DEFAULT_DST_PORT: Mapping[TunnelType, int] = MappingProxyType(
    {kind: port for kind in TunnelType if (port := OVS_TUNNEL_WIRE[kind][1]) is not None}
)


class AuthMode(enum.StrEnum):
    PSK = "psk"
    SELF_SIGNED = "self-signed"
    CA_SIGNED = "ca-signed"


class Secret:
    """A secret value (PSK, private key) that never shows itself in logs, reprs or output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself; only the charon adapter calls this, at the VICI call."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    def __str__(self) -> str:
        return "<redacted>"

    def keyed_digest(self, key: bytes) -> str:
        """A keyed BLAKE2b digest of the value (hex): tells whether a secret is the one
        recorded earlier without the record holding it (core/handover.py)."""
        return hashlib.blake2b(self._value.encode(), key=key, digest_size=32).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # pragma: no cover - defensive: never pickle a secret
        raise TypeError("secrets are not serialisable")


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why one OVSDB key made a tunnel (or the global config) unusable."""

    key: str
    reason: str

    def describe(self, where: str) -> str:
        return f"{where}: {printable(self.key)}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# Input: OVSDB snapshot as plain data (built by the ovsdb adapter).


# An OVSDB row's identity: the IDL's own uuid.UUID object (kept as is, not as a string copy of
# it, one per row); anything hashable in tests.
RowId = Hashable


# An option's value: text, except options:psk, which the OVSDB adapter wraps in a Secret as it
# copies the row, so no repr of a row (or of the planner holding rows) shows it. Plain text is
# accepted there too (tests, tools).
OptionValue = str | Secret


@dataclass(frozen=True, slots=True)
class InterfaceRow:
    name: str
    type: str
    options: Mapping[str, OptionValue]


@dataclass(frozen=True, slots=True)
class PortStatus:
    """What ovs-vswitchd reports of a port (display only, as upstream shows it): its OpenFlow
    port number (None: not assigned yet) and its CFM fault (None: CFM not enabled)."""

    ofport: int | None = None
    cfm_fault: bool | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    interfaces: tuple[InterfaceRow, ...]
    other_config: Mapping[str, str]


# ---------------------------------------------------------------------------------------------
# Parsed model.


@dataclass(frozen=True, slots=True)
class SkbMark:
    value: int
    mask: int

    def __str__(self) -> str:
        return f"{self.value:#x}/{self.mask:#x}"


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    certificate: str | None = None
    private_key: str | None = None
    ca_cert: str | None = None
    skb_mark: SkbMark | None = None
    fail_open: bool = False
    errors: tuple[Invalid, ...] = ()
    warnings: tuple[Invalid, ...] = ()  # valid, but likely not what was meant


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A valid IPsec tunnel, as far as OVSDB alone can tell."""

    name: str
    type: TunnelType
    remote_ip: str
    local_ip: str | None
    dst_port: int | None  # None for GRE and ip6gre
    auth: AuthMode
    psk: Secret | None = None
    remote_cert: str | None = None
    remote_name: str | None = None
    ike_options: tuple[tuple[str, str], ...] = ()

    @property
    def family(self) -> int:
        return 6 if ":" in self.remote_ip else 4


# InvalidTunnel.remote_ip of `remote_ip=flow`: OVS sends to whatever address a flow sets.
REMOTE_FLOW = "flow"


@dataclass(frozen=True, slots=True)
class InvalidTunnel:
    """A port that asked for IPsec but cannot have it; what is known of its traffic stays known.

    `remote_ip`, `type` and `dst_port` are kept when they parsed, so its plaintext can still be
    blocked (fail closed) even though no connection is loaded for it.
    """

    name: str
    errors: tuple[Invalid, ...]
    type: TunnelType | None = None
    remote_ip: str | None = None  # where OVS sends its packets; REMOTE_FLOW: anywhere
    dst_port: int | None = None
    row_type: str = ""  # the Interface's type as OVSDB holds it (for a type IPsec lacks)

    @property
    def reason(self) -> str:
        # Keys are whatever the OVSDB writer chose: escaped and cut, as names are in logs.
        return "; ".join(f"{printable(e.key)}: {e.reason}" for e in self.errors)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole parsed OVSDB state that concerns IPsec."""

    global_config: GlobalConfig = field(default_factory=GlobalConfig)
    tunnels: Mapping[str, Tunnel] = field(default_factory=dict)
    invalid: Mapping[str, InvalidTunnel] = field(default_factory=dict)
    # Every UDP destination port any OVSDB tunnel uses (IPsec or not), for ipsec_skb_mark.
    tunnel_ports: tuple[int, ...] = ()
    # The same for TCP: every STT tunnel's destination port.
    tcp_tunnel_ports: tuple[int, ...] = ()
    # Per IPsec port: its configuration's version, 1 when it appeared, one more at each change
    # (upstream's `v<N>` in tunnels/show; any global change counts, as it does upstream).
    versions: Mapping[str, int] = field(default_factory=dict)
