"""Per-tunnel state with a human reason. Pure: no I/O, no clock.

Three inputs are folded together by `fold()`:

* what the daemon planned and what charon took (`Desired`, the loaded connections, charon's
  refusals, whether charon is reachable); identities and selectors are the typed values the
  plan keeps beside each connection's VICI bytes (connections.ConnSpec);
* charon's SAs as `list-sas` last reported them (sas.parse_sas());
* how the latest negotiations ended, folded from charon's events (outcomes.Tracker).

The states (State) and how each is reached:

    invalid     the configuration was rejected; the reason names the OVSDB key
    configured  connection loaded, trap policies in place, no SA (negotiated on first packet)
    connecting  an IKE_SA is being negotiated
    ike-up      IKE_SA established, but not every CHILD_SA of the tunnel is installed
    up          every CHILD_SA of the tunnel is installed
    failed      charon refused the connection or is unreachable, or the last negotiation failed

Also here: each tunnel's block policies counted from their typed reasons (`protection_by_tunnel`).

May import: capabilities, causes, naming, connections, block_policies, outcomes, sas, stdlib.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Container, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ovs_ipsec.core import naming
from ovs_ipsec.core.block_policies import PolicyReason, PolicySpec, Purpose
from ovs_ipsec.core.capabilities import Lack, describe_lacks
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.connections import AuthClass, ConnSpec, Desired, TrafficSelector
from ovs_ipsec.core.outcomes import ConnOutcome
from ovs_ipsec.core.sas import ChildSa, IkeSa, current_ike


class State(enum.StrEnum):
    INVALID = "invalid"  # configuration rejected; nothing loaded, plaintext blocked
    CONFIGURED = "configured"  # connection loaded, trap in place, no SA yet
    CONNECTING = "connecting"
    IKE_UP = "ike-up"  # IKE_SA but no CHILD_SA
    UP = "up"  # CHILD_SAs installed
    FAILED = "failed"


# -- plaintext protection per tunnel ----------------------------------------------------------


@dataclass(frozen=True)
class Protection:
    """Our block policies for one tunnel: (installed, wanted) of each kind; None when that kind
    is off (ipsec_fail_open=true, no ipsec_skb_mark)."""

    fail_closed: tuple[int, int] | None = None
    skb_mark: tuple[int, int] | None = None

    @property
    def active(self) -> bool:
        kinds = [k for k in (self.fail_closed, self.skb_mark) if k is not None and k[1]]
        return bool(kinds) and all(installed == wanted for installed, wanted in kinds)


def protection_by_tunnel(
    explained: Mapping[PolicySpec, tuple[PolicyReason, ...]],
    installed: AbstractSet[PolicySpec],
    names: Iterable[str],
    fail_open: bool = False,
) -> dict[str, Protection]:
    """`explained` is block_policies.explain_protection(): why each policy exists, for which
    tunnel. A tunnel without fail-closed policies gets (0, 0) (nothing known to block, e.g. no
    usable remote_ip), or None when ipsec_fail_open turned them off."""
    per_tunnel: dict[str, set[PolicySpec]] = {}
    skb: set[PolicySpec] = set()
    for spec, reasons in explained.items():
        for reason in reasons:
            if reason.purpose is Purpose.SKB_MARK:
                skb.add(spec)
            elif reason.tunnel is not None:
                # A tunnel rejected while planning has both reasons for the same policies.
                per_tunnel.setdefault(reason.tunnel, set()).add(spec)

    def counts(specs: set[PolicySpec]) -> tuple[int, int]:
        return len(specs & installed), len(specs)

    skb_mark = counts(skb) if skb else None
    return {
        name: Protection(
            fail_closed=None if fail_open else counts(per_tunnel.get(name, set())),
            skb_mark=skb_mark,
        )
        for name in names
    }


# -- the fold ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """One CHILD_SA config of a tunnel, by its name in charon, and its traffic selectors."""

    child: str
    local_ts: TrafficSelector
    remote_ts: TrafficSelector


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    name: str
    state: State
    reason: str = ""
    conn: str | None = None
    cause: Cause | None = None
    auth: AuthClass | None = None  # as loaded
    local_id: str = ""  # identities as loaded ("" for ours: charon uses our IKE address)
    remote_id: str = ""
    selectors: tuple[Selector, ...] = ()
    ike_sa: IkeSa | None = None
    child_sas: tuple[ChildSa, ...] = ()
    ike_rekeys: int = 0
    child_rekeys: int = 0


@dataclass(frozen=True)
class View:
    """Everything `fold` needs (a parameter object: the daemon fills it, tests build it)."""

    desired: Desired
    loaded: Container[str] = frozenset()  # connections charon holds as desired
    refusals: Mapping[str, str] = field(default_factory=dict)  # conn -> why charon refused it
    charon_error: str | None = None  # None while charon is reachable
    ike_daemon: str = "charon"  # as reasons name it ("pluto" with --ike-daemon=libreswan)
    sas: Mapping[str, tuple[IkeSa, ...]] = field(default_factory=dict)
    outcomes: Mapping[str, ConnOutcome] = field(default_factory=dict)
    # What charon lacks that a connection needs (capabilities.Preflight); None until charon
    # said what it can do.
    lacking: Callable[[ConnSpec], tuple[Lack, ...]] | None = None


def fold(view: View) -> dict[str, TunnelStatus]:
    """Status of every IPsec port, sorted by name."""
    statuses: dict[str, TunnelStatus] = {}
    for name, invalid in view.desired.invalid.items():
        statuses[name] = TunnelStatus(name, State.INVALID, invalid.reason, cause=Cause.CONFIG)
    for conn in view.desired.conns.values():
        for name in conn.tunnels:
            statuses[name] = _tunnel(view, conn, name)
    return dict(sorted(statuses.items()))


# What is logged of a port's status: its state, reason and cause.
StateKey = tuple[State, str, Cause | None]


def state_key(status: TunnelStatus) -> StateKey:
    return _one_of((status.state, status.reason, status.cause))


@functools.lru_cache(maxsize=256)
def _one_of(key: StateKey) -> StateKey:
    # Equal keys are one object: a thousand tunnels in the same state hold one tuple.
    return key


class StatusBook:
    """Each port's state, reason and cause, kept between passes to log what changed, and
    refolded one connection at a time.

    The daemon names the connections whose inputs may have moved since the last refold (a
    pass's actions, charon's events about them, a changed SA listing); only those are folded
    again, so one change among thousands of tunnels costs one connection's work. Invalid ports
    are few and refolded every time. Only the keys are kept (whole statuses, with identities
    and selectors, are folded when someone asks for them): at thousands of tunnels, whole
    statuses would be a tenth of the daemon's memory."""

    def __init__(self) -> None:
        self._groups: dict[str, tuple[str, ...]] = {}  # connection -> its ports
        self._invalid: dict[str, StateKey] = {}
        self._states: dict[str, StateKey] = {}
        self._not_up = 0  # ports in _states whose state is not UP (all_up asks at each change)

    def states(self) -> dict[str, StateKey]:
        """Every port's state key as of the last refold, sorted by name."""
        return dict(sorted(self._states.items()))

    def all_up(self) -> int:
        """The number of ports if every one is up, else 0."""
        return len(self._states) if self._states and not self._not_up else 0

    def refold(
        self, view: View, stale: Iterable[str] | None = None
    ) -> dict[str, tuple[StateKey | None, StateKey | None]]:
        """Fold the connections named in `stale` again (None: every one) and the invalid
        ports; returns (before, now) for the ports whose key changed (None: no such port)."""
        before: dict[str, StateKey | None] = {}

        def drop(name: str) -> None:
            old = self._states.pop(name, None)
            before.setdefault(name, old)
            self._not_up -= old is not None and old[0] is not State.UP

        def put(name: str, key: StateKey) -> None:
            old = self._states.get(name)
            before.setdefault(name, old)
            self._states[name] = key
            self._not_up += (key[0] is not State.UP) - (old is not None and old[0] is not State.UP)

        invalid: dict[str, StateKey] = {
            name: (State.INVALID, reason.reason, Cause.CONFIG)
            for name, reason in view.desired.invalid.items()
        }
        for name in self._invalid.keys() - invalid.keys():
            drop(name)
        names = view.desired.conns.keys() | self._groups.keys() if stale is None else stale
        # Every old group leaves before any new one is set: a port may move between two
        # connections (its remote_ip changed), whichever of them comes first.
        moved = []
        for conn_name in names:
            for name in self._groups.pop(conn_name, ()):
                drop(name)
            conn = view.desired.conns.get(conn_name)
            if conn is not None:
                moved.append(conn)
        for conn in moved:
            self._groups[conn.name] = conn.tunnels
            for name in conn.tunnels:
                put(name, state_key(_tunnel(view, conn, name)))
        for name, key in invalid.items():
            put(name, key)
        self._invalid = invalid
        return {
            name: (old, self._states.get(name))
            for name, old in before.items()
            if self._states.get(name) != old
        }


def _tunnel(view: View, conn: ConnSpec, name: str) -> TunnelStatus:
    outcome = view.outcomes.get(conn.name, ConnOutcome())
    selectors = tuple(
        Selector(naming.child_name(name, child.suffix), child.local_ts, child.remote_ts)
        for child in conn.children_of(name)
    )
    children = {s.child for s in selectors}
    base = TunnelStatus(
        name,
        State.CONFIGURED,
        conn=conn.name,
        auth=conn.auth,
        local_id=conn.local_id,
        remote_id=conn.remote_id,
        selectors=selectors,
        ike_rekeys=outcome.ike_rekeys,
        child_rekeys=outcome.child_rekeys,
    )

    def status(state: State, reason: str, cause: Cause | None = None) -> TunnelStatus:
        return dataclasses.replace(base, state=state, reason=reason, cause=cause)

    if conn.name in view.refusals:
        return status(State.FAILED, view.refusals[conn.name], Cause.CHARON)
    if view.charon_error is not None:
        reason = f"{view.ike_daemon} unreachable: {view.charon_error}"
        return status(State.FAILED, reason, Cause.CHARON)
    lacking = view.lacking(conn) if view.lacking is not None else ()
    if lacking:  # held back from charon (Daemon._hold_back): its blocks keep plaintext out
        return status(State.FAILED, describe_lacks(lacking), Cause.CAPABILITY)
    if conn.name not in view.loaded:
        return status(State.FAILED, f"not loaded into {view.ike_daemon} yet", Cause.CHARON)

    ike = current_ike(view.sas.get(conn.name, ()))
    if ike is not None:
        child_sas = tuple(c for c in ike.children if c.name in children)
        base = dataclasses.replace(base, ike_sa=ike, child_sas=child_sas)
    failure = outcome.failure
    if ike is not None and ike.is_established:
        installed = {c.name for c in base.child_sas if c.state == "INSTALLED"}
        missing = sorted(children - installed)
        if not missing:
            return status(State.UP, "")
        child_failure = outcome.child_failure
        if child_failure is not None and child_failure.ike_id == ike.uniqueid:
            return status(State.IKE_UP, child_failure.reason, child_failure.cause)
        what = "CHILD_SA " + ", ".join(missing)
        if installed:
            return status(State.IKE_UP, f"{what} not installed (the other direction is)")
        return status(State.IKE_UP, f"IKE_SA established; {what} not installed yet")
    if ike is not None:
        if failure is not None and failure.ike_id >= ike.uniqueid:
            return status(State.FAILED, failure.reason, failure.cause)
        reason = f"negotiating the IKE_SA with {ike.remote_host or conn.remote_ip}"
        if failure is not None:
            reason += f"; the previous attempt failed: {failure.reason}"
        return status(State.CONNECTING, reason)
    if failure is not None:
        return status(State.FAILED, failure.reason, failure.cause)
    return status(
        State.CONFIGURED,
        f"loaded into {view.ike_daemon}, trap policies in place; no SA yet (negotiated on the "
        "first packet)",
    )
