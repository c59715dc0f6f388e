"""The kernel's XFRM policies and SAs -> text and JSON for ovs-appctl (xfrm/policies,
xfrm/state): our block policies with the typed reasons they exist for, apart from charon's and
others', each kernel policy once; SAs with any key left in their text redacted. The JSON shapes
are documented in docs/status-json.md.

May import: block_policies, observed, render, render_kernel, stdlib.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ovs_ipsec.core.block_policies import PROTOCOL_NAMES, PolicyReason, PolicySpec, is_owned
from ovs_ipsec.core.observed import ObservedPolicy, ObservedState
from ovs_ipsec.core.render import REDACTED
from ovs_ipsec.core.render_kernel import state_json

# An `ip xfrm state` key is at least 16 bytes (32 hex digits); SPIs and marks are 8 digits.
# xfrm.iproute2.redact_states() already removes the key lines it knows; this catches any other
# layout.
_LONG_HEX = re.compile(r"0x[0-9a-fA-F]{32,}")


# -- xfrm/policies -------------------------------------------------------------------------------


def _proto(proto: int | None) -> str | None:
    if proto is None:
        return None
    return PROTOCOL_NAMES.get(proto, str(proto))


def _peer(policy: ObservedPolicy) -> str | None:
    """The remote end of a policy: where outbound traffic goes, where inbound comes from."""
    side = policy.dst if policy.direction == "out" else policy.src
    try:
        net = ipaddress.ip_network(side, strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


def _spec_json(
    spec: PolicySpec, reasons: Sequence[PolicyReason], installed: bool
) -> dict[str, Any]:
    return {
        "direction": spec.direction,
        "family": spec.family,
        "src": spec.src,
        "dst": spec.dst,
        "proto": _proto(spec.proto),
        "sport": spec.sport,
        "dport": spec.dport,
        "mark": f"{spec.mark:#x}/{spec.mask:#x}" if spec.mask else None,
        "action": spec.action,
        "priority": spec.priority,
        "purpose": spec.purpose,
        "reasons": [str(reason) for reason in reasons],
        "installed": installed,
        "wanted": bool(reasons),
    }


def policies_json(
    observed: Sequence[ObservedPolicy], explained: Mapping[PolicySpec, tuple[PolicyReason, ...]]
) -> dict[str, Any]:
    """Our protection policies (installed, and wanted but missing) apart from everybody else's
    (charon's traps and SAs, foreign ones), each kernel policy once."""
    ours: list[tuple[PolicySpec, dict[str, Any]]] = []
    others: list[dict[str, Any]] = []
    seen: set[PolicySpec] = set()
    for policy in observed:
        spec = policy.to_spec() if is_owned(policy) else None
        if spec is not None:
            seen.add(spec)
            ours.append((spec, _spec_json(spec, explained.get(spec, ()), True)))
            continue
        others.append(
            {
                "peer": _peer(policy),
                "direction": policy.direction,
                "family": policy.family,
                "src": policy.src,
                "dst": policy.dst,
                "proto": _proto(policy.proto),
                "sport": policy.sport,
                "dport": policy.dport,
                "mark": f"{policy.mark:#x}/{policy.mask:#x}" if policy.mask else None,
                "action": policy.action,
                "priority": policy.priority,
                "type": policy.ptype,
                "socket": policy.socket,
                "templates": list(policy.templates),
            }
        )
    for spec, reasons in explained.items():
        if spec not in seen:
            ours.append((spec, _spec_json(spec, reasons, False)))
    ours.sort(key=lambda item: item[0].sort_key())
    others.sort(key=lambda p: (p["peer"] or "~", p["direction"], p["src"], p["dst"]))
    return {"protection": [entry for _, entry in ours], "other": others}


def _policy_line(p: Mapping[str, Any]) -> str:
    ports = "".join(f" {k} {p[k]}" for k in ("sport", "dport") if p.get(k) is not None)
    mark = f" mark {p['mark']}" if p.get("mark") else ""
    proto = f" {p['proto']}" if p.get("proto") else ""
    return f"{p['direction']:<3} {p['src']} -> {p['dst']}{proto}{ports}{mark}: {p['action']}"


def policies_text(
    observed: Sequence[ObservedPolicy], explained: Mapping[PolicySpec, tuple[PolicyReason, ...]]
) -> str:
    data = policies_json(observed, explained)
    lines = ["Protection policies (ovs-monitor-ipsec's own blocks):"]
    if not data["protection"]:
        lines.append("  none")
    for p in data["protection"]:
        why = ", ".join(p["reasons"]) or "no longer wanted"
        missing = "" if p["installed"] else "MISSING: "
        lines.append(
            f"  {missing}{_policy_line(p)} (priority {p['priority']}, {p['purpose']}) [{why}]"
        )
    lines.append("Other policies (charon's and others'), by peer:")
    if not data["other"]:
        lines.append("  none")
    peer: object = object()
    for p in data["other"]:
        if p["peer"] != peer:
            peer = p["peer"]
            lines.append(f"  {peer or 'no single peer'}:")
        extra = f" (priority {p['priority']}" + (", socket" if p["socket"] else "") + ")"
        tmpl = "".join(f"; {t}" for t in p["templates"])
        lines.append(f"    {_policy_line(p)}{extra}{tmpl}")
    return "\n".join(lines) + "\n"


# -- xfrm/state ----------------------------------------------------------------------------------


def redact_hex(text: str) -> str:
    return _LONG_HEX.sub(REDACTED, text)


def states_json(states: Sequence[ObservedState]) -> dict[str, Any]:
    """The SAs of `ip xfrm state` (parsed, keys already redacted) as a list."""
    return {"states": [{**state_json(state), "text": redact_hex(state.text)} for state in states]}


def states_text(states: Sequence[ObservedState]) -> str:
    if not states:
        return "No XFRM states\n"
    return "".join(redact_hex(state.text) + "\n" for state in states)
