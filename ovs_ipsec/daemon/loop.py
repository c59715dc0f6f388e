"""The `Daemon`: one ovs.poller loop over OVSDB, charon and the control socket. The only mutable
state of the program lives here; decisions are made by the pure core (parse, plan, reconcile,
status) and carried out through the adapters it is handed.

May import: core.*, adapters.*, daemon.*, errors, ovs, stdlib (never the tools).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ovs.poller
import ovs.vlog

from ovs_ipsec.adapters import heap
from ovs_ipsec.adapters.charon import (
    Charon,
    Request,
    load_conn_request,
    load_shared_request,
    unload_shared_request,
)
from ovs_ipsec.adapters.events import ALERT_EVENT, LOG_EVENT, REQUIRED_EVENTS, Events
from ovs_ipsec.adapters.files import read_files
from ovs_ipsec.adapters.ovsdb import Ovsdb
from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core import handover, naming
from ovs_ipsec.core.block_policies import (
    FAIL_CLOSED_PRIORITY,
    PolicySpec,
    explain_protection,
    policies_to_add_and_remove,
    policies_to_add_and_remove_for_change,
)
from ovs_ipsec.core.capabilities import (
    Lack,
    Preflight,
    conn_needs,
    parse_capabilities,
    tunnel_needs,
)
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.connections import ConnSpec, Desired
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.desired import Delta, Planner
from ovs_ipsec.core.failures import FailureCounts
from ovs_ipsec.core.ike_options.settings import NO_SETTINGS
from ovs_ipsec.core.model import AuthMode, Config
from ovs_ipsec.core.reconcile import (
    Action,
    Applied,
    LoadConn,
    LoadKey,
    LoadShared,
    TerminateIke,
    UnloadConn,
    UnloadKey,
    UnloadShared,
    adopt,
    diff,
    record,
)
from ovs_ipsec.core.sas import IkeSa, fold_sa_event, merge_listing, parse_sas
from ovs_ipsec.core.status import (
    Protection,
    StateKey,
    StatusBook,
    Tracker,
    TunnelStatus,
    View,
    fold,
    protection_by_tunnel,
)
from ovs_ipsec.errors import CharonError, CharonUnreachable, XfrmError

if TYPE_CHECKING:
    from ovs_ipsec.adapters.metrics import MetricsSnapshot

vlog = ovs.vlog.Vlog("ovs-monitor-ipsec")

MAX_BACKOFF = 8.0
BULK_ACTIONS = 10
LINGER_GRAIN = 5.0
LISTING_EVERY = 20
# Every so many checks, every tunnel's state is folded from scratch rather than per changed
# connection: a safety net that costs milliseconds a few times an hour.
FULL_REFOLD_EVERY = 20
_PLURAL = {
    "LoadShared": "secrets loaded",
    "LoadKey": "keys loaded",
    "LoadConn": "connections loaded",
    "TerminateIke": "IKE_SAs closed",
    "UnloadConn": "connections unloaded",
    "UnloadShared": "secrets unloaded",
    "UnloadKey": "keys unloaded",
}
# list-sas after events at most this often: a burst of events costs one listing.
SAS_MIN_INTERVAL = 0.5
# Listings that may still miss an SA an event announced (noblock skips busy SAs) before the
# listing is believed.
SAS_RECHECKS = 10


@dataclass(frozen=True)
class Settings:
    database: str
    vici_path: str
    command_timeout: float = 5.0
    reconcile_interval: float = 15.0
    unixctl_path: str | None = None
    use_default_crypto: bool = False
    # Fail-closed blocks of a port deleted from OVSDB stay this long: OVS re-creates a re-added
    # port (or all ports, when it restarts) from the same OVSDB transaction that tells us, and
    # sends at once; without the linger its first packets would leave in clear.
    protection_linger: float = 30.0


@dataclass
class Health:
    """What the control socket reports about the daemon's own connections."""

    charon_reachable: bool = False
    charon_error: str = ""
    charon_version: str = ""
    charon_since: str = ""
    passes: int = 0
    last_pass_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    xfrm_error: str = ""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        ovsdb: Ovsdb,
        charon: Charon,
        xfrm: Xfrm,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        events: Events | None = None,
    ) -> None:
        self.settings = settings
        self.ovsdb = ovsdb
        self.charon = charon
        self.xfrm = xfrm
        # charon's event session (None: SAs are only polled); its outcomes and the last list-sas.
        self.events = events
        self.tracker = Tracker()
        self.sas: dict[str, tuple[IkeSa, ...]] = {}
        self._sas_at: float | None = None
        self._sas_due: float | None = None
        self._sas_expected: dict[tuple[str, int], bool] = {}
        self._sas_rechecks = 0
        self.clock = clock
        self.wall_clock = wall_clock
        # Parsed OVSDB contents and desired state, updated in proportion to each change.
        self.planner = Planner(read_files, use_default_crypto=settings.use_default_crypto)
        # What changed since the last pass that completed (the next pass diffs only that).
        self.pending = Delta()
        self._full_diff = True
        self._policy_fingerprint: str | None = None
        self._checks_since_listing = 0
        self._lingering: dict[PolicySpec, float] = {}  # fail-closed blocks kept until then
        # (desired, in the kernel) as last found equal: a periodic check that finds the same
        # desired set and no change in the kernel since skips comparing thousands of policies.
        self._in_line: tuple[int, int] | None = None
        self.applied = Applied()
        # Our block policies in the kernel as last observed or applied, updated in place (a copy
        # per change would cost a pass over thousands); None: look first. The counter moves
        # with every change to them.
        self.policies: set[PolicySpec] | None = None
        self._policies_moved = 0
        self.health = Health()
        self.exiting = False
        self.cleanup_on_exit = False
        self.first_pass_done = False
        # True once a pass completed with charon reachable: everything desired was attempted.
        self.converged_once = False
        self._dirty = False
        self._check_due = True
        self._next_check = 0.0
        self._retry_at = 0.0
        self._backoff = 0.0
        self._reported_invalid: dict[str, str] = {}
        self._reported_caveats: dict[str, str] = {}
        self._reported_warnings: tuple[str, ...] = ()
        # Tunnel states are refolded per connection, for the connections whose inputs may have
        # moved since the last refold (None: all of them); the changes wait to be logged.
        self._book = StatusBook()
        self._stale: set[str] | None = None
        self._unlogged: dict[str, tuple[StateKey | None, StateKey | None]] = {}
        self._checks = 0
        self.failures = FailureCounts()
        # What the connected charon can do, judging each connection's needs (None: not asked
        # yet); the capabilities it lacks, logged once per charon, and the credentials whose
        # key algorithms it judges.
        self.preflight: Preflight | None = None
        self.lacks: dict[str, Lack] = {}
        self._judged_credentials: Credentials | None = None
        # The previous daemon's record (core/handover.py), until the first listing of charon.
        self._handover: handover.Handover | None = None

    @property
    def config(self) -> Config:
        return self.planner.config

    @property
    def desired(self) -> Desired:
        return self.planner.desired

    @property
    def desired_policies(self) -> AbstractSet[PolicySpec]:
        return self.planner.policies

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """One turn: charon's events, then OVSDB, and reconcile when something changed or a
        check is due; then SAs and tunnel states."""
        self._run_events()
        self.ovsdb.run()
        if not self.ovsdb.ready:
            return
        if self.ovsdb.needs_full_read:
            self._absorb(self._read_everything(reread_files=False))
        elif self.ovsdb.changed():
            rows, other_config = self.ovsdb.changes()
            self._absorb(self.planner.update(rows, other_config, self.wall_clock()))
        now = self.clock()
        if now >= self._next_check and not self._check_due:
            self._check_due = True
            self._checks += 1
            if self._checks % FULL_REFOLD_EVERY == 0:
                self._touch(None)  # every tunnel's state from scratch, now and then
            # Without events for what charon does on its own (expiry, DPD), the SAs are listed
            # at each check too: in the same wake-up, not in one of their own.
            self._schedule_sas()
            # The periodic check re-reads the certificate files, which may have changed at the
            # same paths. OVSDB needs no re-read: the IDL reports every row change, and after a
            # reconnect (when it cannot) the whole contents are read again.
            self._absorb(
                self.planner.update({}, self.ovsdb.other_config(), self.wall_clock(),
                                    reread_files=True)
            )  # fmt: skip
        if self._lingering and now >= min(self._lingering.values()):
            self._dirty = True
            self.pending.policies_removed |= {
                spec for spec, at in self._lingering.items() if now >= at
            }
        if (self._dirty or self._check_due) and now >= self._retry_at:
            self.reconcile()
        listed_at = self._sas_at
        self._run_sas()
        if self._stale is None or self._stale:
            self._log_state_changes()
        self.failures.settle(self.clock())
        if self._sas_at != listed_at:
            heap.trim()  # a listing of every SA, decoded and dropped

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.ovsdb.wait(poller)
        if self.events is not None:
            self.events.wait(poller)
        now = self.clock()
        # A check already due waits for its retry time only: the check time has passed, and
        # waking for it again would spin until charon is back.
        deadline = self._retry_at if self._check_due else self._next_check
        if self._dirty:
            deadline = min(deadline, self._retry_at)
        sas_due = self._sas_deadline()
        if sas_due is not None:
            deadline = min(deadline, sas_due)
        if self._lingering:
            deadline = min(deadline, min(self._lingering.values()))
        failure_due = self.failures.deadline()
        if failure_due is not None and self.ovsdb.ready:  # run() settles them only then
            deadline = min(deadline, failure_due)
        poller.timer_wait(max(0, int((deadline - now) * 1000)))

    def _read_everything(self, *, reread_files: bool) -> Delta:
        rows = self.planner.reset_rows(self.ovsdb.all_rows())
        return self.planner.update(
            rows, self.ovsdb.other_config(), self.wall_clock(), reread_files=reread_files
        )

    def _absorb(self, delta: Delta) -> None:
        if self.planner.warnings != self._reported_warnings:
            for warning in self.planner.warnings:
                vlog.warn(f"other_config: {warning}")
            self._reported_warnings = self.planner.warnings
        if delta:
            self.pending.merge(delta)
            self._dirty = True
            self._touch(delta.conns)
        if self.planner.credentials is not self._judged_credentials:
            self._judge_credentials()

    def request_refresh(self) -> None:
        """Re-read the certificate files, re-list charon and converge now (the `refresh`
        command); the SAs are listed again too."""
        self._check_due = False
        self._next_check = 0.0
        self._retry_at = 0.0
        self.request_sas()

    # -- one reconcile pass -----------------------------------------------------------------

    def reconcile(self) -> None:
        started = self.clock()
        self.health.passes += 1
        pass_id = self.health.passes
        # Our own changes, and the traps charon installs for them, move the kernel's policy
        # counts. When nothing else moved them since they were last read, they are read again
        # after this pass, so that the next check does not list every policy for our own doing.
        follow = (
            not self._check_due
            and self._policy_fingerprint is not None
            and self._policy_count() == self._policy_fingerprint
        )
        # Protection first, whatever charon's state: new block policies are in the kernel before
        # anything is loaded into charon, and old ones leave only after charon's side changed.
        to_add, to_remove = self._protection_diff(pass_id)
        self._apply_policies(pass_id, add=to_add)
        try:
            if (self._check_due or not self.charon.connected) and self._sync_with_charon(pass_id):
                self._full_diff = True  # charon's listing differs from what we believed
            if self._check_due and (
                self.health.failures
                or set(self.applied.conns) - set(self.desired.conns)
                or set(self.applied.shared) - set(self.desired.shared)
            ):
                self._full_diff = True  # retry what charon refused or left behind
            if self._full_diff:
                actions = diff(self.desired, self.applied)
            else:
                actions = diff(self.desired, self.applied, self.pending.conns, self.pending.shared)
            self._execute(pass_id, self._hold_back(actions))
        except CharonUnreachable as exc:
            self._full_diff = True
            self._charon_lost(pass_id, exc)
        else:
            self.pending = Delta()
            self._full_diff = False
            self.converged_once = True
            self._dirty = False
            self._check_due = False
            self._backoff = 0.0
            self._next_check = self.clock() + self.settings.reconcile_interval
        finally:
            self._apply_policies(pass_id, remove=to_remove)
            if follow and self.policies is not None:
                self._policy_fingerprint = self._policy_count()
            self.first_pass_done = True
            self.health.last_pass_seconds = self.clock() - started
            self._log_invalid_changes()
            # Whatever the pass dropped (thousands of listed objects at a check, the messages of a
            # bulk load, a change's few) goes back to the kernel; nothing to give back costs
            # microseconds.
            heap.trim()

    def _protection_diff(
        self, pass_id: int
    ) -> tuple[tuple[PolicySpec, ...], tuple[PolicySpec, ...]]:
        if self.policies is None or self._check_due:
            try:
                # Listing thousands of policies costs; the kernel's counters are a cheap
                # fingerprint of whether anything changed since the last listing.
                fingerprint = self.xfrm.policy_count()
                self._checks_since_listing += 1
                # Counters miss a change that keeps them (one of ours replaced in place by
                # someone's `ip xfrm policy update`), so every LISTING_EVERY-th check lists anyway.
                if (
                    self.policies is None
                    or fingerprint != self._policy_fingerprint
                    or self._checks_since_listing >= LISTING_EVERY
                ):
                    self._checks_since_listing = 0
                    observed = self.xfrm.observe()
                    if self.policies is not None and observed != self.policies:
                        vlog.warn(
                            f"[{pass_id}] protection policies changed behind our back; restoring"
                        )
                    # The wanted policies' own objects stand for the equal observed ones, so
                    # that thousands of policies are not held twice.
                    wanted = self.desired_policies
                    self.policies = {spec for spec in wanted if spec in observed} | {
                        spec for spec in observed if spec not in wanted
                    }
                    self._policies_moved += 1
                    self._policy_fingerprint = self.xfrm.policy_count()
            except XfrmError as exc:
                self._xfrm_failed(pass_id, "listing policies", exc)
                # Unknown kernel state: (re)add everything desired, remove nothing.
                return tuple(sorted(self.desired_policies)), ()
            assert self.policies is not None
            moves = (self.planner.policies_version, self._policies_moved)
            if self._in_line == moves:
                to_add, to_remove = (), ()  # nothing moved since they were found equal
            else:
                to_add, to_remove = policies_to_add_and_remove(self.desired_policies, self.policies)
                if not to_add and not to_remove:
                    self._in_line = moves
        else:
            to_add, to_remove = policies_to_add_and_remove_for_change(
                self.policies, self.pending.policies_added, self.pending.policies_removed
            )
        of_deleted = self.pending.policies_of_deleted
        self.pending.policies_added = set()
        self.pending.policies_removed = set()
        self.pending.policies_of_deleted = set()
        return tuple(to_add), self._linger(to_remove, of_deleted)

    def _policy_count(self) -> str | None:
        try:
            return self.xfrm.policy_count()
        except XfrmError:
            return None

    def _linger(
        self, to_remove: tuple[PolicySpec, ...], of_deleted: set[PolicySpec]
    ) -> tuple[PolicySpec, ...]:
        """The fail-closed blocks of ports deleted from OVSDB leave only `protection_linger`
        seconds later; every other removal (a port made plain, fail-open set, a remote_ip
        changed) is what the operator asked for, and happens now."""
        now = self.clock()
        for spec in [s for s in self._lingering if self.planner.wants(s)]:
            del self._lingering[spec]
        remove = []
        for spec in to_remove:
            if (
                spec.priority != FAIL_CLOSED_PRIORITY
                or self.settings.protection_linger <= 0
                or (spec not in of_deleted and spec not in self._lingering)
            ):
                remove.append(spec)
                continue
            # Deadlines are rounded up to LINGER_GRAIN, so a burst of removals expires in one
            # pass instead of waking the loop once per port.
            due = now + self.settings.protection_linger
            deadline = self._lingering.setdefault(
                spec, math.ceil(due / LINGER_GRAIN) * LINGER_GRAIN
            )
            if now >= deadline:
                del self._lingering[spec]
                remove.append(spec)
        for spec, deadline in list(self._lingering.items()):
            if now >= deadline and spec not in remove and spec in (self.policies or ()):
                del self._lingering[spec]
                remove.append(spec)
        return tuple(remove)

    def _apply_policies(
        self,
        pass_id: int,
        add: tuple[PolicySpec, ...] = (),
        remove: tuple[PolicySpec, ...] = (),
    ) -> None:
        if not add and not remove:
            return
        try:
            self.xfrm.apply(add=add, remove=remove)
        except XfrmError as exc:
            self._xfrm_failed(pass_id, "changing policies", exc)
            self.policies = None  # look again next pass
            return
        if self.policies is None:
            self.policies = set()
        self.policies.update(add)
        self.policies.difference_update(remove)
        self._policies_moved += 1
        self._policy_fingerprint = None  # our own change: list again at the next check
        self.health.xfrm_error = ""
        verb = "installed" if add else "removed"
        vlog.info(
            f"[{pass_id}] {verb} {len(add or remove)} protection policies "
            f"({len(self.policies)} in place)"
        )
        if len(add or remove) > BULK_ACTIONS:
            described = "; ".join(spec.describe() for spec in add or remove)
            vlog.dbg(f"[{pass_id}]   {verb}: {described}")
        else:
            for spec in add or remove:
                vlog.dbg(f"[{pass_id}]   {verb}: {spec.describe()}")

    def _xfrm_failed(self, pass_id: int, what: str, exc: XfrmError) -> None:
        self.health.xfrm_error = str(exc)
        self._dirty = True
        self._retry_at = max(self._retry_at, self.clock() + 1.0)
        vlog.err(f"[{pass_id}] kernel XFRM: {what} failed: {exc}")

    def _sync_with_charon(self, pass_id: int) -> bool:
        """Re-list our objects in charon: after a (re)connect, a charon restart or an external
        unload (`swanctl --load-all`), the believed state must follow what charon really has."""
        changed = False
        if not self.charon.connected:
            changed = True
            self.charon.connect()
            version = self.charon.version()
            self.health.charon_version = f"{version.get('daemon', '')} {version.get('version', '')}"
            vlog.info(
                f"[{pass_id}] connected to charon ({self.health.charon_version.strip()}) "
                f"at {self.settings.vici_path}"
            )
        stats = self.charon.stats()
        since = str(stats.get("uptime", {}).get("since", ""))
        restarted = handover.charon_restarted(self.health.charon_since, since)
        if restarted:
            vlog.warn(f"[{pass_id}] charon restarted (up since {since}); reloading everything")
            self.applied = Applied()
            changed = True
        self.health.charon_since = since
        if self._handover is not None:
            self._take_handover(pass_id, since)
        if changed or self.preflight is None:
            self._ask_capabilities(pass_id, stats)
        key_ids = self.charon.key_ids() if self.applied.keys else frozenset()
        listed = adopt(self.charon.owned_conns(), self.charon.owned_shared(), self.applied, key_ids)
        lost = (set(self.applied.conns) - set(listed.conns)) | (
            set(self.applied.shared) - set(listed.shared)
        )
        if lost:
            vlog.warn(f"[{pass_id}] {len(lost)} of our objects vanished from charon; restoring")
        changed = changed or (
            set(listed.conns) != set(self.applied.conns)
            or set(listed.shared) != set(self.applied.shared)
            or listed.keys != self.applied.keys
        )
        self.applied = listed
        if changed or lost or not self.health.charon_reachable:
            self._touch(None)
        self.health.charon_reachable = True
        self.health.charon_error = ""
        return changed

    def _take_handover(self, pass_id: int, since: str) -> None:
        """Believe what the previous daemon's record vouches for: objects charon still lists
        with the content wanted now are not loaded again (see core/handover.py)."""
        record, self._handover = self._handover, None
        assert record is not None
        self.applied, why = handover.believed(
            record, self.health.charon_version, since, self.desired
        )
        if why:
            vlog.info(f"[{pass_id}] the previous daemon's record does not apply: {why}")
            return
        conns = sum(wire is not None for wire in self.applied.conns.values())
        shared = sum(s is not handover.PREVIOUS_SECRET for s in self.applied.shared.values())
        vlog.info(
            f"[{pass_id}] the previous daemon's record vouches for {conns} connections and "
            f"{shared} secrets as wanted now"
        )

    def _ask_capabilities(self, pass_id: int, stats: Mapping[str, object]) -> None:
        """What this charon can do (its algorithms; its plugins, from `stats`): each
        connection's needs are judged against it as its tunnels' states are folded."""
        try:
            algorithms = self.charon.get_algorithms()
        except CharonError as exc:
            vlog.warn(f"[{pass_id}] charon refused get-algorithms ({exc.errmsg}); what it lacks "
                      "is not checked")  # fmt: skip
            algorithms = None
        self.preflight = Preflight(
            parse_capabilities(algorithms, stats, self.health.charon_version),
            _key_algorithms(self.planner.credentials),
        )
        self._judged_credentials = self.planner.credentials
        self.lacks = {}
        self._touch(None)

    def _judge_credentials(self) -> None:
        """Certificates or a key of another algorithm (rare: a rotation) need other plugins."""
        credentials = self._judged_credentials = self.planner.credentials
        if self.preflight is None:
            return
        algorithms = _key_algorithms(credentials)
        if algorithms != self.preflight.key_algorithms:
            self.preflight = Preflight(self.preflight.caps, algorithms)
            self._touch(None)
            self._full_diff = True  # what is held back, or loaded, may change
            self._dirty = True

    def _lacking(self, conn: ConnSpec) -> tuple[Lack, ...]:
        """What charon lacks that `conn` needs (a lookup: each distinct need is judged once)."""
        if self.preflight is None:
            return ()
        tunnels = self.config.tunnels
        use_default_crypto = self.settings.use_default_crypto
        return self.preflight.lacking(conn_needs(
            tunnel_needs(self.planner.settings.get(name, NO_SETTINGS),
                         tunnels[name].auth is not AuthMode.PSK, use_default_crypto)
            for name in conn.tunnels if name in tunnels
        ))  # fmt: skip

    def _hold_back(self, actions: list[Action]) -> list[Action]:
        """Connections charon lacks something for stay out of it (unloaded if an earlier
        daemon loaded them): it could not negotiate them, and without their trap policies
        our block policies answer their plaintext (EPERM) instead of a doomed negotiation.
        The diff offers them again once charon has what they need."""
        if self.preflight is None:
            return actions
        kept: list[Action] = []
        for action in actions:
            if isinstance(action, LoadConn) and self._lacking(action.spec):
                if action.spec.name in self.applied.conns:
                    kept.append(UnloadConn(action.spec.name))
                continue
            kept.append(action)
        return kept

    def _report_lacks(self) -> None:
        """One ERROR line per capability the connected charon lacks and a tunnel needs."""
        if self.preflight is None:
            return
        for lack in self.preflight.drain():
            if lack.capability not in self.lacks:
                self.lacks[lack.capability] = lack
                vlog.err(f"{lack.describe()}; the tunnels that need it are failed")

    def _execute(self, pass_id: int, actions: list[Action]) -> None:
        failures: dict[str, str] = {
            conn: why for conn, why in self.health.failures.items() if conn in self.desired.conns
        }
        # A bulk load (start-up, a big transaction, charon's return) logs one summary line,
        # and the objects of each kind in one debug line (a log call per object would cost
        # more than charon's work on it).
        self._touch(name for name in map(_conn_loaded_or_not, actions) if name is not None)
        bulk = len(actions) > BULK_ACTIONS
        if actions:
            # Where the daemon's own work on a change ends and waiting for charon begins.
            vlog.dbg(f"[{pass_id}] {len(actions)} requests to charon")
        done: Counter[str] = Counter()
        names: dict[str, list[str]] = {}
        for action, outcome in self._outcomes(actions):
            if isinstance(outcome, CharonError):
                target = _target(action)
                vlog.warn(
                    f"[{pass_id}] charon refused {outcome.command} for {target}: {outcome.errmsg}"
                )
                if isinstance(action, (LoadConn, LoadShared)):
                    conn = action.spec.name if isinstance(action, LoadConn) else action.spec.conn
                    failures[conn] = f"charon refused {outcome.command}: {outcome.errmsg}"
                continue
            record(self.applied, action, outcome)
            self._forget_outcomes(action)
            if isinstance(action, LoadConn):
                failures.pop(action.spec.name, None)
            if bulk:
                names.setdefault(type(action).__name__, []).append(_target(action))
            else:
                vlog.info(f"[{pass_id}] {_describe(action)}")
            done[type(action).__name__] += 1
        before = self.health.failures
        self._touch(c for c in before.keys() | failures.keys() if before.get(c) != failures.get(c))
        self.health.failures = failures
        self._touch(self.tracker.touched())
        if bulk:
            summary = ", ".join(f"{n} {_PLURAL[kind]}" for kind, n in sorted(done.items()))
            vlog.info(f"[{pass_id}] {summary or 'nothing'} ({len(actions)} actions)")
            for kind, targets in sorted(names.items()):
                vlog.dbg(f"[{pass_id}] {_PLURAL[kind]}: {', '.join(targets)}")

    def _outcomes(self, actions: list[Action]) -> Iterator[tuple[Action, str | CharonError]]:
        """Carry out `actions` in order; per action, charon's refusal or "" (or the key id
        load-key returned). Runs of simple loads and unloads are pipelined: at thousands of
        tunnels the round trips, not charon's work, are what a sequential load waits for."""
        run: list[Action] = []
        for action in [*actions, None]:
            if isinstance(action, PIPELINED):
                run.append(action)
                continue
            if run:
                replies = self.charon.pipeline([_request(a) for a in run])
                for done, reply in zip(run, replies, strict=True):
                    yield done, reply if isinstance(reply, CharonError) else ""
                run = []
            if action is not None:
                try:
                    yield action, self._perform(action)
                except CharonError as exc:
                    yield action, exc

    def _perform(self, action: Action) -> str:
        """An action that is not pipelined (PIPELINED ones go through `_outcomes`)."""
        if isinstance(action, LoadKey):
            return self.charon.load_key(action.spec)
        if isinstance(action, UnloadKey):
            self.charon.unload_key(action.key_id)
        elif isinstance(action, TerminateIke):
            self.charon.terminate_ike(action.conn)
        elif isinstance(action, UnloadConn):
            # unload-conn removes the trap policies but leaves SAs set up through them. charon
            # may refuse to close an SA a thread still holds ("not all matching SAs could be
            # terminated"); the connection must go anyway, so that refusal is only logged.
            try:
                self.charon.terminate_ike(action.conn)
            except CharonError as exc:
                vlog.warn(f"charon refused terminate for {action.conn}: {exc.errmsg}")
            try:
                self.charon.unload_conn(action.conn)
            except CharonError as exc:
                if "not found" not in exc.errmsg:
                    raise
        return ""

    def _charon_lost(self, pass_id: int, exc: CharonUnreachable) -> None:
        self._touch(None)
        self.charon.close()
        # Both sessions go: a charon that came back is a new one (SAs and loaded state lost),
        # and events are subscribed again once the command session has resynchronised.
        if self.events is not None:
            self.events.close()
        self.tracker.reset()
        self.sas = {}
        self._sas_expected = {}
        self._sas_at = self._sas_due = None
        first = self.health.charon_reachable or not self.health.charon_error
        self.health.charon_reachable = False
        self.health.charon_error = exc.cause
        self._check_due = True
        self._dirty = True
        self._backoff = min(MAX_BACKOFF, max(0.25, self._backoff * 2))
        self._retry_at = self.clock() + self._backoff
        log = vlog.warn if first else vlog.dbg
        log(f"[{pass_id}] charon unreachable ({exc}); retrying in {self._backoff:g} s")

    def _log_invalid_changes(self) -> None:
        """Warn once per new reason, naming the interface and the key."""
        current = {name: bad.reason for name, bad in self.desired.invalid.items()}
        current.update(
            {f"other_config:{e.key}": e.reason for e in self.config.global_config.errors}
        )
        for name, reason in current.items():
            if self._reported_invalid.get(name) != reason:
                vlog.warn(f"{name}: invalid IPsec configuration: {reason}")
        self._reported_invalid = current
        caveats = self.planner.caveats
        if caveats != self._reported_caveats:
            for name, warning in caveats.items():
                if self._reported_caveats.get(name) != warning:
                    vlog.warn(f"{name}: {warning}")
            self._reported_caveats = dict(caveats)

    # -- reporting and exit -----------------------------------------------------------------

    def statuses(self) -> dict[str, TunnelStatus]:
        """Every port's whole status, folded now (O(tunnels): for status commands)."""
        return fold(self._view())

    def _touch(self, conns: Iterable[str] | None) -> None:
        """These connections' tunnel states may have moved (None: anyone's may have)."""
        if conns is None:
            self._stale = None
        elif self._stale is not None:
            self._stale.update(conns)

    def _view(self) -> View:
        charon_error = None
        if not self.health.charon_reachable:
            charon_error = self.health.charon_error or "not connected yet"
        return View(
            desired=self.desired,
            loaded=_LoadedAsDesired(self.applied.conns, self.desired.conns),
            refusals={c: why for c, why in self.health.failures.items() if c in self.desired.conns},
            charon_error=charon_error,
            sas=self.sas,
            outcomes=self.tracker.outcomes(),
            lacking=self._lacking if self.preflight is not None else None,
        )

    def _refold(self) -> None:
        stale, self._stale = self._stale, set()
        for name, (before, now) in self._book.refold(self._view(), stale).items():
            first = self._unlogged.get(name)
            self._unlogged[name] = (before if first is None else first[0], now)

    def explained_policies(self) -> dict[PolicySpec, tuple[str, ...]]:
        """Every protection policy wanted now, with the tunnels (or ipsec_skb_mark) it is for;
        the same config the planner protects, invalid tunnels found while planning included."""
        return explain_protection(dataclasses.replace(self.config, invalid=self.desired.invalid))

    def protection(self) -> dict[str, Protection]:
        """Per tunnel: are our block policies for it in the kernel? Looked up live (one
        `ip xfrm policy`), since someone may have flushed them since the last pass."""
        try:
            installed = self.xfrm.observe()
        except XfrmError as exc:
            vlog.warn(f"kernel XFRM: listing policies for status failed: {exc}")
            installed = self.policies or frozenset()
        names = set(self.config.tunnels) | set(self.desired.invalid)
        fail_open = self.config.global_config.fail_open
        return protection_by_tunnel(self.explained_policies(), installed, sorted(names), fail_open)

    # -- charon's events and SAs -------------------------------------------------------------

    def request_sas(self) -> None:
        """List the SAs as soon as the rate bound allows (status commands, `refresh`)."""
        self._schedule_sas()

    def sas_age(self) -> float | None:
        """Seconds since the last list-sas; None when there is none (charon not reachable)."""
        return None if self._sas_at is None else self.clock() - self._sas_at

    def sas_settled(self, since: float) -> bool:
        """True once the SAs were listed after `since`, or cannot be listed now."""
        if self._sas_at is not None and self._sas_at >= since:
            return True
        reachable = self.health.charon_reachable and self.charon.connected
        return not reachable or self.clock() - since > self.settings.command_timeout

    def _schedule_sas(self) -> None:
        now = self.clock()
        due = now if self._sas_at is None else max(now, self._sas_at + SAS_MIN_INTERVAL)
        self._sas_due = due if self._sas_due is None else min(self._sas_due, due)

    def _sas_deadline(self) -> float | None:
        if not (self.health.charon_reachable and self.charon.connected):
            return None
        if self.events is not None and not self.events.connected:
            return self.clock()  # subscribe (in _run_sas) as soon as the loop turns
        if self._sas_due is None and self._sas_at is None:
            return self.clock()  # never listed yet
        return self._sas_due

    def _run_events(self) -> None:
        if self.events is None or not self.events.connected:
            return
        received = self.events.receive()
        changed = False
        for name, body in received.events:
            if self.tracker.feed(name, body):
                changed = True
                self.sas, expected = fold_sa_event(self.sas, name, body)
                self._sas_expected.update(expected)
                self._touch(conn for conn, sa in body.items() if isinstance(sa, Mapping))
        self._touch(self.tracker.touched())
        if changed:
            self._sas_rechecks = 0
            self._schedule_sas()
        if received.lost is not None:
            # EOF here is how a charon restart or crash shows up first: at once, not at the
            # next request. Reconnection and the reload follow the usual back-off.
            self._charon_lost(self.health.passes, CharonUnreachable("events", received.lost))

    def _connect_events(self) -> None:
        assert self.events is not None
        try:
            registered = self.events.connect(REQUIRED_EVENTS, ((ALERT_EVENT, LOG_EVENT),))
        except CharonUnreachable as exc:
            self._charon_lost(self.health.passes, exc)
            return
        except CharonError as exc:
            vlog.err(f"charon's events unavailable ({exc.errmsg}); tunnel states are polled only")
            self.events = None
            return
        how = "alerts" if ALERT_EVENT in registered else "log messages (no alert event)"
        vlog.info(f"listening to charon's events ({', '.join(registered)}); failure causes "
                  f"from {how}")  # fmt: skip
        # Whatever happened before the subscription is only in charon's SAs: list them now.
        self._sas_at = None
        self._schedule_sas()

    def _run_sas(self) -> None:
        if not (self.health.charon_reachable and self.charon.connected) or self.charon.busy:
            return
        if self.events is not None and not self.events.connected:
            self._connect_events()
        deadline = self._sas_deadline()
        if deadline is None or self.clock() < deadline:
            return
        try:
            entries = self.charon.list_sas()
        except CharonUnreachable as exc:
            self._charon_lost(self.health.passes, exc)
            return
        except CharonError as exc:
            vlog.warn(f"charon refused list-sas: {exc.errmsg}")
            entries = []
        previous = self.sas
        self.sas, self._sas_expected = merge_listing(
            parse_sas(entries), self.sas, self._sas_expected
        )
        self._touch(
            c for c in previous.keys() | self.sas.keys() if previous.get(c) != self.sas.get(c)
        )
        self._sas_at = self.clock()
        self._sas_due = None
        if self._sas_expected:
            self._sas_rechecks += 1
            if self._sas_rechecks < SAS_RECHECKS:
                self._schedule_sas()
            else:
                self._sas_expected = {}

    def _forget_outcomes(self, action: Action) -> None:
        """A (re)loaded connection or secret makes earlier failures of that peer history."""
        if isinstance(action, LoadConn):
            self.tracker.forget(action.spec.name)
        elif isinstance(action, LoadShared):
            self.tracker.forget(action.spec.conn)
        elif isinstance(action, (TerminateIke, UnloadConn)):
            self.tracker.forget(action.conn)

    def _log_state_changes(self) -> None:
        """Each tunnel's state and reason, logged when they change (charon-wide causes are
        already logged once, so they go to the debug level)."""
        self._refold()
        self._report_lacks()
        changed, self._unlogged = self._unlogged, {}
        now_at = self.clock()
        for name, (before, now) in sorted(changed.items()):
            if now is not None and before is not None and before[:2] == now[:2]:
                continue  # back to what was last logged
            self.failures.change(name, before, now, now_at)
            if now is None:
                continue  # gone
            state, reason, cause = now
            log = vlog.dbg if cause in (Cause.CHARON, Cause.CONFIG, Cause.CAPABILITY) else vlog.info
            log(f"{name}: {state.value}" + (f": {reason}" if reason else ""))

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Everything /metrics reports, from state the daemon already holds (nothing here
        calls charon, so a scrape never waits for it)."""
        # prometheus-client costs about 10 MiB of memory: loaded only when metrics are served.
        from ovs_ipsec.adapters.metrics import MetricsSnapshot, TunnelMetrics

        statuses = self.statuses()
        installed = self.policies or frozenset()
        names = sorted(set(self.config.tunnels) | set(self.desired.invalid))
        protection = protection_by_tunnel(
            self.explained_policies(), installed, names, self.config.global_config.fail_open
        )
        tunnels = []
        for name, status in statuses.items():
            tunnel = self.config.tunnels.get(name)
            invalid = self.desired.invalid.get(name)
            kind = tunnel.type if tunnel else invalid.type if invalid else None
            children = [c for c in status.child_sas if c.state == "INSTALLED"]
            tunnels.append(
                TunnelMetrics(
                    interface=name,
                    remote_ip=(
                        tunnel.remote_ip if tunnel else invalid.remote_ip if invalid else None
                    )
                    or "",
                    type=kind.value if kind else "",
                    auth=tunnel.auth.value if tunnel else "",
                    state=status.state.value,
                    ike_sa_up=status.ike_sa is not None and status.ike_sa.state == "ESTABLISHED",
                    child_sas_up=len(children),
                    bytes_in=sum(c.bytes_in for c in status.child_sas),
                    bytes_out=sum(c.bytes_out for c in status.child_sas),
                    packets_in=sum(c.packets_in for c in status.child_sas),
                    packets_out=sum(c.packets_out for c in status.child_sas),
                    rekeys=status.child_rekeys,
                    protected=protection[name].active if name in protection else False,
                )
            )
        try:
            xfrm_stat = self.xfrm.read_xfrm_stat()
        except XfrmError:
            xfrm_stat = {}
        return MetricsSnapshot(
            tunnels=tuple(tunnels),
            failures=dict(self.failures.counts()),
            protection_policies=dict(Counter(spec.purpose or "other" for spec in installed)),
            xfrm_stat=xfrm_stat,
            certificate_expiry=certificate_expiry(
                self.planner.credentials, self.config, self.wall_clock()
            ),
            reconcile_seconds=self.health.last_pass_seconds,
            reconciles=self.health.passes,
            charon_up=self.health.charon_reachable,
            ovsdb_up=self.ovsdb.connected,
            charon_lacks={
                name: " or ".join(lack.packages) for name, lack in sorted(self.lacks.items())
            },
        )

    def memory_counts(self) -> dict[str, int]:
        """What the daemon holds, counted (`memory/show`)."""
        return {
            "ports": len(self.planner.rows),
            "tunnels": len(self.config.tunnels),
            "invalid": len(self.desired.invalid),
            "conns": len(self.desired.conns),
            "secrets": len(self.desired.shared),
            "policies": len(self.policies or ()),
            "lingering": len(self._lingering),
            "ike_sas": sum(len(sas) for sas in self.sas.values()),
        }

    def summary(self) -> str:
        """One line for systemd's STATUS= and logs."""
        self._refold()
        counts = Counter(state.value for state, _, _ in self._book.states().values())
        charon = "charon reachable" if self.health.charon_reachable else "charon unreachable"
        tunnels = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tunnels"
        return f"{tunnels}; {charon}"

    def take_over(self, record: bytes) -> None:
        """Start from the record the previous daemon left at its clean exit (`hand_over`); it is
        judged at the first listing of charon."""
        try:
            self._handover = handover.decode(record)
        except ValueError as exc:
            vlog.warn(f"ignoring the previous daemon's record ({exc}); loading everything")

    def hand_over(self) -> bytes | None:
        """The record for the next daemon, at a clean exit between two turns of the loop (no
        request in flight). None while charon is unreachable: requests it may have carried
        out unanswered leave its contents unknown."""
        if self._handover is not None:
            return handover.encode(self._handover)  # charon never listed: pass it on
        if not self.health.charon_reachable or not self.health.charon_since:
            return None
        return handover.encode(
            handover.handover_of(
                self.applied,
                self.health.charon_version,
                self.health.charon_since,
                secrets.token_bytes(handover.KEY_BYTES),
            )
        )

    def cleanup(self) -> None:
        """`exit` without --no-cleanup: take our connections, secrets and protection out."""
        try:
            if not self.charon.connected:
                self.charon.connect()
            conns = self.charon.owned_conns()
            shared = self.charon.owned_shared()
            for conn in sorted(conns):
                self._perform(UnloadConn(conn))
            for secret_id in sorted(shared):
                self.charon.unload_shared(secret_id)
            vlog.info(f"cleanup: unloaded {len(conns)} connections and {len(shared)} secrets")
        except (CharonError, CharonUnreachable) as exc:
            vlog.warn(f"cleanup incomplete: {exc}")
        try:
            owned = self.xfrm.observe()
            self.xfrm.apply(remove=owned)
            vlog.info(f"cleanup: removed {len(owned)} protection policies")
        except XfrmError as exc:
            vlog.warn(f"cleanup of protection policies incomplete: {exc}")


def _key_algorithms(credentials: Credentials) -> frozenset[str]:
    """The public key algorithms of the key and certificates in use ("RSA", "EC", ...)."""
    certs = [*credentials.cas, *credentials.remote_certs.values()]
    if credentials.local is not None:
        certs.append(credentials.local.cert)
    return frozenset(cert.key_algorithm for cert in certs)


def certificate_expiry(
    credentials: Credentials, config: Config, now: dt.datetime
) -> dict[tuple[str, str], float]:
    """Seconds until each certificate in use expires, by (role, file)."""
    g = config.global_config
    expiry: dict[tuple[str, str], float] = {}
    if credentials.local is not None and g.certificate:
        expiry[("certificate", g.certificate)] = (
            credentials.local.cert.not_after - now
        ).total_seconds()
    if credentials.cas and g.ca_cert:
        # The bundle works until its last CA expires.
        last = max(ca.not_after for ca in credentials.cas)
        expiry[("ca_cert", g.ca_cert)] = (last - now).total_seconds()
    for path, cert in credentials.remote_certs.items():
        expiry[("remote_cert", path)] = (cert.not_after - now).total_seconds()
    return expiry


PIPELINED = (LoadShared, LoadConn, UnloadShared)


class _LoadedAsDesired:
    """The connections charon holds as we want them, looked up one at a time (a set of them
    would cost a pass over every connection)."""

    def __init__(
        self, applied: Mapping[str, bytes | None], desired: Mapping[str, ConnSpec]
    ) -> None:
        self._applied = applied
        self._desired = desired

    def __contains__(self, name: object) -> bool:
        wire = self._applied.get(name)  # type: ignore[call-overload]
        spec = self._desired.get(name)  # type: ignore[call-overload]
        return wire is not None and spec is not None and (wire is spec.wire or wire == spec.wire)


def _conn_loaded_or_not(action: Action) -> str | None:
    """The connection whose place in charon this action changes, if any."""
    if isinstance(action, LoadConn):
        return action.spec.name
    if isinstance(action, (TerminateIke, UnloadConn)):
        return action.conn
    return None


def _request(action: Action) -> Request:
    if isinstance(action, LoadShared):
        return load_shared_request(action.spec)
    if isinstance(action, LoadConn):
        return load_conn_request(action.spec)
    assert isinstance(action, UnloadShared)
    return unload_shared_request(action.id)


def _target(action: Action) -> str:
    if isinstance(action, (LoadKey, UnloadKey)):
        return "the private key (other_config:private_key)"
    if isinstance(action, LoadConn):
        return action.spec.name
    if isinstance(action, LoadShared):
        return action.spec.id
    if isinstance(action, (TerminateIke, UnloadConn)):
        return action.conn
    return action.id


def _describe(action: Action) -> str:
    if isinstance(action, LoadKey):
        return "loaded the private key of other_config:private_key"
    if isinstance(action, UnloadKey):
        return f"unloaded the previous private key ({action.key_id})"
    if isinstance(action, LoadShared):
        return f"loaded shared secret {action.spec.id} (owners {', '.join(action.spec.owners)})"
    if isinstance(action, LoadConn):
        tunnels = ", ".join(action.spec.tunnels)
        return f"loaded connection {action.spec.name} (tunnels {tunnels})"
    if isinstance(action, TerminateIke):
        return f"closed IKE_SAs of {action.conn} so that new credentials take effect"
    if isinstance(action, UnloadConn):
        return f"unloaded connection {action.conn} (peer {naming.remote_of_conn(action.conn)})"
    return f"unloaded shared secret {action.id}"
