"""Per-tunnel state with a human reason, folded from the plan and from action outcomes. Pure.

May import: model, plan, stdlib.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ovs_ipsec.plan import Desired


class State(enum.StrEnum):
    INVALID = "invalid"  # configuration rejected; nothing loaded, plaintext blocked
    CONFIGURED = "configured"  # connection loaded, trap in place, no SA yet
    CONNECTING = "connecting"
    IKE_UP = "ike-up"  # IKE_SA but no CHILD_SA
    UP = "up"  # CHILD_SAs installed
    FAILED = "failed"


@dataclass(frozen=True)
class TunnelStatus:
    name: str
    state: State
    reason: str = ""
    conn: str | None = None


def fold(
    desired: Desired,
    loaded: frozenset[str],
    failures: Mapping[str, str],
) -> dict[str, TunnelStatus]:
    """Status of every IPsec port: `loaded` are the connections charon holds as planned,
    `failures` maps a connection to why charon could not take it."""
    statuses: dict[str, TunnelStatus] = {}
    for name, invalid in desired.invalid.items():
        statuses[name] = TunnelStatus(name, State.INVALID, invalid.reason)
    for conn in desired.conns.values():
        for name in conn.tunnels:
            if conn.name in failures:
                statuses[name] = TunnelStatus(name, State.FAILED, failures[conn.name], conn.name)
            elif conn.name in loaded:
                statuses[name] = TunnelStatus(name, State.CONFIGURED, "", conn.name)
            else:
                statuses[name] = TunnelStatus(
                    name, State.FAILED, "not loaded into charon yet", conn.name
                )
    return dict(sorted(statuses.items()))
