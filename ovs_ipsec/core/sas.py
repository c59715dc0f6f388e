"""charon's SAs and events as plain data: `list-sas` replies and events parsed once, here, into
typed values (`parse_sas`, `parse_event`), and the SA events folded into the last listing. Pure.
Every key of charon's SA and event messages is read in this module only.

charon's events carry the SA they are about; folding them into the last listing keeps states
current between listings. `list-sas` with noblock (which never waits for an SA a charon thread
holds) skips an SA that is checked out, which it is while the exchange that raised the event is
still being processed: so what an event said is kept until a listing agrees with it
(`merge_listing`).

May import: naming, stdlib.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core import naming

UNNAMED = "(unnamed)"  # charon's name for an IKE_SA before a connection is chosen for it
# IKE_SA states with working keys. REKEYED is the old half of a rekeying: last resort.
ESTABLISHED_RANK = {"ESTABLISHED": 4, "REKEYING": 3, "PASSIVE": 2, "REKEYED": 1}
CONNECTING_STATES = frozenset({"CREATED", "CONNECTING"})


@dataclass(frozen=True)
class ChildSa:
    name: str
    uniqueid: int
    state: str
    mode: str = ""
    protocol: str = ""
    encap: bool = False
    spi_in: str = ""
    spi_out: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    rekey_time: int | None = None  # seconds until charon rekeys it
    life_time: int | None = None  # seconds until it expires
    install_time: int | None = None  # seconds since it was installed
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()


@dataclass(frozen=True)
class IkeSa:
    name: str
    uniqueid: int
    state: str
    local_host: str = ""
    local_port: int | None = None
    local_id: str = ""
    remote_host: str = ""
    remote_port: int | None = None
    remote_id: str = ""
    initiator: bool = False
    nat_local: bool = False
    nat_remote: bool = False
    nat_any: bool = False
    established: int | None = None  # seconds since it was established
    rekey_time: int | None = None  # seconds until charon rekeys it
    children: tuple[ChildSa, ...] = ()

    @property
    def is_established(self) -> bool:
        return self.state in ESTABLISHED_RANK


def as_int(value: Any) -> int | None:
    try:
        return int(str(value), 10)
    except ValueError:
        return None


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_texts(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def parse_child(sa: Mapping[str, Any]) -> ChildSa:
    return ChildSa(
        name=as_text(sa.get("name")),
        uniqueid=as_int(sa.get("uniqueid")) or 0,
        state=as_text(sa.get("state")),
        mode=as_text(sa.get("mode")),
        protocol=as_text(sa.get("protocol")),
        encap=sa.get("encap") == "yes",
        spi_in=as_text(sa.get("spi-in")),
        spi_out=as_text(sa.get("spi-out")),
        bytes_in=as_int(sa.get("bytes-in")) or 0,
        bytes_out=as_int(sa.get("bytes-out")) or 0,
        packets_in=as_int(sa.get("packets-in")) or 0,
        packets_out=as_int(sa.get("packets-out")) or 0,
        rekey_time=as_int(sa.get("rekey-time")),
        life_time=as_int(sa.get("life-time")),
        install_time=as_int(sa.get("install-time")),
        local_ts=as_texts(sa.get("local-ts")),
        remote_ts=as_texts(sa.get("remote-ts")),
    )


def parse_ike(name: str, sa: Mapping[str, Any]) -> IkeSa:
    children = sa.get("child-sas")
    return IkeSa(
        name=name,
        uniqueid=as_int(sa.get("uniqueid")) or 0,
        state=as_text(sa.get("state")),
        local_host=as_text(sa.get("local-host")),
        local_port=as_int(sa.get("local-port")),
        local_id=as_text(sa.get("local-id")),
        remote_host=as_text(sa.get("remote-host")),
        remote_port=as_int(sa.get("remote-port")),
        remote_id=as_text(sa.get("remote-id")),
        initiator=sa.get("initiator") == "yes",
        nat_local=sa.get("nat-local") == "yes",
        nat_remote=sa.get("nat-remote") == "yes",
        nat_any=sa.get("nat-any") == "yes",
        established=as_int(sa.get("established")),
        rekey_time=as_int(sa.get("rekey-time")),
        children=tuple(
            sorted(
                (parse_child(c) for c in children.values() if isinstance(c, Mapping)),
                key=lambda c: (c.name, c.uniqueid),
            )
        )
        if isinstance(children, Mapping)
        else (),
    )


def parse_sas(entries: Iterable[Mapping[str, Any]]) -> dict[str, tuple[IkeSa, ...]]:
    """A decoded `list-sas` reply -> our connections' IKE_SAs, oldest first. Others' are left
    out: we neither report nor touch them."""
    found: dict[str, list[IkeSa]] = {}
    for entry in entries:
        for name, sa in entry.items():
            if naming.is_owned_conn(name) and isinstance(sa, Mapping):
                found.setdefault(name, []).append(parse_ike(name, sa))
    return {
        name: tuple(sorted(sas, key=lambda sa: sa.uniqueid)) for name, sas in sorted(found.items())
    }


# -- events ---------------------------------------------------------------------------------


ALERT_EVENT = "alert"
LOG_EVENT = "log"


class SaEventKind(enum.StrEnum):
    IKE_UPDOWN = "ike-updown"
    CHILD_UPDOWN = "child-updown"
    IKE_REKEY = "ike-rekey"
    CHILD_REKEY = "child-rekey"


ChildPair = tuple[ChildSa | None, ChildSa | None]  # (old, new) of a CHILD_SA rekeying


@dataclass(frozen=True, slots=True)
class EventSa:
    """One IKE_SA an event is about, under the name charon gave it (`UNNAMED` before a
    connection was chosen). `ike` is what the event said of it (for ike-rekey: nothing, the
    two IKE_SAs are in `rekeyed`; for child-rekey: without its CHILD_SAs, which are in
    `child_pairs`, one per CHILD_SA the event named, (None, None) for one it garbled)."""

    name: str
    ike: IkeSa
    rekeyed: tuple[IkeSa, IkeSa] | None = None  # ike-rekey: (old, new)
    child_pairs: tuple[ChildPair, ...] = ()


@dataclass(frozen=True, slots=True)
class SaEvent:
    """ike-updown, child-updown, ike-rekey or child-rekey."""

    kind: SaEventKind
    up: bool
    sas: tuple[EventSa, ...]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """strongSwan 6's `alert`: its type and the IKE_SA(s) it names (None: it names none)."""

    type: str
    sas: tuple[EventSa, ...] | None


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One of charon's log messages; `ike_name`/`ike_id` None when it is not about an IKE_SA."""

    ike_name: str | None
    ike_id: int | None
    group: object  # charon's log group ("IKE", "CFG", ...), as sent
    message: str


Event = SaEvent | AlertEvent | LogEvent


def parse_event(name: str, body: Mapping[str, Any]) -> Event | None:
    """A decoded event (as the event session receives it) as a typed value; None for an event
    the daemon does not fold."""
    if name == LOG_EVENT:
        ike_name = body.get("ikesa-name")
        return LogEvent(
            ike_name if isinstance(ike_name, str) else None,
            as_int(body.get("ikesa-uniqueid")),
            body.get("group"),
            as_text(body.get("msg")),
        )
    if name == ALERT_EVENT:
        sas = body.get("ike-sa")
        return AlertEvent(
            as_text(body.get("type")),
            tuple(_event_sa(SaEventKind.IKE_UPDOWN, n, sa) for n, sa in sas.items()
                  if isinstance(sa, Mapping)) if isinstance(sas, Mapping) else None,
        )  # fmt: skip
    try:
        kind = SaEventKind(name)
    except ValueError:
        return None
    return SaEvent(
        kind,
        body.get("up") == "yes",
        tuple(
            _event_sa(kind, n, sa)
            for n, sa in body.items()
            if n != "up" and isinstance(sa, Mapping)
        ),
    )


def _event_sa(kind: SaEventKind, name: str, sa: Mapping[str, Any]) -> EventSa:
    if kind is SaEventKind.IKE_REKEY:
        old, new = sa.get("old"), sa.get("new")
        rekeyed = None
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            rekeyed = (parse_ike(name, old), parse_ike(name, new))
        return EventSa(name, parse_ike(name, {}), rekeyed)
    if kind is SaEventKind.CHILD_REKEY:
        pairs = sa.get("child-sas")
        child_pairs = tuple(
            (_child_or_none(pair, "old"), _child_or_none(pair, "new"))
            if isinstance(pair, Mapping)
            else (None, None)
            for pair in (pairs.values() if isinstance(pairs, Mapping) else ())
        )
        ike = parse_ike(name, {k: v for k, v in sa.items() if k != "child-sas"})
        return EventSa(name, ike, child_pairs=child_pairs)
    return EventSa(name, parse_ike(name, sa))


def _child_or_none(pair: Mapping[str, Any], key: str) -> ChildSa | None:
    value = pair.get(key)
    return parse_child(value) if isinstance(value, Mapping) else None


def current_ike(sas: Iterable[IkeSa]) -> IkeSa | None:
    """The IKE_SA that speaks for a connection: the newest established one, else the newest
    one being negotiated; SAs being deleted do not count."""
    best: tuple[int, int] | None = None
    chosen = None
    for sa in sas:
        if sa.is_established:
            rank = 10 + ESTABLISHED_RANK[sa.state]
        elif sa.state in CONNECTING_STATES:
            rank = 1
        else:
            continue
        if best is None or (rank, sa.uniqueid) > best:
            best, chosen = (rank, sa.uniqueid), sa
    return chosen


Expected = dict[tuple[str, int], bool]  # (connection, IKE_SA unique id) -> present


def _replace_ike(sas: list[IkeSa], new: IkeSa, keep_children: bool) -> list[IkeSa]:
    old = next((sa for sa in sas if sa.uniqueid == new.uniqueid), None)
    if old is not None and keep_children and not new.children:
        new = dataclasses.replace(new, children=old.children)
    return [sa for sa in sas if sa.uniqueid != new.uniqueid] + [new]


def fold_sa_event(
    sas: Mapping[str, tuple[IkeSa, ...]], event: SaEvent
) -> tuple[dict[str, tuple[IkeSa, ...]], Expected]:
    """The snapshot after an SA event, and what a listing should now show. Only the event's
    connections are copied and sorted again (an event names one or two of thousands)."""
    result: dict[str, list[IkeSa]] = {}
    expected: Expected = {}
    up = event.up
    for entry in event.sas:
        conn = entry.name
        if not naming.is_owned_conn(conn):
            continue
        current = result.setdefault(conn, list(sas.get(conn, ())))
        ike = entry.ike
        if event.kind is SaEventKind.IKE_UPDOWN:
            if up:
                result[conn] = _replace_ike(current, ike, keep_children=True)
            else:
                result[conn] = [s for s in current if s.uniqueid != ike.uniqueid]
            expected[(conn, ike.uniqueid)] = up
        elif event.kind is SaEventKind.CHILD_UPDOWN:
            old = next((s for s in current if s.uniqueid == ike.uniqueid), None)
            children = {c.uniqueid: c for c in (old.children if old else ())}
            for child in ike.children:
                if up:
                    children[child.uniqueid] = child
                else:
                    children.pop(child.uniqueid, None)
            ike = dataclasses.replace(ike, children=_sorted_children(children.values()))
            result[conn] = _replace_ike(current, ike, keep_children=False)
            if up:
                expected[(conn, ike.uniqueid)] = True
        elif event.kind is SaEventKind.IKE_REKEY:
            if entry.rekeyed is not None:
                old_ike, new = entry.rekeyed
                previous = next((s for s in current if s.uniqueid == old_ike.uniqueid), None)
                if previous is not None:  # the CHILD_SAs move over to the new IKE_SA
                    new = dataclasses.replace(new, children=previous.children)
                kept = [s for s in current if s.uniqueid != old_ike.uniqueid]
                result[conn] = _replace_ike(kept, new, keep_children=True)
                expected[(conn, old_ike.uniqueid)] = False
                expected[(conn, new.uniqueid)] = True
        else:  # CHILD_REKEY
            old = next((s for s in current if s.uniqueid == ike.uniqueid), None)
            children = {c.uniqueid: c for c in (old.children if old else ())}
            for old_child, new_child in entry.child_pairs:
                for child, present in ((old_child, False), (new_child, True)):
                    if child is not None:
                        children.pop(child.uniqueid, None)
                        if present:
                            children[child.uniqueid] = child
            ike = dataclasses.replace(ike, children=_sorted_children(children.values()))
            result[conn] = _replace_ike(current, ike, keep_children=False)
    snapshot = dict(sas)
    for conn, found in result.items():
        if found:
            snapshot[conn] = tuple(sorted(found, key=lambda sa: sa.uniqueid))
        else:
            snapshot.pop(conn, None)
    return snapshot, expected


def _sorted_children(children: Iterable[ChildSa]) -> tuple[ChildSa, ...]:
    return tuple(sorted(children, key=lambda c: (c.name, c.uniqueid)))


def merge_listing(
    listed: Mapping[str, tuple[IkeSa, ...]],
    previous: Mapping[str, tuple[IkeSa, ...]],
    expected: Expected,
) -> tuple[dict[str, tuple[IkeSa, ...]], Expected]:
    """A new listing, corrected by what events said and it does not show yet; returns the
    snapshot and the expectations still unmet (list again a little later)."""
    result = {conn: list(found) for conn, found in listed.items()}
    unmet: Expected = {}
    for (conn, uid), present in expected.items():
        found = any(sa.uniqueid == uid for sa in result.get(conn, ()))
        if found == present:
            continue
        unmet[(conn, uid)] = present
        if present:
            kept = [sa for sa in previous.get(conn, ()) if sa.uniqueid == uid]
            result.setdefault(conn, []).extend(kept)
        else:
            result[conn] = [sa for sa in result.get(conn, []) if sa.uniqueid != uid]
    return _normalized(result), unmet


def _normalized(sas: Mapping[str, list[IkeSa]]) -> dict[str, tuple[IkeSa, ...]]:
    return {
        conn: tuple(sorted(found, key=lambda sa: sa.uniqueid))
        for conn, found in sorted(sas.items())
        if found
    }
