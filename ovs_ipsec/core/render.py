"""Status -> text and JSON for ovs-appctl (tunnels/show, ipsec/status, memory/show; the kernel's
policies and SAs are render_xfrm.py's). All redaction happens in these two modules: no secret is
ever part of what their functions return. The JSON shapes are documented in docs/status-json.md;
a change there is a change of a public interface.

`tunnels/show` text is a superset of upstream's (OVS 3.1 to 3.7, `IPsecTunnel.show`): every line
and section upstream prints, in its order and spelling (tests/unit/data/upstream_tunnels_show.txt
is upstream's own output), then ours as extra lines; the PSK and all key material redacted. It is
correct where upstream's was not: each kernel policy is listed once, inbound ones under the peer
they come from, with direction, action and mark (render_kernel.py).

One file over 400 lines: each command's text and JSON stay side by side, so that a field added
to one is added to the other.

May import: model, parse, block_policies, connections, render_kernel, sas, status, stdlib.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ovs_ipsec.core.block_policies import protocol_name
from ovs_ipsec.core.connections import AuthClass, TrafficSelector
from ovs_ipsec.core.model import Config, PortStatus
from ovs_ipsec.core.parse import caveat
from ovs_ipsec.core.render_kernel import (
    NO_KERNEL,
    Kernel,
    kernel_policies,
    kernel_states,
    policy_json,
    policy_line,
    state_json,
    state_line,
)
from ovs_ipsec.core.sas import ChildSa, IkeSa
from ovs_ipsec.core.status import Protection, Selector, State, TunnelStatus

REDACTED = "<redacted>"


class HealthLike(Protocol):
    charon_reachable: bool
    charon_error: str
    ike_daemon: str


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


NO_PORTS: Mapping[str, PortStatus] = {}
# ipsec_* keys whose value may be a secret (all refused by ike_options, but still shown).
_SECRET_OPTION_WORDS = ("psk", "secret", "ppk", "pass", "xauth")


def custom_options(config: Config, name: str) -> dict[str, str] | None:
    """The port's `ipsec_*` options with the prefix cut, as upstream's `Custom Options` (None
    when the port did not parse); any value that may be a secret is redacted."""
    tunnel = config.tunnels.get(name)
    if tunnel is None:
        return None
    return {
        key: REDACTED if any(word in key.lower() for word in _SECRET_OPTION_WORDS) else value
        for key, value in tunnel.ike_options
    }


def ofport_text(port: PortStatus | None) -> str:
    return "Not assigned" if port is None or port.ofport is None else str(port.ofport)


def cfm_text(port: PortStatus | None) -> str:
    """Upstream's words: `Up` for cfm_fault false, `Down` for true, else `Disabled`."""
    if port is None or port.cfm_fault is None:
        return "Disabled"
    return "Down" if port.cfm_fault else "Up"


# -- tunnels/show -------------------------------------------------------------------------------


def tunnel_config_json(config: Config, name: str) -> dict[str, Any]:
    """The tunnel's configuration as parsed from OVSDB, secrets redacted."""
    tunnel = config.tunnels.get(name)
    g = config.global_config
    if tunnel is not None:
        uses_certs = tunnel.psk is None
        return {
            "type": tunnel.type.value,
            "remote_ip": tunnel.remote_ip,
            "local_ip": tunnel.local_ip,
            "address_family": f"IPv{tunnel.family}",
            "dst_port": tunnel.dst_port,
            "auth": tunnel.auth.value,
            "psk": REDACTED if tunnel.psk is not None else None,
            "certificate": g.certificate if uses_certs else None,
            "private_key": g.private_key if uses_certs else None,
            "ca_cert": g.ca_cert if uses_certs else None,
            "remote_cert": tunnel.remote_cert,
            "remote_name": tunnel.remote_name,
            "skb_mark": str(g.skb_mark) if g.skb_mark is not None else None,
            "warning": caveat(tunnel),
        }
    invalid = config.invalid.get(name)
    if invalid is not None:
        return {
            "type": invalid.type.value if invalid.type else None,
            "remote_ip": invalid.remote_ip,
            "dst_port": invalid.dst_port,
            "errors": [{"key": e.key, "reason": e.reason} for e in invalid.errors],
        }
    return {}


def _selector_text(selector: Selector) -> str:
    return f"{_ts_text(selector.local_ts)} === {_ts_text(selector.remote_ts)}"


def _ts_text(ts: TrafficSelector) -> str:
    """`udp/6081` for `dynamic[17/6081]` (our IKE address, that protocol and port)."""
    name = protocol_name(ts.proto)
    return name if ts.port is None else f"{name}/{ts.port}"


def ike_sa_json(sa: IkeSa) -> dict[str, Any]:
    return {
        "name": sa.name,
        "uniqueid": sa.uniqueid,
        "state": sa.state,
        "established_seconds": sa.established,
        "rekey_seconds": sa.rekey_time,
        "initiator": sa.initiator,
        "local": {"host": sa.local_host, "port": sa.local_port, "id": sa.local_id},
        "remote": {"host": sa.remote_host, "port": sa.remote_port, "id": sa.remote_id},
        "nat": {"local": sa.nat_local, "remote": sa.nat_remote, "any": sa.nat_any},
    }


def child_sa_json(sa: ChildSa) -> dict[str, Any]:
    return {
        "name": sa.name,
        "uniqueid": sa.uniqueid,
        "state": sa.state,
        "mode": sa.mode,
        "protocol": sa.protocol,
        "encap": sa.encap,
        "spi_in": sa.spi_in,
        "spi_out": sa.spi_out,
        "bytes_in": sa.bytes_in,
        "bytes_out": sa.bytes_out,
        "packets_in": sa.packets_in,
        "packets_out": sa.packets_out,
        "rekey_seconds": sa.rekey_time,
        "life_seconds": sa.life_time,
        "installed_seconds": sa.install_time,
        "local_ts": list(sa.local_ts),
        "remote_ts": list(sa.remote_ts),
    }


def protection_json(protection: Protection | None) -> dict[str, Any] | None:
    if protection is None:
        return None

    def kind(counts: tuple[int, int] | None) -> dict[str, int] | None:
        return None if counts is None else {"installed": counts[0], "wanted": counts[1]}

    return {
        "active": protection.active,
        "fail_closed": kind(protection.fail_closed),
        "skb_mark": kind(protection.skb_mark),
    }


def tunnels_json(
    config: Config,
    statuses: Mapping[str, TunnelStatus],
    protection: Mapping[str, Protection] | None = None,
    ports: Mapping[str, PortStatus] = NO_PORTS,
    kernel: Kernel = NO_KERNEL,
) -> dict[str, Any]:
    protection = protection or {}
    return {
        name: {
            "version": config.versions.get(name, 1),
            # Upstream shows only CONFIGURED tunnels (it drops INVALID ones from its table).
            "upstream_state": "INVALID" if status.state is State.INVALID else "CONFIGURED",
            "custom_options": custom_options(config, name),
            "ofport": ports[name].ofport if name in ports else None,
            "cfm_state": cfm_text(ports.get(name)),
            "kernel": _kernel_json(kernel, _remote_ip(config, name)),
            "state": status.state.value,
            "reason": status.reason,
            "cause": status.cause.value if status.cause else None,
            "connection": status.conn,
            "config": tunnel_config_json(config, name),
            "auth": {
                "mode": status.auth.value if status.auth else None,
                "local_id": status.local_id or None,
                "remote_id": status.remote_id or None,
            }
            if status.conn
            else None,
            "selectors": [
                {
                    "child": s.child,
                    "local_ts": [s.local_ts.vici],
                    "remote_ts": [s.remote_ts.vici],
                    "text": _selector_text(s),
                }
                for s in status.selectors
            ],
            "ike_sa": ike_sa_json(status.ike_sa) if status.ike_sa else None,
            "child_sas": [child_sa_json(c) for c in status.child_sas],
            "rekeys": {"ike": status.ike_rekeys, "child": status.child_rekeys},
            "protection": protection_json(protection.get(name)),
        }
        for name, status in statuses.items()
    }


def _remote_ip(config: Config, name: str) -> str | None:
    tunnel = config.tunnels.get(name)
    if tunnel is not None:
        return tunnel.remote_ip
    invalid = config.invalid.get(name)
    return invalid.remote_ip if invalid is not None else None


def _kernel_json(kernel: Kernel, remote_ip: str | None) -> dict[str, Any]:
    return {
        "policies": [policy_json(p) for p in kernel_policies(kernel, remote_ip)],
        "security_associations": [state_json(s) for s in kernel_states(kernel, remote_ip)],
        "error": kernel.error or None,
    }


def _value(value: Any) -> str:
    return "None" if value is None else str(value)


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return f" {_duration(seconds)} ago"


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours"


def _protection_text(protection: Protection | None) -> str:
    if protection is None:
        return "unknown"
    parts = []
    if protection.fail_closed is not None:
        installed, wanted = protection.fail_closed
        parts.append(f"fail-closed {installed}/{wanted}")
    if protection.skb_mark is not None:
        installed, wanted = protection.skb_mark
        parts.append(f"ipsec_skb_mark {installed}/{wanted}")
    if protection.fail_closed == (0, 0) and protection.skb_mark is None:
        return "none (nothing known to block: no usable remote_ip)"
    if not parts:
        return "off (ipsec_fail_open=true and no ipsec_skb_mark)"
    state = "active" if protection.active else "INCOMPLETE"
    return f"{state} ({', '.join(parts)} block policies installed)"


def _ike_line(sa: IkeSa) -> str:
    """Like swanctl's: `ovs-10.0.0.2[1]: ESTABLISHED 2 seconds ago, a[id]...b[id]`."""
    extras = []
    if sa.initiator:
        extras.append("initiator")
    if sa.nat_any:
        nat = [side for side, on in (("local", sa.nat_local), ("remote", sa.nat_remote)) if on]
        extras.append(f"NAT ({', '.join(nat) or 'detected'})")
    if sa.rekey_time is not None:
        extras.append(f"rekeying in {_duration(max(0, sa.rekey_time))}")
    ends = (
        f"{sa.local_host}[{sa.local_id}]...{sa.remote_host}"
        + (f":{sa.remote_port}" if sa.remote_port not in (None, 500) else "")
        + f"[{sa.remote_id}]"
    )
    return f"{sa.name}[{sa.uniqueid}]: {sa.state}{_ago(sa.established)}, {ends}" + "".join(
        f", {e}" for e in extras
    )


def _child_lines(sa: ChildSa) -> list[str]:
    head = f"{sa.name}{{{sa.uniqueid}}}: {sa.state}, {sa.mode}"
    if sa.encap:
        head += ", UDP-encapsulated"
    head += (
        f", {sa.protocol} SPIs: {sa.spi_in}_i {sa.spi_out}_o, "
        f"{sa.bytes_in} bytes_i ({sa.packets_in} pkts), "
        f"{sa.bytes_out} bytes_o ({sa.packets_out} pkts)"
    )
    if sa.rekey_time is not None:
        head += f", rekeying in {_duration(max(0, sa.rekey_time))}"
    ts = f"{', '.join(sa.local_ts)} === {', '.join(sa.remote_ts)}"
    return [head, f"  {ts}"]


def tunnels_text(
    config: Config,
    statuses: Mapping[str, TunnelStatus],
    health: HealthLike,
    protection: Mapping[str, Protection] | None = None,
    ports: Mapping[str, PortStatus] = NO_PORTS,
    kernel: Kernel = NO_KERNEL,
) -> str:
    protection = protection or {}
    lines: list[str] = []
    if not statuses:
        lines.append("No tunnels configured with IPsec")
    for name, status in statuses.items():
        lines += _tunnel_lines(config, name, status, protection.get(name), ports.get(name), kernel)
    for error in config.global_config.errors:
        lines.append(f"other_config:{error.key}: invalid: {error.reason}")
    if not health.charon_reachable:
        lines.append(f"{health.ike_daemon} unreachable: {health.charon_error}")
    return "\n".join(lines) + "\n"


def _tunnel_lines(
    config: Config,
    name: str,
    status: TunnelStatus,
    protection: Protection | None,
    port: PortStatus | None,
    kernel: Kernel,
) -> list[str]:
    """Upstream's block (header, 15 labelled lines, three kernel/IKE sections, a blank line)
    with our lines after upstream's labelled ones. The header's state word is ours."""

    def row(label: str, value: Any) -> str:
        return f"  {label + ':':<16}{_value(value)}"

    cfg = tunnel_config_json(config, name)
    certs = status.auth is AuthClass.PUBKEY
    options = custom_options(config, name)
    version = config.versions.get(name, 1)
    lines = [
        f"Interface name: {name} v{version} ({status.state.value.upper()})",
        row("Tunnel Type", cfg.get("type")),
        row("Local IP", (cfg.get("local_ip") or "%any") if "errors" not in cfg else None),
        row("Remote IP", cfg.get("remote_ip")),
        row("Address Family", cfg.get("address_family")),
        row("SKB mark", cfg.get("skb_mark")),
        row("Local cert", cfg.get("certificate")),
        row("Local name", status.local_id if certs else None),
        row("Local key", cfg.get("private_key")),
        row("Remote cert", cfg.get("remote_cert")),
        row("Remote name", cfg.get("remote_name")),
        row("CA cert", cfg.get("ca_cert")),
        row("PSK", cfg.get("psk")),
        row("Custom Options", options),
        row("Ofport", ofport_text(port)),
        row("CFM state", cfm_text(port)),
    ]
    # Ours, after upstream's.
    if status.reason:
        lines.append(row("Reason", status.reason))
    if cfg.get("warning"):
        lines.append(row("Warning", cfg["warning"]))
    if cfg.get("dst_port") is not None:
        lines.append(row("Dst port", cfg["dst_port"]))
    if "errors" in cfg:
        lines += [row("Config error", f"{e['key']}: {e['reason']}") for e in cfg["errors"]]
    else:
        lines += [
            row("Auth mode", cfg["auth"]),
            row("Connection", status.conn),
            row("Local id", status.local_id or "(our IKE address)"),
            row("Remote id", status.remote_id),
        ]
        lines += [row("Selectors", f"{s.child}: {_selector_text(s)}") for s in status.selectors]
        lines.append(row("Rekeys", f"IKE {status.ike_rekeys}, CHILD {status.child_rekeys}"))
    lines.append(row("Protection", _protection_text(protection)))

    remote_ip = cfg.get("remote_ip")
    lines.append("Kernel policies installed:")
    lines += [f"  {policy_line(p)}" for p in kernel_policies(kernel, remote_ip)]
    lines.append("Kernel security associations installed:")
    lines += [f"  {state_line(s)}" for s in kernel_states(kernel, remote_ip)]
    if kernel.error:
        lines.append(f"  (kernel not listed: {kernel.error})")
    lines.append("IPsec connections that are active:")
    if status.ike_sa is not None:
        lines.append(f"  {_ike_line(status.ike_sa)}")
        for child in status.child_sas:
            lines += [f"  {line}" for line in _child_lines(child)]
    return [*lines, ""]


# -- ipsec/status --------------------------------------------------------------------------------


def ipsec_status_json(statuses: Mapping[str, TunnelStatus]) -> dict[str, Any]:
    """`{}` when there are no tunnels: liveness probes in the field compare against exactly that."""
    return {
        name: {"state": status.state.value, "reason": status.reason}
        for name, status in statuses.items()
    }


def memory_text(
    counts: Mapping[str, int], vm: Mapping[str, str], sites: Sequence[tuple[str, int, int]]
) -> str:
    """`memory/show`: OVS daemons' `name:count` line, then the process's memory and, when
    tracemalloc is on, where the Python heap is."""
    lines = [" ".join(f"{name}:{n}" for name, n in counts.items())]
    lines += [f"{key}: {value}" for key, value in vm.items()]
    if sites:
        lines.append("largest Python allocations by file (tracemalloc):")
        lines += [f"  {size / 1024:10.1f} KiB {blocks:8d} blocks  {path}"
                  for path, size, blocks in sites]  # fmt: skip
    return "\n".join(lines) + "\n"
