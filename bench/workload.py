"""The benchmark's tunnels: N GRE/PSK interfaces `t<i>` to N distinct peers in 10.200.0.0/16,
and fresh addresses in 10.201.0.0/16 for remote_ip changes. No host owns these addresses; each
lab namespace routes 10.200.0.0/15 onto its own lab segment only so that charon (and upstream's
`left=%any`) can resolve a local address for the trap policies. Nothing ever sends to them:
traps only fire on traffic, and the benchmark sends none.

May import: stdlib, ovs_ipsec (core.parse, core.connections, core.model; before da7b6dc
parse, plan, model).
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from ovs_ipsec.core.connections import Desired, plan
    from ovs_ipsec.core.model import InterfaceRow, Snapshot
    from ovs_ipsec.core.parse import parse_config
except ImportError:  # --commit of a revision before the subpackages (da7b6dc)
    from ovs_ipsec.model import InterfaceRow, Snapshot  # type: ignore[no-redef]
    from ovs_ipsec.parse import parse_config  # type: ignore[no-redef]
    from ovs_ipsec.plan import Desired, plan  # type: ignore[no-redef]

PEER_ROUTE = "10.200.0.0/15"


def _address(second: int, index: int) -> str:
    # 250 hosts per /24 (.1-.250): no .0 or .255, which read like network or broadcast.
    third, fourth = divmod(index, 250)
    if third > 255:
        raise ValueError(f"index {index} does not fit in 10.{second}.0.0/16")
    return f"10.{second}.{third}.{fourth + 1}"


def peer(i: int) -> str:
    return _address(200, i)


def changed_peer(i: int) -> str:
    return _address(201, i)


def psk(i: int) -> str:
    return f"bench-psk-{i}"


def name(i: int) -> str:
    return f"t{i}"


def tunnels(n: int) -> list[tuple[str, dict[str, str]]]:
    """(interface name, options) for tunnels 0..n-1."""
    return [(name(i), {"remote_ip": peer(i), "psk": psk(i)}) for i in range(n)]


def desired(rows: Iterable[tuple[str, dict[str, str]]]) -> Desired:
    """What our daemon's pure core plans for these interfaces: the floor loads the same bodies."""
    snapshot = Snapshot(
        interfaces=tuple(InterfaceRow(name=n, type="gre", options=dict(o)) for n, o in rows),
        other_config={},
    )
    return plan(parse_config(snapshot))
