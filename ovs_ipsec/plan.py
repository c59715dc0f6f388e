"""Model -> desired charon state. The only place where VICI keys are spelled.

Tunnels are grouped by peer address into one VICI connection each: charon's responder picks the
first connection whose identities match, so a second connection to the same peer (say a GRE and
a Geneve port to one host) would have its CHILD_SAs refused ("traffic selectors unacceptable").
Each tunnel becomes one CHILD_SA config (two for UDP tunnels) inside its peer's connection.

May import: model, naming, stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovs_ipsec import naming
from ovs_ipsec.model import (
    IPPROTO_GRE,
    IPPROTO_UDP,
    AuthMode,
    Config,
    Invalid,
    InvalidTunnel,
    Secret,
    Tunnel,
)

# Interoperable with upstream ovs-monitor-ipsec's strongSwan defaults
# (ike=aes256gcm16-sha256-modp2048, esp=aes256gcm16-modp2048). The ESP group applies to rekeys.
IKE_PROPOSALS = ("aes256gcm16-prfsha256-modp2048",)
ESP_PROPOSALS = ("aes256gcm16-modp2048",)

VICI = dict[str, Any]


@dataclass(frozen=True)
class ConnSpec:
    """One VICI connection (`load-conn` message body) and the tunnels it carries."""

    name: str
    remote_ip: str
    tunnels: tuple[str, ...]
    body: Mapping[str, Any]


@dataclass(frozen=True)
class SharedSpec:
    """One `load-shared` secret."""

    id: str
    secret: Secret
    owners: tuple[str, ...]
    conn: str


@dataclass(frozen=True)
class Desired:
    conns: Mapping[str, ConnSpec] = field(default_factory=dict)
    shared: Mapping[str, SharedSpec] = field(default_factory=dict)
    # Tunnels that cannot be loaded: parse errors plus conflicts found while grouping.
    invalid: Mapping[str, InvalidTunnel] = field(default_factory=dict)


def plan(config: Config) -> Desired:
    invalid: dict[str, InvalidTunnel] = dict(config.invalid)
    by_peer: dict[str, list[Tunnel]] = {}
    for tunnel in sorted(config.tunnels.values(), key=lambda t: t.name):
        by_peer.setdefault(tunnel.remote_ip, []).append(tunnel)

    conns: dict[str, ConnSpec] = {}
    shared: dict[str, SharedSpec] = {}
    for remote_ip, group in by_peer.items():
        members, conflicts = split_conflicts(group)
        invalid.update(conflicts)
        conn = plan_conn(remote_ip, members)
        conns[conn.name] = conn
        secret = plan_shared(conn, members[0])
        if secret is not None:
            shared[secret.id] = secret
    return Desired(conns=conns, shared=shared, invalid=invalid)


def peer_settings(tunnel: Tunnel) -> tuple[tuple[str, Any], ...]:
    """What every tunnel to one peer must agree on, since they share one IKE_SA."""
    return (
        ("local_ip", tunnel.local_ip),
        ("auth", tunnel.auth),
        ("psk", tunnel.psk),
        ("remote_cert", tunnel.remote_cert),
        ("remote_name", tunnel.remote_name),
    )


def split_conflicts(group: list[Tunnel]) -> tuple[list[Tunnel], dict[str, InvalidTunnel]]:
    """Keep the tunnels that agree with the first (by name); the others are invalid."""
    first = group[0]
    reference = dict(peer_settings(first))
    members = [first]
    conflicts: dict[str, InvalidTunnel] = {}
    for tunnel in group[1:]:
        differing = [k for k, v in peer_settings(tunnel) if reference[k] != v]
        if not differing:
            members.append(tunnel)
            continue
        errors = tuple(
            Invalid(
                key,
                f"differs from tunnel {first.name!r} to the same remote_ip {first.remote_ip}; "
                "all tunnels to one peer share one IKE SA and must agree",
            )
            for key in differing
        )
        conflicts[tunnel.name] = InvalidTunnel(
            name=tunnel.name,
            errors=errors,
            type=tunnel.type,
            remote_ip=tunnel.remote_ip,
            dst_port=tunnel.dst_port,
        )
    return members, conflicts


def plan_conn(remote_ip: str, members: list[Tunnel]) -> ConnSpec:
    first = members[0]
    children: VICI = {}
    for tunnel in members:
        children.update(plan_children(tunnel))
    body: VICI = {
        "version": "2",
        "local_addrs": [first.local_ip or "%any"],
        "remote_addrs": [remote_ip],
        "proposals": list(IKE_PROPOSALS),
        # Retry for ever, like upstream's keyingtries=%forever.
        "keyingtries": "0",
        # Hosts do not move; without this IKE floats to port 4500 from the second exchange.
        "mobike": "no",
        "local": plan_local_auth(first),
        "remote": plan_remote_auth(first),
        "children": children,
    }
    return ConnSpec(
        name=naming.conn_name(remote_ip),
        remote_ip=remote_ip,
        tunnels=tuple(t.name for t in members),
        body=body,
    )


def plan_local_auth(tunnel: Tunnel) -> VICI:
    if tunnel.auth is AuthMode.PSK:
        auth: VICI = {"auth": "psk"}
        # Without local_ip charon uses the address IKE runs from, which is what the peer (ours or
        # upstream's, whose default rightid is our address) expects.
        if tunnel.local_ip:
            auth["id"] = tunnel.local_ip
        return auth
    raise NotImplementedError(f"{tunnel.auth.value} authentication")


def plan_remote_auth(tunnel: Tunnel) -> VICI:
    if tunnel.auth is AuthMode.PSK:
        return {"auth": "psk", "id": tunnel.remote_ip}
    raise NotImplementedError(f"{tunnel.auth.value} authentication")


def plan_shared(conn: ConnSpec, tunnel: Tunnel) -> SharedSpec | None:
    if tunnel.psk is None:
        return None
    return SharedSpec(
        id=naming.shared_id(tunnel.remote_ip),
        secret=tunnel.psk,
        owners=(tunnel.remote_ip,),
        conn=conn.name,
    )


def plan_children(tunnel: Tunnel) -> VICI:
    """CHILD_SA configs: GRE is one protocol both ways; a UDP tunnel sends from a hashed source
    port to the fixed destination port, so it needs one child per direction of the flow."""
    if tunnel.dst_port is None:
        return {
            naming.child_name(tunnel.name): _child(
                f"dynamic[{IPPROTO_GRE}]", f"dynamic[{IPPROTO_GRE}]"
            )
        }
    port_ts = f"dynamic[{IPPROTO_UDP}/{tunnel.dst_port}]"
    any_ts = f"dynamic[{IPPROTO_UDP}]"
    return {
        naming.child_name(tunnel.name, "-in"): _child(port_ts, any_ts),
        naming.child_name(tunnel.name, "-out"): _child(any_ts, port_ts),
    }


def _child(local_ts: str, remote_ts: str) -> VICI:
    return {
        "mode": "transport",
        "local_ts": [local_ts],
        "remote_ts": [remote_ts],
        "esp_proposals": list(ESP_PROPOSALS),
        # Trap policies from the moment the connection is loaded: no SA, no plaintext.
        "start_action": "trap",
    }


def child_to_tunnel(conns: Mapping[str, ConnSpec], config: Config) -> dict[str, str]:
    """CHILD_SA config name -> interface name, to file charon's events under the right tunnel."""
    mapping: dict[str, str] = {}
    for conn in conns.values():
        for name in conn.tunnels:
            for child in plan_children(config.tunnels[name]):
                mapping[child] = name
    return mapping
