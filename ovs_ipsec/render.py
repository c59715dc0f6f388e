"""Status -> text and JSON for ovs-appctl. All redaction happens here: no secret is ever part
of what these functions return.

May import: model, status, stdlib.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ovs_ipsec.model import Config
from ovs_ipsec.status import TunnelStatus

REDACTED = "<redacted>"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def tunnel_config_json(config: Config, name: str) -> dict[str, Any]:
    tunnel = config.tunnels.get(name)
    if tunnel is not None:
        return {
            "type": tunnel.type.value,
            "remote_ip": tunnel.remote_ip,
            "local_ip": tunnel.local_ip,
            "dst_port": tunnel.dst_port,
            "auth": tunnel.auth.value,
            "psk": REDACTED if tunnel.psk is not None else None,
            "remote_cert": tunnel.remote_cert,
            "remote_name": tunnel.remote_name,
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


def tunnels_json(config: Config, statuses: Mapping[str, TunnelStatus]) -> dict[str, Any]:
    return {
        name: {
            "state": status.state.value,
            "reason": status.reason,
            "connection": status.conn,
            "config": tunnel_config_json(config, name),
        }
        for name, status in statuses.items()
    }


def tunnels_text(config: Config, statuses: Mapping[str, TunnelStatus], health: Any) -> str:
    if not statuses:
        return "No tunnels configured with IPsec\n"
    lines: list[str] = []
    for name, status in statuses.items():
        lines.append(f"Interface name: {name} ({status.state.value})")
        if status.reason:
            lines.append(f"  Reason:         {status.reason}")
        for key, value in tunnel_config_json(config, name).items():
            if key == "errors":
                continue
            label = key.replace("_", " ").capitalize() + ":"
            lines.append(f"  {label:<16}{'' if value is None else value}")
        if status.conn:
            lines.append(f"  Connection:     {status.conn}")
        lines.append("")
    if not health.charon_reachable:
        lines.append(f"charon unreachable: {health.charon_error}")
    return "\n".join(lines) + "\n"


def ipsec_status_json(statuses: Mapping[str, TunnelStatus]) -> dict[str, Any]:
    """`{}` when there are no tunnels: liveness probes in the field compare against exactly that."""
    return {
        name: {"state": status.state.value, "reason": status.reason}
        for name, status in statuses.items()
    }
