"""Per-tunnel state with a human reason. Pure: no I/O, no clock.

Three inputs are folded together by `fold()`:

* what the daemon planned and what charon took (`Desired`, the loaded connections, charon's
  refusals, whether charon is reachable);
* charon's SAs as `list-sas` last reported them (`parse_sas()`);
* how the latest negotiations ended, folded from charon's events by `Tracker`.

The states (State) and how each is reached:

    invalid     the configuration was rejected; the reason names the OVSDB key
    configured  connection loaded, trap policies in place, no SA (negotiated on first packet)
    connecting  an IKE_SA is being negotiated
    ike-up      IKE_SA established, but not every CHILD_SA of the tunnel is installed
    up          every CHILD_SA of the tunnel is installed
    failed      charon refused the connection or is unreachable, or the last negotiation failed

Failure causes come from charon's events: `alert` from strongSwan 6.0.3, log messages (5.9.8,
6.0.1), both classified by the tables in causes.py. A log message is only looked at when its
IKE_SA is one of ours (or not yet named), so what is folded is one negotiation's worth of lines per
attempt; the context the messages give (identities, the peer's address, a netlink error) is kept
per IKE_SA, for the last MAX_ATTEMPTS IKE_SAs.

This module is over 400 lines because the state fold and the event fold share their types and
only make sense together; the SA data (sas.py) and the cause tables (causes.py) are apart.

May import: capabilities, causes, model, naming, connections, block_policies, sas, stdlib.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ovs_ipsec.core import naming
from ovs_ipsec.core.block_policies import PolicySpec
from ovs_ipsec.core.capabilities import Lack, describe_lacks
from ovs_ipsec.core.causes import ALERTS, LOG_PATTERNS, Cause, LogPattern, Scope, log_wanted
from ovs_ipsec.core.connections import ConnSpec, Desired
from ovs_ipsec.core.sas import (
    CONNECTING_STATES,
    UNNAMED,
    ChildSa,
    IkeSa,
    as_int,
    as_text,
    as_texts,
    current_ike,
)


class State(enum.StrEnum):
    INVALID = "invalid"  # configuration rejected; nothing loaded, plaintext blocked
    CONFIGURED = "configured"  # connection loaded, trap in place, no SA yet
    CONNECTING = "connecting"
    IKE_UP = "ike-up"  # IKE_SA but no CHILD_SA
    UP = "up"  # CHILD_SAs installed
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """Why a negotiation failed, and in which IKE_SA (charon's unique id)."""

    cause: Cause
    reason: str
    ike_id: int
    priority: int = 0
    final: bool = False  # the IKE_SA fails even though it came up here (Scope.LOST)


@dataclass(frozen=True)
class ConnOutcome:
    """What the events said about one connection since it was (re)loaded."""

    failure: Outcome | None = None  # the last IKE_SA negotiation failed (none up since)
    child_failure: Outcome | None = None  # a CHILD_SA failed in IKE_SA `ike_id`
    ike_rekeys: int = 0
    child_rekeys: int = 0


@dataclass
class _Attempt:
    """What the log told so far about one IKE_SA (by unique id)."""

    conn: str | None = None
    local_id: str = ""
    remote_id: str = ""
    remote_host: str = ""
    established: bool = False
    facts: dict[str, str] = field(default_factory=dict)

    def fields(self, groups: Mapping[str, str]) -> dict[str, str]:
        peer = naming.remote_of_conn(self.conn) if self.conn else "unknown"
        values = {
            "local_id": self.local_id or "unknown",
            "remote_id": self.remote_id or "unknown",
            "remote_host": self.remote_host or peer,
            "netlink": "",
        }
        values.update(self.facts)
        values.update({k: v for k, v in groups.items() if v is not None})
        return values


ALERT_PRIORITY = 10
MAX_ATTEMPTS = 512  # IKE_SAs whose log context is kept; the oldest is forgotten first


class _Fields(dict[str, str]):
    """Format fields; a name a template needs but nothing supplied reads as "?"."""

    def __missing__(self, key: str) -> str:
        return "?"


def _format(template: str, values: Mapping[str, str]) -> str:
    return template.format_map(_Fields(values))


class Tracker:
    """Folds charon's events into per-connection outcomes. `feed()` returns True when the SAs
    themselves changed, i.e. when `list-sas` would now tell something new."""

    def __init__(self, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._conns: dict[str, ConnOutcome] = {}
        self._touched: set[str] = set()  # connections whose outcome moved since last asked
        self._attempts: OrderedDict[int, _Attempt] = OrderedDict()
        self._max_attempts = max_attempts

    def outcomes(self) -> Mapping[str, ConnOutcome]:
        """Read-only and live: read at each refold, so a copy would cost every connection's
        entry per change."""
        return MappingProxyType(self._conns)

    def touched(self) -> set[str]:
        """The connections whose outcome changed since the last call."""
        touched, self._touched = self._touched, set()
        return touched

    def forget(self, conn: str) -> None:
        """The connection or its credentials were (re)loaded: earlier failures no longer say
        anything about what the next negotiation will do."""
        if self._conns.pop(conn, None) is not None:
            self._touched.add(conn)

    def reset(self) -> None:
        """charon went away; its SAs and everything said about them are gone too."""
        self._touched.update(self._conns)
        self._conns.clear()
        self._attempts.clear()

    def feed(self, name: str, body: Mapping[str, Any]) -> bool:
        if name == "log":
            self._log(body)
            return False
        if name == "alert":
            self._alert(body)
            return False
        handler: Callable[[str, Mapping[str, Any], bool], None] | None = {
            "ike-updown": self._ike_updown,
            "child-updown": self._child_updown,
            "ike-rekey": self._ike_rekey,
            "child-rekey": self._child_rekey,
        }.get(name)
        if handler is None:
            return False
        up = body.get("up") == "yes"
        touched = False
        for ike_name, sa in body.items():
            if ike_name == "up" or not isinstance(sa, Mapping):
                continue
            conn = self._conn_of(ike_name, sa)
            if conn is None:
                continue
            handler(conn, sa, up)
            touched = True
        return touched

    def _set(self, conn: str, outcome: ConnOutcome) -> None:
        self._conns[conn] = outcome
        self._touched.add(conn)

    # -- event handlers ---------------------------------------------------------------------

    def _ike_updown(self, conn: str, sa: Mapping[str, Any], up: bool) -> None:
        uid = as_int(sa.get("uniqueid")) or 0
        attempt = self._attempt(uid, conn)
        attempt.remote_host = as_text(sa.get("remote-host")) or attempt.remote_host
        attempt.local_id = as_text(sa.get("local-id")) or attempt.local_id
        attempt.remote_id = as_text(sa.get("remote-id")) or attempt.remote_id
        outcome = self._conns.get(conn, ConnOutcome())
        if up:
            attempt.established = True
            failure = outcome.failure
            if failure is not None and not (
                failure.ike_id > uid or (failure.ike_id == uid and failure.final)
            ):
                failure = None
            child = outcome.child_failure
            if child is not None and child.ike_id != uid:
                child = None
            self._set(conn, dataclasses.replace(outcome, failure=failure, child_failure=child))
        elif not attempt.established and as_text(sa.get("state")) in CONNECTING_STATES:
            # The negotiation ended before the IKE_SA was up. charon's log usually says why
            # within milliseconds (before or after this event); until then, say what we know.
            reason = f"IKE negotiation with {attempt.remote_host or 'the peer'} failed"
            self._record(conn, Scope.IKE, Outcome(Cause.NEGOTIATION, reason, uid, 0))
        elif outcome.child_failure is not None and outcome.child_failure.ike_id == uid:
            self._set(conn, dataclasses.replace(outcome, child_failure=None))

    def _child_updown(self, conn: str, sa: Mapping[str, Any], up: bool) -> None:
        outcome = self._conns.get(conn)
        if up and outcome is not None and outcome.child_failure is not None:
            self._set(conn, dataclasses.replace(outcome, child_failure=None))

    def _ike_rekey(self, conn: str, sa: Mapping[str, Any], up: bool) -> None:
        outcome = self._conns.get(conn, ConnOutcome())
        self._set(conn, dataclasses.replace(outcome, ike_rekeys=outcome.ike_rekeys + 1))

    def _child_rekey(self, conn: str, sa: Mapping[str, Any], up: bool) -> None:
        outcome = self._conns.get(conn, ConnOutcome())
        count = len(sa.get("child-sas") or {}) or 1
        self._set(conn, dataclasses.replace(outcome, child_rekeys=outcome.child_rekeys + count))

    def _alert(self, body: Mapping[str, Any]) -> None:
        known = ALERTS.get(as_text(body.get("type")))
        sas = body.get("ike-sa")
        if known is None or not isinstance(sas, Mapping):
            return
        cause, scope, template = known
        for ike_name, sa in sas.items():
            if not isinstance(sa, Mapping):
                continue
            conn = self._conn_of(ike_name, sa)
            if conn is None:
                continue
            uid = as_int(sa.get("uniqueid")) or 0
            attempt = self._attempt(uid, conn)
            attempt.remote_host = as_text(sa.get("remote-host")) or attempt.remote_host
            attempt.local_id = as_text(sa.get("local-id")) or attempt.local_id
            attempt.remote_id = as_text(sa.get("remote-id")) or attempt.remote_id
            reason = _format(template, attempt.fields({}))
            self._record(conn, scope, Outcome(cause, reason, uid, ALERT_PRIORITY))

    def _log(self, body: Mapping[str, Any]) -> None:
        ike_name = body.get("ikesa-name")
        uid = as_int(body.get("ikesa-uniqueid"))
        if not isinstance(ike_name, str) or uid is None:
            return  # not about an IKE_SA (loading configs, the kernel's own chatter)
        if ike_name != UNNAMED and not naming.is_owned_conn(ike_name):
            return  # someone else's IKE_SA
        message = as_text(body.get("msg"))
        if not log_wanted(body.get("group"), message):
            return
        for pattern in LOG_PATTERNS:
            match = pattern.regex.search(message)
            if match is None:
                continue
            attempt = self._attempt(uid, None if ike_name == UNNAMED else ike_name)
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            self._remember(attempt, pattern, groups)
            if pattern.cause is not None and attempt.conn is not None:
                scope = pattern.scope
                if scope is Scope.AUTO:
                    scope = Scope.CHILD if attempt.established else Scope.IKE
                values = attempt.fields(groups)
                values["phase"] = "ESP" if scope is Scope.CHILD else "IKE"
                if values["netlink"]:
                    values["netlink"] = f" (netlink error: {values['netlink']})"
                reason = _format(pattern.reason, values)
                self._record(attempt.conn, scope, Outcome(pattern.cause, reason, uid,
                                                          pattern.priority))  # fmt: skip
            return

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _remember(attempt: _Attempt, pattern: LogPattern, groups: Mapping[str, str]) -> None:
        for attribute, group in pattern.remember:
            if attribute == "established":
                attempt.established = True
            elif attribute in ("local_id", "remote_id", "remote_host"):
                if groups.get(group):
                    setattr(attempt, attribute, groups[group])
            elif groups.get(group):
                attempt.facts[attribute] = groups[group]
        if attempt.conn is None and attempt.remote_host:
            # A peer whose IKE_SA charon could not name yet: file it under the connection to
            # that address, if it is one of ours.
            conn = naming.conn_name(attempt.remote_host)
            if naming.is_owned_conn(conn):
                attempt.conn = conn

    def _conn_of(self, ike_name: str, sa: Mapping[str, Any]) -> str | None:
        if naming.is_owned_conn(ike_name):
            return ike_name
        if ike_name == UNNAMED:
            host = as_text(sa.get("remote-host"))
            conn = naming.conn_name(host) if host else ""
            if naming.is_owned_conn(conn):
                return conn
            uid = as_int(sa.get("uniqueid"))
            attempt = self._attempts.get(uid) if uid is not None else None
            return attempt.conn if attempt is not None else None
        return None

    def _attempt(self, uid: int, conn: str | None) -> _Attempt:
        attempt = self._attempts.get(uid)
        if attempt is None:
            attempt = self._attempts[uid] = _Attempt(conn=conn)
            while len(self._attempts) > self._max_attempts:
                self._attempts.popitem(last=False)
        elif conn is not None:
            attempt.conn = conn
        return attempt

    def _record(self, conn: str, scope: Scope, outcome: Outcome) -> None:
        if scope is Scope.LOST:
            scope, outcome = Scope.IKE, dataclasses.replace(outcome, final=True)
        attempt = self._attempts.get(outcome.ike_id)
        if (
            scope is Scope.IKE
            and attempt is not None
            and attempt.established
            and outcome.cause is not Cause.UNREACHABLE
            and not outcome.final
        ):
            # A candidate key or certificate that failed before another one succeeded: the
            # IKE_SA is up, so this was no failure. (An established SA can still lose its
            # peer: DPD and rekeying retransmits.)
            return
        current = self._conns.get(conn, ConnOutcome())
        if scope is Scope.CHILD:
            if _supersedes(outcome, current.child_failure):
                self._set(conn, dataclasses.replace(current, child_failure=outcome))
        elif _supersedes(outcome, current.failure):
            self._set(conn, dataclasses.replace(current, failure=outcome))


def _supersedes(new: Outcome, old: Outcome | None) -> bool:
    """A newer IKE_SA's outcome replaces an older one's; within one IKE_SA the more specific
    (higher priority) reason stays, and among equals the latest."""
    if old is None or new.ike_id > old.ike_id:
        return True
    return new.ike_id == old.ike_id and new.priority >= old.priority


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
    explained: Mapping[PolicySpec, tuple[str, ...]],
    installed: AbstractSet[PolicySpec],
    names: Iterable[str],
    fail_open: bool = False,
) -> dict[str, Protection]:
    """`explained` is protection.explain_protection(); its reasons name the tunnel a policy
    exists for (`tunnel NAME`, `invalid tunnel NAME`) or `ipsec_skb_mark`. A tunnel without
    fail-closed policies gets (0, 0) (nothing known to block, e.g. no usable remote_ip), or
    None when ipsec_fail_open turned them off."""
    per_tunnel: dict[str, set[PolicySpec]] = {}
    skb: set[PolicySpec] = set()
    for spec, reasons in explained.items():
        for reason in reasons:
            if reason == "ipsec_skb_mark":
                skb.add(spec)
            for prefix in ("tunnel ", "invalid tunnel "):
                if reason.startswith(prefix):
                    # A tunnel rejected while planning has both reasons for the same policies.
                    per_tunnel.setdefault(reason[len(prefix) :], set()).add(spec)

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
    child: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    name: str
    state: State
    reason: str = ""
    conn: str | None = None
    cause: Cause | None = None
    auth: str = ""  # psk or pubkey, as loaded
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

    def states(self) -> dict[str, StateKey]:
        """Every port's state key as of the last refold, sorted by name."""
        return dict(sorted(self._states.items()))

    def refold(
        self, view: View, stale: Iterable[str] | None = None
    ) -> dict[str, tuple[StateKey | None, StateKey | None]]:
        """Fold the connections named in `stale` again (None: every one) and the invalid
        ports; returns (before, now) for the ports whose key changed (None: no such port)."""
        before: dict[str, StateKey | None] = {}

        def drop(name: str) -> None:
            before.setdefault(name, self._states.pop(name, None))

        def put(name: str, key: StateKey) -> None:
            before.setdefault(name, self._states.get(name))
            self._states[name] = key

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
    body = conn.body
    auth, local_id, remote_id = _identities(body)
    selectors = _selectors(body, name)
    children = {s.child for s in selectors}
    base = TunnelStatus(
        name,
        State.CONFIGURED,
        conn=conn.name,
        auth=auth,
        local_id=local_id,
        remote_id=remote_id,
        selectors=selectors,
        ike_rekeys=outcome.ike_rekeys,
        child_rekeys=outcome.child_rekeys,
    )

    def status(state: State, reason: str, cause: Cause | None = None) -> TunnelStatus:
        return dataclasses.replace(base, state=state, reason=reason, cause=cause)

    if conn.name in view.refusals:
        return status(State.FAILED, view.refusals[conn.name], Cause.CHARON)
    if view.charon_error is not None:
        return status(State.FAILED, f"charon unreachable: {view.charon_error}", Cause.CHARON)
    lacking = view.lacking(conn) if view.lacking is not None else ()
    if lacking:  # held back from charon (Daemon._hold_back): its blocks keep plaintext out
        return status(State.FAILED, describe_lacks(lacking), Cause.CAPABILITY)
    if conn.name not in view.loaded:
        return status(State.FAILED, "not loaded into charon yet", Cause.CHARON)

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
        "loaded into charon, trap policies in place; no SA yet (negotiated on the first packet)",
    )


def _identities(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(auth, local id, remote id) as plan.py wrote them into the connection."""
    local = body.get("local") if isinstance(body.get("local"), Mapping) else {}
    remote = body.get("remote") if isinstance(body.get("remote"), Mapping) else {}
    return (
        as_text(local.get("auth")),
        _bare_id(as_text(local.get("id"))),
        _bare_id(as_text(remote.get("id"))),
    )


def _bare_id(identity: str) -> str:
    """`fqdn:h1` -> `h1`: the type prefix tells charon how to parse, not people who it is."""
    return identity.split(":", 1)[1] if identity.startswith("fqdn:") else identity


def _selectors(body: Mapping[str, Any], tunnel: str) -> tuple[Selector, ...]:
    children = body.get("children") if isinstance(body.get("children"), Mapping) else {}
    ours = {naming.child_name(tunnel, suffix) for suffix in ("", "-in", "-out")}
    return tuple(
        Selector(child, as_texts(config.get("local_ts")), as_texts(config.get("remote_ts")))
        for child, config in sorted(children.items())
        if child in ours and isinstance(config, Mapping)
    )
