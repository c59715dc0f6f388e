"""OVSDB snapshot -> model. The only place where an OVSDB key is read and validated.

Never raises on bad input: a bad port becomes an `InvalidTunnel` whose reasons name the key, and
a bad global key becomes an `Invalid` in `GlobalConfig.errors`.

May import: model, log_text, stdlib.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ovs_ipsec.core.log_text import quoted
from ovs_ipsec.core.model import (
    UDP_TUNNEL_PORTS,
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
    raw_mark = other_config.get("ipsec_skb_mark")
    if raw_mark is not None:
        skb_mark, mark_error = parse_skb_mark(raw_mark)
        if mark_error:
            errors.append(mark_error)

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
                "(supported: gre, geneve, vxlan)",
            )
        )

    remote_ip = _parse_ip(options, "remote_ip", errors, required=True)
    local_ip = _parse_ip(options, "local_ip", errors, required=False)
    if remote_ip and local_ip and (":" in remote_ip) != (":" in local_ip):
        errors.append(Invalid("local_ip", "address family differs from remote_ip"))

    dst_port: int | None = None
    if tunnel_type is not None:
        dst_port, port_error = dst_port_of(row)
        if port_error is not None:
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
            remote_ip=remote_ip,
            dst_port=dst_port,
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
        return AuthMode.PSK, Secret(psk)

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
    return None


def tunnel_ports(interfaces: tuple[InterfaceRow, ...]) -> tuple[int, ...]:
    """Every UDP destination port an OVSDB tunnel uses, IPsec or not (for ipsec_skb_mark)."""
    return tuple(sorted({p for p in map(row_port, interfaces) if p is not None}))


def dst_port_of(row: InterfaceRow) -> tuple[int | None, Invalid | None]:
    """The UDP destination port of one OVSDB tunnel port (IPsec or not): `options:dst_port`, or
    its type's default; None for a type without one (GRE). The only reader of
    `options:dst_port`: connections, block policies and the skb-mark ports all take it from here.
    A value that is not a port number is reported, and the default stands for it."""
    default = UDP_TUNNEL_PORTS.get(row.type)
    text = row.options.get("dst_port")
    if row.type not in UDP_TUNNEL_PORTS or text is None:
        return default, None
    port = _parse_port(text)
    if port is None:
        return default, Invalid("dst_port", f"must be a port number 1-65535, got {quoted(text)}")
    return port, None


def row_port(row: InterfaceRow) -> int | None:
    """The UDP destination port of one OVSDB tunnel port (IPsec or not), if it has one."""
    return dst_port_of(row)[0]


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
    "tunnel_ports",
]
