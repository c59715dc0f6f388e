"""Fake adapters and a fake clock for unit tests of the `Daemon` (tests/unit/test_daemon.py).

Each fake has the methods the Daemon calls on the real adapter (adapters/ovsdb.py, charon.py,
events.py, xfrm/adapter.py) and holds the state of the system it stands for as plain data: the
connections and secrets charon holds, the block policies in the kernel, the rows OVSDB has.
Writes are recorded as data (`FakeCharon.writes`, `FakeXfrm.writes`), failures are switched on
by the test and raised as the real exception types. They stand beside the real-component tests
(tests/integration), never instead of them.

`World` wires them to a Daemon and drives it the way cli.run_loop does: run(), wait() with a
poller, then time passes until the deadline the Daemon asked for.

Over 400 lines because it stands for four external systems and the loop around them; split
per fake, each would be a fragment that only this file's `World` puts together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vici.protocol import FiniteStream, Message

from ovs_ipsec.adapters.charon import request_of
from ovs_ipsec.adapters.events import Received
from ovs_ipsec.adapters.xfrm.adapter import Operation, PolicyFailure, XfrmApplyError
from ovs_ipsec.core import naming
from ovs_ipsec.core.block_policies import PolicySpec
from ovs_ipsec.core.connections import KeySpec
from ovs_ipsec.core.model import InterfaceRow, PortStatus, RowId
from ovs_ipsec.core.reconcile import Action
from ovs_ipsec.core.sas import IkeSa, parse_sas
from ovs_ipsec.daemon.loop import Daemon, Settings
from ovs_ipsec.errors import CharonError, CharonUnreachable, XfrmError

EPOCH = dt.datetime(2026, 11, 27, 10, 0, 0, tzinfo=dt.UTC)


class FakeClock:
    """Monotonic seconds (call it) and the wall clock (`wall()`), moved only by `advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class FakePoller:
    """What `wait()` asked for: the earliest timer and whether to wake at once."""

    def __init__(self) -> None:
        self.timeout_ms: int | None = None

    def timer_wait(self, msec: int) -> None:
        self.timeout_ms = msec if self.timeout_ms is None else min(self.timeout_ms, msec)

    def immediate_wake(self) -> None:
        self.timer_wait(0)

    def fd_wait(self, fd: Any, events: int) -> None:
        pass  # a socket only wakes the loop when a test makes something arrive

    @property
    def timeout(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000


# -- OVSDB --------------------------------------------------------------------------------------


def unread_row(uuid: RowId) -> InterfaceRow | None:
    """A Planner's read_row where the test gives every row in the update that needs it."""
    raise AssertionError(f"the planner read row {uuid!r} back")


class FakeOvsdb:
    """The OVSDB server's contents (`server`) and what the IDL has shown the daemon. While
    disconnected, changes reach only the server; a reconnect refills the IDL whole and says so
    (`needs_full_read`), as the real IDL does, without naming the rows that went away."""

    def __init__(self, rows: Mapping[RowId, InterfaceRow] | None = None) -> None:
        self.server: dict[RowId, InterfaceRow] = dict(rows or {})
        self.server_other_config: dict[str, str] = {}
        self._idl: dict[RowId, InterfaceRow] = dict(self.server)
        self._idl_other_config: dict[str, str] = {}
        self._changed: set[RowId] = set()
        self._other_config_changed = False
        self._seqno = 1
        self._seen = 0
        self.connected = True
        self.ready = True
        self.needs_full_read = True
        self._reconnected = False

    # what the test does
    def set_row(self, uuid: RowId, name: str, type_: str, **options: str) -> None:
        self._write(uuid, InterfaceRow(name=name, type=type_, options=dict(options)))

    def delete_row(self, uuid: RowId) -> None:
        self._write(uuid, None)

    def set_other_config(self, **values: str) -> None:
        self.server_other_config = dict(values)
        if self.connected:
            self._idl_other_config = dict(values)
            self._other_config_changed = True
            self._seqno += 1

    def disconnect(self) -> None:
        self.connected = False

    def first_contents(self) -> None:
        """The IDL's first full contents arrive (`ready` until then False)."""
        self.ready = True
        self.connected = True
        self._seqno += 1

    def reconnect(self) -> None:
        self.connected = True
        self._reconnected = True

    def _write(self, uuid: RowId, row: InterfaceRow | None) -> None:
        if row is None:
            self.server.pop(uuid, None)
        else:
            self.server[uuid] = row
        if self.connected:
            if row is None:
                self._idl.pop(uuid, None)
            else:
                self._idl[uuid] = row
            self._changed.add(uuid)
            self._seqno += 1

    # the adapter's surface
    def run(self) -> None:
        if self._reconnected:
            self._reconnected = False
            self._idl = dict(self.server)
            self._idl_other_config = dict(self.server_other_config)
            self._seqno += 1
            self.needs_full_read = True

    def wait(self, poller: FakePoller) -> None:
        # Contents the daemon has not read wake it (the IDL's socket was readable); before
        # the first contents there is nothing to read.
        if self._reconnected or (self.ready and self.connected and self.changed()):
            poller.immediate_wake()

    def close(self) -> None:
        self.connected = False

    def changed(self) -> bool:
        return self._seqno != self._seen

    def changes(self) -> tuple[dict[RowId, InterfaceRow | None], dict[str, str] | None]:
        self._seen = self._seqno
        rows = {uuid: self._idl.get(uuid) for uuid in self._changed}
        self._changed = set()
        other_config = None
        if self._other_config_changed:
            self._other_config_changed = False
            other_config = dict(self._idl_other_config)
        return rows, other_config

    def all_rows(self) -> dict[RowId, InterfaceRow]:
        self._seen = self._seqno
        self._changed = set()
        self._other_config_changed = False
        self.needs_full_read = False
        return dict(self._idl)

    def row(self, uuid: RowId) -> InterfaceRow | None:
        return self._idl.get(uuid)

    def other_config(self) -> dict[str, str]:
        return dict(self._idl_other_config)

    def port_status(self, row_ids: Mapping[str, RowId]) -> dict[str, PortStatus]:
        """Every port has ofport 1 and no CFM (display only)."""
        return {name: PortStatus(ofport=1) for name, uuid in row_ids.items() if uuid in self._idl}


# -- charon -------------------------------------------------------------------------------------


@dataclass
class Write:
    """One write charon carried out (or refused: `refused` holds its errmsg)."""

    command: str
    target: str
    at: float
    refused: str = ""


class FakeCharon:
    """charon's state (connections, secrets, keys, SAs) behind the command session.

    `refuse[(command, target)] = errmsg` makes charon say no to that write; `stop()`/`start()`
    take charon away and bring a fresh one (nothing loaded, a new `since`); `unreachable` makes
    every call fail while charon keeps its state (a hung or unreachable socket);
    `fail_after_writes = n` drops the session after n more writes (mid-pipeline)."""

    def __init__(self, clock: FakeClock, kernel: FakeXfrm | None = None) -> None:
        self.clock = clock
        self.kernel = kernel
        self.conns: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, tuple[str, ...]] = {}
        self.keys: dict[str, str] = {}
        self.sas: dict[str, dict[str, Any]] = {}  # conn -> its one IKE_SA, as list-sas shows it
        self.refuse: dict[tuple[str, str], str] = {}
        self.unreachable = False
        self.running = True
        self.fail_after_writes: int | None = None
        self.writes: list[Write] = []
        self.listings: list[float] = []  # when list-sas ran
        self.sessions = 0  # command sessions opened
        self.connect_attempts: list[float] = []
        # The block policies in the kernel when each connection was first loaded (protection
        # before load; FakeXfrm.charon_at_removal is the other half).
        self.kernel_at_first_load: dict[str, frozenset[PolicySpec]] = {}
        self.events_sessions: list[FakeEvents] = []
        self._started = clock.wall()
        self._open = False
        self.busy = False

    # what the test does
    def stop(self) -> None:
        """charon exits: sessions end, everything loaded is gone."""
        self.running = False
        self._open = False
        self.conns, self.shared, self.keys, self.sas = {}, {}, {}, {}
        for events in self.events_sessions:
            events.lose("charon closed the event session")

    def start(self) -> None:
        self.running = True
        self._started = self.clock.wall()

    def establish(self, conn: str, uniqueid: int) -> dict[str, Any]:
        """An IKE_SA of `conn` with each of its children installed; returns the ike-updown
        event's body."""
        children = self.conns.get(conn, {}).get("children", {})
        sa = {
            "uniqueid": str(uniqueid),
            "state": "ESTABLISHED",
            "remote-host": naming.remote_of_conn(conn),
            "child-sas": {
                f"{child}-{uniqueid}-{i}": {
                    "name": child,
                    "uniqueid": str(uniqueid * 100 + i),
                    "state": "INSTALLED",
                }
                for i, child in enumerate(sorted(children))
            },
        }
        self.sas[conn] = sa
        return {conn: sa, "up": "yes"}

    def writes_since(self, index: int) -> list[Write]:
        return [w for w in self.writes[index:] if not w.refused]

    # the adapter's surface
    @property
    def connected(self) -> bool:
        return self._open

    def connect(self) -> None:
        self._open = False
        self.connect_attempts.append(self.clock())
        if not self.running or self.unreachable:
            raise CharonUnreachable("connect", "No such file or directory")
        self._open = True
        self.sessions += 1

    def close(self) -> None:
        self._open = False

    def _require(self, command: str) -> None:
        if not self._open:
            self.connect()
        if not self.running or self.unreachable:
            self._open = False
            raise CharonUnreachable(command, "Connection closed")

    def version(self) -> dict[str, Any]:
        self._require("version")
        return {"daemon": "charon-systemd", "version": "5.9.8"}

    def stats(self) -> dict[str, Any]:
        self._require("stats")
        return {"uptime": {"since": self._started.strftime("%b %d %H:%M:%S %Y")}}

    def get_algorithms(self) -> dict[str, Any]:
        self._require("get-algorithms")
        raise CharonError("get-algorithms", "unknown command")  # nothing is judged lacking

    def owned_conns(self) -> frozenset[str]:
        self._require("get-conns")
        return frozenset(name for name in self.conns if naming.is_owned_conn(name))

    def owned_shared(self) -> frozenset[str]:
        self._require("get-shared")
        return frozenset(i for i in self.shared if naming.is_owned_shared(i))

    def key_ids(self) -> frozenset[str]:
        self._require("get-keys")
        return frozenset(self.keys.values())

    def list_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        self._require("list-sas")
        self.listings.append(self.clock())
        return [{conn: sa} for conn, sa in sorted(self.sas.items()) if ike in (None, conn)]

    def listed_sas(self) -> dict[str, tuple[IkeSa, ...]]:
        return parse_sas(self.list_sas())

    def failures(self, sas: Mapping[str, tuple[IkeSa, ...]]) -> dict[str, Any]:
        return {}

    def carry_out(self, actions: Sequence[Action]) -> list[dict[str, Any] | CharonError]:
        return self.pipeline([request_of(action) for action in actions])

    def pipeline(
        self, requests: Sequence[tuple[str, Mapping[str, Any] | bytes]]
    ) -> list[dict[str, Any] | CharonError]:
        outcomes: list[dict[str, Any] | CharonError] = []
        for command, message in requests:
            self._require(command)
            outcomes.append(self._write(command, message))
        return outcomes

    def _write(
        self, command: str, message: Mapping[str, Any] | bytes
    ) -> dict[str, Any] | CharonError:
        if self.fail_after_writes is not None:
            if self.fail_after_writes <= 0:
                self._open = False
                self.fail_after_writes = None
                raise CharonUnreachable(command, "Connection reset by peer")
            self.fail_after_writes -= 1
        if isinstance(message, bytes):
            ((target, body),) = _decoded(Message.deserialize(FiniteStream(message))).items()
        else:
            target, body = str(message.get("id", message.get("name", ""))), dict(message)
        refusal = self.refuse.get((command, target))
        self.writes.append(Write(command, target, self.clock(), refusal or ""))
        if refusal is not None:
            return CharonError(command, refusal)
        if command == "load-conn":
            if target not in self.conns and target not in self.kernel_at_first_load:
                held = frozenset(self.kernel.policies) if self.kernel else frozenset()
                self.kernel_at_first_load[target] = held
            self.conns[target] = body
        elif command == "load-shared":
            self.shared[target] = tuple(body.get("owners", ()))
        elif command == "unload-shared":
            if self.shared.pop(target, None) is None:
                return CharonError(command, f"shared secret '{target}' not found")
        elif command == "unload-conn":
            if self.conns.pop(target, None) is None:
                return CharonError(command, f"unload: connection '{target}' not found")
        elif command == "terminate":
            if self.sas.pop(target, None) is None:
                return CharonError(command, "no matching SAs to terminate found")
        elif command == "load-key":
            self.keys[target] = f"id-{len(self.keys)}"
            return {"id": self.keys[target]}
        elif command == "unload-key":
            self.keys = {k: v for k, v in self.keys.items() if v != target}
        return {}

    def _call(self, command: str, message: Mapping[str, Any]) -> dict[str, Any]:
        (outcome,) = self.pipeline([(command, message)])
        if isinstance(outcome, CharonError):
            raise outcome
        return outcome

    def unload_conn(self, name: str) -> None:
        self._call("unload-conn", {"name": name})

    def terminate_ike(self, conn: str) -> None:
        try:
            self._call("terminate", {"name": conn})
        except CharonError as exc:
            if "no matching" not in exc.errmsg:
                raise

    def unload_shared(self, secret_id: str) -> None:
        self._call("unload-shared", {"id": secret_id})

    def load_key(self, spec: KeySpec) -> str:
        return str(self._call("load-key", {"id": spec.digest}).get("id", ""))

    def unload_key(self, key_id: str) -> None:
        self._call("unload-key", {"id": key_id})


def _decoded(value: Any) -> Any:
    """A VICI message as charon would read it, bytes as str."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, Mapping):
        return {str(_decoded(k)): _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


class FakeEvents:
    """charon's event session: `emit` queues an event, `lose` ends the session."""

    def __init__(self, charon: FakeCharon) -> None:
        self.charon = charon
        self.registered: tuple[str, ...] = ()
        self._open = False
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._lost: str | None = None
        self.subscriptions = 0
        charon.events_sessions.append(self)

    def emit(self, name: str, body: dict[str, Any]) -> None:
        if self._open:
            self._queue.append((name, body))

    def lose(self, why: str) -> None:
        if self._open:
            self._lost = why

    @property
    def connected(self) -> bool:
        return self._open

    def connect(
        self, required: Sequence[str] = (), alternatives: Sequence[Sequence[str]] = ()
    ) -> tuple[str, ...]:
        self.close()
        if not self.charon.running or self.charon.unreachable:
            raise CharonUnreachable("events", "No such file or directory")
        known = {"ike-updown", "child-updown", "ike-rekey", "child-rekey", "log"}  # 5.9.8
        for name in required:
            if name not in known:
                raise CharonError("register", f"charon does not know the {name} event")
        chosen = [next((n for n in group if n in known), None) for group in alternatives]
        self.registered = (*required, *(n for n in chosen if n is not None))
        self._open = True
        self.subscriptions += 1
        return self.registered

    def close(self) -> None:
        self._open = False
        self._queue = []
        self._lost = None
        self.registered = ()

    def wait(self, poller: FakePoller) -> None:
        if self._open and (self._queue or self._lost):
            poller.immediate_wake()

    def receive(self, limit: int = 1000) -> Received:
        if not self._open:
            return Received(lost="not connected")
        events, self._queue = self._queue[:limit], self._queue[limit:]
        lost = self._lost
        if lost is not None:
            self.close()
        return Received(events, lost)


# -- the kernel ---------------------------------------------------------------------------------


class FakeXfrm:
    """The kernel's XFRM policy table, ours and `foreign` ones.

    `broken = "why"` makes netlink fail for everything (XfrmError); `refuse_add` holds policies
    whose addition the kernel refuses (XfrmApplyError, the others still applied, as the real
    adapter does)."""

    def __init__(self, charon: FakeCharon | None = None) -> None:
        self.policies: set[PolicySpec] = set()
        self.foreign = 0
        self.broken: str | None = None
        self.refuse_add: set[PolicySpec] = set()
        self.refuse_remove: set[PolicySpec] = set()
        self.writes: list[tuple[str, PolicySpec, float]] = []
        self.applies: list[float] = []  # when apply was called, failing or not
        self.listings = 0
        # The connections charon held when each policy was last removed.
        self.charon_at_removal: dict[PolicySpec, frozenset[str]] = {}
        self.charon = charon
        self.clock: FakeClock | None = None

    def _check(self) -> None:
        if self.broken is not None:
            raise XfrmError(f"netlink: {self.broken}")

    def policy_count(self) -> str:
        self._check()
        ins = sum(1 for p in self.policies if p.direction == "in")
        return f"{ins} {len(self.policies) - ins + self.foreign} 0 0 0 0"

    def observe(self) -> frozenset[PolicySpec]:
        self._check()
        self.listings += 1
        return frozenset(self.policies)

    def apply(self, add: Iterable[PolicySpec] = (), remove: Iterable[PolicySpec] = ()) -> None:
        now = self.clock() if self.clock else 0.0
        self.applies.append(now)
        self._check()
        adds = list(add)
        added_keys = {spec.key() for spec in adds}
        removes = [spec for spec in remove if spec.key() not in added_keys]
        failures = []
        for spec in adds:
            if spec in self.refuse_add:
                failures.append(PolicyFailure(Operation("add", spec), "Operation not permitted"))
                continue
            self.policies = {p for p in self.policies if p.key() != spec.key()} | {spec}
            self.writes.append(("add", spec, now))
        held = frozenset(self.charon.conns) if self.charon else frozenset()
        for spec in removes:
            if spec in self.refuse_remove:
                failures.append(PolicyFailure(Operation("remove", spec), "Device or resource busy"))
                continue
            self.policies.discard(spec)
            self.charon_at_removal[spec] = held
            self.writes.append(("remove", spec, now))
        if failures:
            raise XfrmApplyError(failures, len(adds) + len(removes))

    def read_xfrm_stat(self) -> dict[str, int]:
        return {}

    def policies_text(self) -> str:
        return ""

    def states_text(self) -> str:
        return ""


# -- the whole --------------------------------------------------------------------------------


class Spinning(AssertionError):
    """The Daemon asked to be woken at once, again and again, with nothing to do."""


@dataclass
class World:
    """A Daemon on fakes, driven like cli.run_loop drives the real one."""

    reconcile_interval: float = 15.0
    protection_linger: float = 30.0
    with_events: bool = True
    clock: FakeClock = field(default_factory=FakeClock)
    wakeups: list[float] = field(default_factory=list)
    last_timeout: float | None = None

    def __post_init__(self) -> None:
        self.ovsdb = FakeOvsdb()
        self.xfrm = FakeXfrm()
        self.xfrm.clock = self.clock
        self.charon = FakeCharon(self.clock, kernel=self.xfrm)
        self.xfrm.charon = self.charon
        self.events = FakeEvents(self.charon) if self.with_events else None
        self._build_daemon()

    def _build_daemon(self) -> None:
        settings = Settings(
            database="unix:/fake/db.sock",
            vici_path="/fake/charon.vici",
            reconcile_interval=self.reconcile_interval,
            protection_linger=self.protection_linger,
        )
        self.daemon = Daemon(
            settings,
            self.ovsdb,  # type: ignore[arg-type]
            self.charon,  # type: ignore[arg-type]
            self.xfrm,  # type: ignore[arg-type]
            clock=self.clock,
            wall_clock=self.clock.wall,
            events=self.events,  # type: ignore[arg-type]
        )

    def restart_daemon(self, *, ovsdb_ready: bool = True, clean: bool = True) -> None:
        """A new Daemon (and OVSDB and event sessions) on the same charon and kernel, as after
        `systemctl restart`: OVSDB holds the same rows. A clean exit hands the new daemon the
        old one's record, as cli.py does through a file (`clean=False`: a crash, no record)."""
        record = self.daemon.hand_over() if clean else None
        server = self.ovsdb.server
        self.ovsdb = FakeOvsdb(server)
        self.ovsdb.ready = ovsdb_ready
        if self.events is not None:
            self.charon.events_sessions.remove(self.events)
            self.events = FakeEvents(self.charon)
        self.charon.close()
        self._build_daemon()
        if record is not None:
            self.daemon.take_over(record)

    def turn(self) -> float | None:
        """One turn of the loop: run(), then wait(); returns the seconds it would sleep."""
        self.wakeups.append(self.clock())
        self.daemon.run()
        poller = FakePoller()
        self.daemon.wait(poller)
        self.last_timeout = poller.timeout
        return poller.timeout

    def run_for(self, seconds: float) -> None:
        """Turn the loop, letting time pass as the Daemon asks, until `seconds` have passed
        (the last sleep is cut short at the end). A sleep of 0 still lets a millisecond pass,
        like a real poll() does; many of them in a row are a spin and fail the test."""
        end = self.clock() + seconds
        zeros = 0
        while True:
            timeout = self.turn()
            zeros = zeros + 1 if timeout == 0 else 0
            if zeros > 50:
                raise Spinning(f"the daemon keeps waking at once at t={self.clock():.3f}")
            if self.clock() >= end:
                return
            step = end - self.clock() if timeout is None else max(timeout, 0.001)
            self.clock.advance(min(step, end - self.clock()))

    def settle(self) -> None:
        """A few turns at this instant: what follows a change at once."""
        self.run_for(0.01)

    def states(self) -> dict[str, str]:
        return {name: status.state.value for name, status in self.daemon.statuses().items()}
