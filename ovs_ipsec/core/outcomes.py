"""How charon's latest negotiations ended, per connection: `Tracker` folds charon's events (typed
by sas.parse_event) into one `ConnOutcome` per connection, which the status fold (status.py)
reads. Pure: no I/O, no clock.

Failure causes come from charon's events: `alert` from strongSwan 6.0.3, log messages (5.9.8,
6.0.1), both classified by the tables in causes.py. A log message is only looked at when its
IKE_SA is one of ours (or not yet named), so what is folded is one negotiation's worth of lines per
attempt; the context the messages give (identities, the peer's address, a netlink error) is kept
per IKE_SA, for the last MAX_ATTEMPTS IKE_SAs.

`dispatch` is the one way an event enters: it feeds the tracker and folds the SA table.

May import: causes, log_text, naming, sas, stdlib.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ovs_ipsec.core import naming
from ovs_ipsec.core.causes import ALERTS, LOG_PATTERNS, Cause, LogPattern, Scope, log_wanted
from ovs_ipsec.core.log_text import printable
from ovs_ipsec.core.sas import (
    CONNECTING_STATES,
    UNNAMED,
    AlertEvent,
    Event,
    EventSa,
    Expected,
    IkeSa,
    LogEvent,
    SaEvent,
    SaEventKind,
    fold_sa_event,
    parse_event,
)


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


# Identities and charon's texts in a reason, at most this long each: a peer chooses its own
# identity, unauthenticated, and every reason is logged.
FIELD_LIMIT = 256


def _format(template: str, values: Mapping[str, str]) -> str:
    return template.format_map(_Fields({k: printable(v, FIELD_LIMIT) for k, v in values.items()}))


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

    def note(self, conn: str, outcome: Outcome) -> None:
        """A failed negotiation the IKE daemon told otherwise than by events (pluto's reply to
        an initiation, adapters/pluto.py)."""
        self._record(conn, Scope.IKE, outcome)

    def reset(self) -> None:
        """charon went away; its SAs and everything said about them are gone too."""
        self._touched.update(self._conns)
        self._conns.clear()
        self._attempts.clear()

    def feed(self, event: Event) -> bool:
        if isinstance(event, LogEvent):
            self._log(event)
            return False
        if isinstance(event, AlertEvent):
            self._alert(event)
            return False
        touched = False
        for entry in event.sas:
            conn = self._conn_of(entry.name, entry.ike)
            if conn is None:
                continue
            self._HANDLERS[event.kind](self, conn, entry, event.up)
            touched = True
        return touched

    def _set(self, conn: str, outcome: ConnOutcome) -> None:
        self._conns[conn] = outcome
        self._touched.add(conn)

    # -- event handlers ---------------------------------------------------------------------

    def _ike_updown(self, conn: str, entry: EventSa, up: bool) -> None:
        sa = entry.ike
        uid = sa.uniqueid
        attempt = self._attempt(uid, conn)
        self._learn(attempt, sa)
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
        elif not attempt.established and sa.state in CONNECTING_STATES:
            # The negotiation ended before the IKE_SA was up. charon's log usually says why
            # within milliseconds (before or after this event); until then, say what we know.
            reason = f"IKE negotiation with {attempt.remote_host or 'the peer'} failed"
            self._record(conn, Scope.IKE, Outcome(Cause.NEGOTIATION, reason, uid, 0))
        elif outcome.child_failure is not None and outcome.child_failure.ike_id == uid:
            self._set(conn, dataclasses.replace(outcome, child_failure=None))

    def _child_updown(self, conn: str, entry: EventSa, up: bool) -> None:
        outcome = self._conns.get(conn)
        if up and outcome is not None and outcome.child_failure is not None:
            self._set(conn, dataclasses.replace(outcome, child_failure=None))

    def _ike_rekey(self, conn: str, entry: EventSa, up: bool) -> None:
        outcome = self._conns.get(conn, ConnOutcome())
        self._set(conn, dataclasses.replace(outcome, ike_rekeys=outcome.ike_rekeys + 1))

    def _child_rekey(self, conn: str, entry: EventSa, up: bool) -> None:
        outcome = self._conns.get(conn, ConnOutcome())
        count = len(entry.child_pairs) or 1
        self._set(conn, dataclasses.replace(outcome, child_rekeys=outcome.child_rekeys + count))

    _HANDLERS = {
        SaEventKind.IKE_UPDOWN: _ike_updown,
        SaEventKind.CHILD_UPDOWN: _child_updown,
        SaEventKind.IKE_REKEY: _ike_rekey,
        SaEventKind.CHILD_REKEY: _child_rekey,
    }

    def _alert(self, event: AlertEvent) -> None:
        known = ALERTS.get(event.type)
        if known is None or event.sas is None:
            return
        cause, scope, template = known
        for entry in event.sas:
            conn = self._conn_of(entry.name, entry.ike)
            if conn is None:
                continue
            uid = entry.ike.uniqueid
            attempt = self._attempt(uid, conn)
            self._learn(attempt, entry.ike)
            reason = _format(template, attempt.fields({}))
            self._record(conn, scope, Outcome(cause, reason, uid, ALERT_PRIORITY))

    def _log(self, event: LogEvent) -> None:
        ike_name, uid = event.ike_name, event.ike_id
        if ike_name is None or uid is None:
            return  # not about an IKE_SA (loading configs, the kernel's own chatter)
        if ike_name != UNNAMED and not naming.is_owned_conn(ike_name):
            return  # someone else's IKE_SA
        message = event.message
        if not log_wanted(event.group, message):
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

    @staticmethod
    def _learn(attempt: _Attempt, sa: IkeSa) -> None:
        attempt.remote_host = sa.remote_host or attempt.remote_host
        attempt.local_id = sa.local_id or attempt.local_id
        attempt.remote_id = sa.remote_id or attempt.remote_id

    def _conn_of(self, ike_name: str, sa: IkeSa) -> str | None:
        if naming.is_owned_conn(ike_name):
            return ike_name
        if ike_name == UNNAMED:
            host = sa.remote_host
            conn = naming.conn_name(host) if host else ""
            if naming.is_owned_conn(conn):
                return conn
            # charon's unique ids start at 1: 0 is "none given".
            attempt = self._attempts.get(sa.uniqueid) if sa.uniqueid else None
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


def dispatch(
    name: str,
    body: Mapping[str, Any],
    tracker: Tracker,
    sas: dict[str, tuple[IkeSa, ...]],
) -> tuple[dict[str, tuple[IkeSa, ...]], Expected, tuple[str, ...]]:
    """One event as the event session received it: parsed once, fed to `tracker`, and folded
    into the SA table `sas` when it is about SAs of ours. Returns the SA table after it, what a
    listing should now show, and the IKE_SA names the event is about when it moved anything
    (empty: nothing changed that a listing would show)."""
    event = parse_event(name, body)
    if event is None or not tracker.feed(event):
        return sas, {}, ()
    assert isinstance(event, SaEvent)  # only SA events move SAs
    folded, expected = fold_sa_event(sas, event)
    return folded, expected, tuple(entry.name for entry in event.sas)
