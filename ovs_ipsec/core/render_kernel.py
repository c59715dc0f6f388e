"""The kernel's XFRM policies and SAs of one tunnel, for tunnels/show's sections `Kernel
policies installed:` and `Kernel security associations installed:` (upstream's, listed the same
way, by the tunnel's remote_ip; each policy once, inbound ones too, with direction, action, mark).
Pure: the listings are read by the control socket's handler. No key is ever part of an SA here
(the adapter redacts them as it reads).

May import: block_policies, observed, stdlib.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core.block_policies import PROTOCOL_NAMES, is_owned
from ovs_ipsec.core.observed import ObservedPolicy, ObservedState


@dataclass(frozen=True)
class Kernel:
    """The kernel's XFRM policies and SAs as listed for one status command (`error`: why not)."""

    policies: Sequence[ObservedPolicy] = ()
    states: Sequence[ObservedState] = ()
    error: str = ""


NO_KERNEL = Kernel()


def _host(address: str | None) -> str | None:
    """The address of a single-host prefix (`10.0.0.2/32` -> `10.0.0.2`), else None."""
    if not address:
        return None
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


def _canonical(address: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(address)) if address else None
    except ValueError:
        return None


def kernel_policies(kernel: Kernel, remote_ip: str | None) -> list[ObservedPolicy]:
    """The policies to or from this peer, each once (upstream listed outbound ones twice)."""
    peer = _canonical(remote_ip)
    if peer is None:
        return []
    found = []
    for policy in kernel.policies:
        side = policy.dst if policy.direction == "out" else policy.src
        if _host(side) == peer:
            found.append(policy)
    return found


def kernel_states(kernel: Kernel, remote_ip: str | None) -> list[ObservedState]:
    """The SAs to or from this peer (larval acquire states included, as the kernel has them)."""
    peer = _canonical(remote_ip)
    if peer is None:
        return []
    return [s for s in kernel.states if peer in (_canonical(s.src), _canonical(s.dst))]


def policy_json(policy: ObservedPolicy) -> dict[str, Any]:
    return {
        "direction": policy.direction,
        "src": policy.src,
        "dst": policy.dst,
        "proto": PROTOCOL_NAMES.get(policy.proto, str(policy.proto)) if policy.proto else None,
        "sport": policy.sport,
        "dport": policy.dport,
        "action": policy.action,
        "priority": policy.priority,
        "mark": f"{policy.mark:#x}/{policy.mask:#x}" if policy.mask else None,
        "ours": is_owned(policy),
    }


def policy_line(policy: ObservedPolicy) -> str:
    """Upstream's `src A dst B proto P` (ip's own words), then what upstream left out."""
    p = policy_json(policy)
    words = [f"src {p['src']} dst {p['dst']}"]
    words += [f"{key} {p[key]}" for key in ("proto", "sport", "dport") if p[key] is not None]
    words.append(f"dir {p['direction']} action {p['action']} priority {p['priority']}")
    if p["mark"]:
        words.append(f"mark {p['mark']}")
    if p["ours"]:
        words.append("(ovs-monitor-ipsec's block)")
    return " ".join(words)


def state_json(state: ObservedState) -> dict[str, Any]:
    return {
        "src": state.src,
        "dst": state.dst,
        "proto": state.proto,
        "spi": state.spi,
        "reqid": state.reqid,
        "mode": state.mode,
        "selector": state.selector,
    }


def state_line(state: ObservedState) -> str:
    """Upstream's `sel src A dst B ...` (the SA's selector), then the SA itself; no keys."""
    head = f"sel {state.selector}" if state.selector else "sel none"
    ids = [f"src {state.src} dst {state.dst}", f"proto {state.proto} spi {state.spi}"]
    if state.reqid is not None:
        ids.append(f"reqid {state.reqid}")
    if state.mode:
        ids.append(f"mode {state.mode}")
    return f"{head} ({', '.join(ids)})"
