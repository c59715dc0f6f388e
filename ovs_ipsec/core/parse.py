"""OVSDB snapshot -> model. The only place where an OVSDB key is read and validated.

Never raises on bad input: a bad port becomes an `InvalidTunnel` whose reasons name the key, and
a bad global key becomes an `Invalid` in `GlobalConfig.errors`.

Over 400 lines because it is that one place: every key of Interface `options` and Open_vSwitch
`other_config` the daemon reads is validated here (the project's rule that a reader finds the
handling of one OVSDB key in exactly one file), each with the error text that names it.

May import: model, log_text, stdlib.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ovs_ipsec.core.log_text import quoted
from ovs_ipsec.core.model import (
    DST_PORT_TYPES,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OVS_TUNNEL_WIRE,
    REMOTE_FLOW,
    AuthMode,
    Config,
    GlobalConfig,
    InterfaceRow,
    Invalid,
    InvalidTunnel,
    OptionValue,
    Secret,
    SkbMark,
    Snapshot,
    Tunnel,
    TunnelType,
)

# Options whose mere presence makes a port an IPsec tunnel (upstream's rule: even when empty).
IPSEC_AUTH_KEYS = ("psk", "remote_cert", "remote_name")
IPSEC_OPTION_PREFIX = "ipsec_"
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
MAX_OPTION_LENGTH = 4096
_DECIMAL = re.compile(r"[0-9]{1,10}")
_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,8}")
# C's atoi: leading white space (isspace in the C locale), a sign, then digits up to the first
# other character.
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]*)")
# What charon reads as a wildcard in an FQDN identity, and characters no name has.
_NOT_IN_A_NAME = re.compile(r"[*\x00-\x1f\x7f-\x9f]")


def is_ipsec_port(options: Mapping[str, OptionValue]) -> bool:
    return any(key in options for key in IPSEC_AUTH_KEYS)


def parse_config(snapshot: Snapshot) -> Config:
    """The whole IPsec configuration of one OVSDB snapshot."""
    global_config = parse_global(snapshot.other_config)
    tunnels: dict[str, Tunnel] = {}
    invalid: dict[str, InvalidTunnel] = {}
    for row in snapshot.interfaces:
        if not is_ipsec_port(row.options):
            continue
        parsed = parse_tunnel(row, global_config)
        if isinstance(parsed, Tunnel):
            tunnels[row.name] = parsed
        else:
            invalid[row.name] = parsed
    return Config(
        global_config=global_config,
        tunnels=tunnels,
        invalid=invalid,
        tunnel_ports=tunnel_ports(snapshot.interfaces),
        tcp_tunnel_ports=tunnel_ports(snapshot.interfaces, IPPROTO_TCP),
    )


def parse_global(other_config: Mapping[str, str]) -> GlobalConfig:
    errors: list[Invalid] = []
    paths: dict[str, str | None] = {}
    for key in ("certificate", "private_key", "ca_cert"):
        value = other_config.get(key)
        if value is not None and not value.strip():
            errors.append(Invalid(key, "is empty"))
            value = None
        elif value is not None and not value.startswith("/"):
            errors.append(Invalid(key, f"must be an absolute path, got {quoted(value)}"))
            value = None
        paths[key] = value

    skb_mark: SkbMark | None = None
    warnings: list[Invalid] = []
    raw_mark = other_config.get("ipsec_skb_mark")
    if raw_mark is not None:
        skb_mark, mark_error = parse_skb_mark(raw_mark)
        if mark_error:
            errors.append(mark_error)
        elif skb_mark is not None and skb_mark.mask == 0:
            warnings.append(
                Invalid(
                    "ipsec_skb_mark",
                    f"mask 0 ({quoted(raw_mark)}) matches every packet: all GRE, tunnel UDP and "
                    "STT TCP traffic of this host that IPsec does not carry is blocked, plain "
                    "tunnels' included",
                )
            )

    fail_open = False
    raw_fail_open = other_config.get("ipsec_fail_open")
    if raw_fail_open is not None:
        flag = parse_bool(raw_fail_open)
        if flag is None:
            errors.append(
                Invalid("ipsec_fail_open", f"must be true or false, got {quoted(raw_fail_open)}")
            )
        else:
            fail_open = flag

    return GlobalConfig(
        certificate=paths["certificate"],
        private_key=paths["private_key"],
        ca_cert=paths["ca_cert"],
        skb_mark=skb_mark,
        fail_open=fail_open,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


def parse_skb_mark(text: str) -> tuple[SkbMark | None, Invalid | None]:
    """`VALUE/MASK` or `VALUE` (mask 0xffffffff); each decimal or 0x-hex, 32 bits."""
    key = "ipsec_skb_mark"
    value_text, slash, mask_text = text.strip().partition("/")
    value = _parse_u32(value_text)
    mask = _parse_u32(mask_text) if slash else 0xFFFFFFFF
    if value is None or mask is None:
        return None, Invalid(
            key, f"must be VALUE/MASK with 32-bit decimal or 0x-hex numbers, got {quoted(text)}"
        )
    if value & ~mask:
        return None, Invalid(
            key, f"value {value:#x} has bits outside mask {mask:#x}, so it could never match"
        )
    return SkbMark(value, mask), None


def parse_tunnel(row: InterfaceRow, global_config: GlobalConfig) -> Tunnel | InvalidTunnel:
    options = row.options
    errors: list[Invalid] = []

    tunnel_type: TunnelType | None
    try:
        tunnel_type = TunnelType(row.type)
    except ValueError:
        tunnel_type = None
        errors.append(
            Invalid(
                "type",
                f"IPsec is not supported on type {quoted(row.type)} "
                f"(supported: {', '.join(TunnelType)})",
            )
        )

    remote_ip = _parse_ip(options, "remote_ip", errors, required=True)
    local_ip = _parse_ip(options, "local_ip", errors, required=False)
    if remote_ip and local_ip and (":" in remote_ip) != (":" in local_ip):
        errors.append(Invalid("local_ip", "address family differs from remote_ip"))
    if tunnel_type is TunnelType.IP6GRE:
        errors.extend(_ip6gre_errors(remote_ip))

    # The port OVS sends to, for every type it has one; a bad value is reported only for the
    # types IPsec supports (the type's own reason says enough for the others).
    dst_port, port_error = dst_port_of(row)
    if port_error is not None and tunnel_type is not None:
        errors.append(port_error)

    auth, psk = _parse_auth(options, global_config, errors)

    ike_options = tuple(
        sorted(
            (key[len(IPSEC_OPTION_PREFIX) :], value)
            for key, value in options.items()
            if key.startswith(IPSEC_OPTION_PREFIX)
        )
    )
    for key, value in options.items():
        if key != "psk" and len(value) > MAX_OPTION_LENGTH:
            errors.append(
                Invalid(key or "''", f"value is longer than {MAX_OPTION_LENGTH} characters")
            )

    if errors or tunnel_type is None or remote_ip is None or auth is None:
        return InvalidTunnel(
            name=row.name,
            errors=tuple(errors),
            type=tunnel_type,
            remote_ip=remote_ip if remote_ip is not None else ovs_remote(options),
            dst_port=dst_port,
            row_type=row.type,
        )
    return Tunnel(
        name=row.name,
        type=tunnel_type,
        remote_ip=remote_ip,
        local_ip=local_ip,
        dst_port=dst_port,
        auth=auth,
        psk=psk,
        remote_cert=options.get("remote_cert"),
        remote_name=options.get("remote_name"),
        ike_options=ike_options,
    )


def _ip6gre_errors(remote_ip: str | None) -> list[Invalid]:
    if remote_ip and ":" not in remote_ip:
        # OVS's ip6gre device sends over IPv6 only: IPv4 (or IPv4-mapped) needs type=gre.
        reason = f"type=ip6gre needs an IPv6 address, got {remote_ip} (use type=gre for IPv4)"
        return [Invalid("remote_ip", reason)]
    return []


def _parse_auth(
    options: Mapping[str, OptionValue], global_config: GlobalConfig, errors: list[Invalid]
) -> tuple[AuthMode | None, Secret | None]:
    present = [key for key in IPSEC_AUTH_KEYS if key in options]
    if "psk" in options:
        if len(present) > 1:
            others = ", ".join(k for k in present if k != "psk")
            errors.append(
                Invalid(
                    "psk",
                    f"cannot be combined with {others} on one tunnel; "
                    "choose PSK or certificate authentication",
                )
            )
            return None, None
        value = options["psk"]
        psk = value.reveal() if isinstance(value, Secret) else value
        if not psk:
            errors.append(Invalid("psk", "is empty"))
            return None, None
        if len(psk) > MAX_OPTION_LENGTH:
            errors.append(Invalid("psk", f"is longer than {MAX_OPTION_LENGTH} characters"))
            return None, None
        # The row's own Secret when it is one: one object per secret.
        return AuthMode.PSK, value if isinstance(value, Secret) else Secret(psk)

    if "remote_cert" in options:
        mode, key = AuthMode.SELF_SIGNED, "remote_cert"
    else:
        mode, key = AuthMode.CA_SIGNED, "remote_name"
    value = options[key]
    if not value.strip():
        errors.append(Invalid(key, "is empty"))
        return None, None
    if mode is AuthMode.SELF_SIGNED and not value.startswith("/"):
        errors.append(Invalid(key, f"must be an absolute path, got {quoted(value)}"))
        return None, None
    if _NOT_IN_A_NAME.search(options.get("remote_name", "")):
        # charon matches `fqdn:*` and `fqdn:*.example` as wildcards: any certificate the CA
        # signed (for such a name) would be accepted as the peer.
        errors.append(
            Invalid(
                "remote_name",
                f"must be one peer's name, without wildcards ('*') or control characters, got "
                f"{quoted(options['remote_name'])}",
            )
        )
        return None, None
    missing = [k for k in ("certificate", "private_key") if getattr(global_config, k) is None]
    if mode is AuthMode.CA_SIGNED and global_config.ca_cert is None:
        missing.append("ca_cert")
    if missing:
        needed = ", ".join(f"other_config:{k}" for k in missing)
        errors.append(Invalid(key, f"{mode.value} authentication needs {needed} to be set"))
        return None, None
    return mode, None


def caveat(tunnel: Tunnel) -> str | None:
    """What makes a valid configuration carry nothing, though its IPsec works (logged once and
    shown by tunnels/show; the tunnel is still protected and loaded)."""
    if tunnel.type is TunnelType.GRE and tunnel.family == 6:
        return ("type=gre to an IPv6 remote_ip carries no traffic: Open vSwitch sends GRE over "
                "IPv4 only (IPv6 needs type=ip6gre)")  # fmt: skip
    if tunnel.type is TunnelType.IP6GRE:
        # Linux's flow-based ip6gre (OVS's) looks up a packet's XFRM policy with source `::`
        # (__gre6_xmit leaves it unset; ip6_tnl_xmit picks it after xfrm_lookup), so no
        # per-peer IPsec policy matches, and a transport-mode SA could not be found for `::`.
        return ("type=ip6gre carries no traffic under IPsec: Linux looks up IPsec policies for "
                "Open vSwitch's ip6gre packets before it picks their source address, so none "
                "matches and the fail-closed block drops them (none leaves in clear)")  # fmt: skip
    return None


def tunnel_ports(
    interfaces: tuple[InterfaceRow, ...], protocol: int = IPPROTO_UDP
) -> tuple[int, ...]:
    """Every UDP (or TCP: STT) destination port an OVSDB tunnel uses, IPsec or not (for
    ipsec_skb_mark)."""
    pairs = {p for p in map(row_wire_port, interfaces) if p is not None}
    return tuple(sorted(port for proto, port in pairs if proto == protocol))


def dst_port_of(row: InterfaceRow) -> tuple[int | None, Invalid | None]:
    """The destination port of one OVSDB tunnel port (IPsec or not): `options:dst_port`, or its
    type's default; None for a type without one (GRE). The only reader of `options:dst_port`:
    connections, block policies and the skb-mark ports all take it from here.

    A value that is not a port number is reported, and the port stands for it that OVS
    computes from it (what its packets really go to, so that blocks cover them): OVS reads the
    option with `htons(atoi(value))` (lib/netdev-vport.c), so `4790x`, `+4790` and `004790` are
    4790 and `70000` is 4464; 0 (no digits, `65536`) leaves the type's default."""
    default = OVS_TUNNEL_WIRE.get(row.type, (0, None))[1]
    text = row.options.get("dst_port")
    if row.type not in DST_PORT_TYPES or text is None:
        return default, None
    port = _parse_port(text)
    if port is None:
        return ovs_port(text) or default, Invalid(
            "dst_port", f"must be a port number 1-65535, got {quoted(text)}"
        )
    return port, None


def ovs_port(text: str) -> int:
    """`htons(atoi(text))` as OVS computes it: C's atoi (strtol, saturating at the 64-bit
    limits), cut to 16 bits; 0 when there are no digits."""
    match = _ATOI.match(text)
    assert match is not None  # every part of the pattern may be empty
    sign, digits = match.groups()
    number = int(digits) if digits else 0
    number = max(-(2**63), min(2**63 - 1, -number if sign == "-" else number))
    return number & 0xFFFF


def row_wire_port(row: InterfaceRow) -> tuple[int, int] | None:
    """(IP protocol, destination port) of one OVSDB tunnel port (IPsec or not) sent to a port:
    UDP types and STT (TCP); None for GRE, unknown types and a type without a default port
    (bareudp) that has no valid options:dst_port."""
    if row.type not in DST_PORT_TYPES:
        return None
    port = dst_port_of(row)[0]
    return None if port is None else (OVS_TUNNEL_WIRE[row.type][0], port)


def ovs_remote(options: Mapping[str, str]) -> str | None:
    """Where OVS sends a tunnel's packets though this daemon rejects its remote_ip (for the
    fail-closed blocks): REMOTE_FLOW for `flow` (anywhere), the IPv4 address of an IPv4-mapped
    IPv6 multicast or unspecified one (OVS checks those before unmapping); None when OVS creates
    no tunnel (no address, a multicast or unspecified one, a scoped one inet_pton refuses)."""
    text = options.get("remote_ip")
    if text == "flow":
        return REMOTE_FLOW
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return None


def parse_bool(text: str) -> bool | None:
    """true/yes/on/1 or false/no/off/0, case and blanks aside; None for anything else, which
    callers report as invalid rather than guess (OVS's smap_get_bool reads every word but
    "true" as false; a word we do not know is more likely a typo than a "no")."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _parse_ip(
    options: Mapping[str, str], key: str, errors: list[Invalid], *, required: bool
) -> str | None:
    text = options.get(key)
    if text is None or text == "":
        if required:
            errors.append(Invalid(key, "is not set"))
        return None
    if text == "flow":
        errors.append(Invalid(key, "'flow' is not supported with IPsec; set a fixed address"))
        return None
    if "%" in text:
        errors.append(Invalid(key, f"scoped addresses are not supported: {quoted(text)}"))
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        errors.append(Invalid(key, f"is not an IP address: {quoted(text)}"))
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # OVS sends IPv4 to an IPv4-mapped address (tnl_port_send unmaps it): so must charon
        # and the blocks.
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        errors.append(Invalid(key, f"must be a unicast address, got {address}"))
        return None
    canonical = str(address)
    return text if text == canonical else canonical  # the row's own string when it is canonical


def _parse_port(text: str) -> int | None:
    text = text.strip()
    # ASCII digits only: str.isdigit() and int() also take superscripts and other scripts' digits.
    if not _DECIMAL.fullmatch(text) or len(text) > 5:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _parse_u32(text: str) -> int | None:
    text = text.strip()
    if _HEX.fullmatch(text):
        number = int(text, 16)
    elif _DECIMAL.fullmatch(text):
        number = int(text, 10)
    else:
        return None
    return number if 0 <= number <= 0xFFFFFFFF else None


__all__ = [
    "is_ipsec_port",
    "quoted",
    "parse_config",
    "parse_global",
    "parse_skb_mark",
    "parse_tunnel",
    "row_wire_port",
    "tunnel_ports",
]
