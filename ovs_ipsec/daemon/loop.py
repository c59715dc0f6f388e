"""The `Daemon`: one ovs.poller loop over OVSDB, charon and the control socket, its timers and
its back-off. Decisions are made by the pure core (parse, plan, reconcile, status); the parts
the loop drives carry them out and hold the mutable state, each its own:

* `PolicyGuard` (policy_guard.py): our block policies in the kernel, their linger, XFRM retries;
* `Applier` (applier.py): a pass's charon half, and what charon is believed to hold;
* `SaWatch` (sa_watch.py): charon's SAs, from its events and list-sas;
* `Report` (report.py): tunnel states and their log; what status commands and /metrics read.

A pass (`reconcile`) runs when OVSDB changed, at each periodic check, and after charon's
back-off: protection first, whatever charon's state, then charon, then the protection that
leaves. The guard also has passes of its own (an XFRM retry, a linger's end), charon untouched.

May import: core.*, adapters.*, daemon.*, errors, ovs, stdlib (never the tools).
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ovs.poller

from ovs_ipsec.adapters import heap
from ovs_ipsec.adapters.events import Events
from ovs_ipsec.adapters.files import read_files
from ovs_ipsec.adapters.ike_daemon import IkeDaemon
from ovs_ipsec.adapters.ovsdb import Ovsdb
from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core.block_policies import PolicyReason, PolicySpec
from ovs_ipsec.core.connections import Desired
from ovs_ipsec.core.desired import Delta, Planner
from ovs_ipsec.core.model import Config, PortStatus
from ovs_ipsec.core.reconcile import UnloadConn
from ovs_ipsec.core.status import Protection, TunnelStatus
from ovs_ipsec.daemon.applier import Applier
from ovs_ipsec.daemon.health import BULK_ACTIONS, Health, vlog
from ovs_ipsec.daemon.policy_guard import PolicyGuard
from ovs_ipsec.daemon.report import Report, Stale
from ovs_ipsec.daemon.sa_watch import SaWatch
from ovs_ipsec.errors import CharonError, CharonUnreachable, XfrmError

if TYPE_CHECKING:
    from ovs_ipsec.adapters.metrics import MetricsSnapshot

MAX_BACKOFF = 8.0
# Every so many checks, every tunnel's state is folded from scratch rather than per changed
# connection: a safety net that costs milliseconds a few times an hour.
FULL_REFOLD_EVERY = 20


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


class Daemon:
    def __init__(
        self,
        settings: Settings,
        ovsdb: Ovsdb,
        charon: IkeDaemon,
        xfrm: Xfrm,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        events: Events | None = None,
    ) -> None:
        self.settings = settings
        self.ovsdb = ovsdb
        self.charon = charon
        self.xfrm = xfrm
        self.clock = clock
        self.wall_clock = wall_clock
        # Parsed OVSDB contents and desired state, updated in proportion to each change.
        self.planner = Planner(
            read_files, ovsdb.row, use_default_crypto=settings.use_default_crypto
        )
        self.health = Health()
        self._stale = Stale()
        self.sa_watch = SaWatch(
            charon, events, self.health, self._stale.touch, clock,
            command_timeout=settings.command_timeout,
        )  # fmt: skip
        self.applier = Applier(
            charon, self.planner, self.health, self.sa_watch.tracker, self._stale.touch,
            vici_path=settings.vici_path, use_default_crypto=settings.use_default_crypto,
        )  # fmt: skip
        self.guard = PolicyGuard(
            xfrm, self.planner, self.health, clock, linger=settings.protection_linger
        )
        self.report = Report(
            self.planner, self.applier, self.sa_watch, self.guard, self.health, self._stale,
            ovsdb=ovsdb, xfrm=xfrm, clock=clock, wall_clock=wall_clock,
        )  # fmt: skip
        # The connections and secrets a change touched since the last pass that reached charon
        # (the next pass diffs only those).
        self._conns_changed: set[str] = set()
        self._shared_changed: set[str] = set()
        self.exiting = False
        self.cleanup_on_exit = False
        self.first_pass_done = False
        # True once a pass completed with charon reachable: everything desired was attempted.
        self.converged_once = False
        self._dirty = False
        self._refresh_requested = False
        self._check_due = True
        self._next_check = 0.0
        self._retry_at = 0.0
        self._backoff = 0.0
        self._checks = 0

    @property
    def config(self) -> Config:
        return self.planner.config

    @property
    def desired(self) -> Desired:
        return self.planner.desired

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """One turn: charon's events, then OVSDB, and a pass when something changed or a
        check is due; then SAs and tunnel states."""
        try:
            self.sa_watch.run_events()
        except CharonUnreachable as exc:
            # The event session's end is how a charon restart or crash shows up first.
            self._charon_lost(self.health.passes, exc)
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
                self._stale.touch(None)  # every tunnel's state from scratch, now and then
                heap.resettle()
            # Without events for what charon does on its own (expiry, DPD), the SAs are listed
            # at each check too: in the same wake-up, not in one of their own.
            self.sa_watch.request()
            # The periodic check re-reads the certificate files, which may have changed at the
            # same paths. OVSDB needs no re-read: the IDL reports every row change, and after a
            # reconnect (when it cannot) the whole contents are read again.
            self._absorb(
                self.planner.update({}, self.ovsdb.other_config(), self.wall_clock(),
                                    reread_files=True)
            )  # fmt: skip
        if (self._dirty or self._check_due) and now >= self._retry_at:
            self.reconcile()
        elif self.guard.due():
            self._guard_pass()
        listed_at = self.sa_watch.listed_at
        try:
            self.sa_watch.run()
        except CharonUnreachable as exc:
            self._charon_lost(self.health.passes, exc)
        if self._stale:
            self.report.log_state_changes()
        self.report.failures.settle(self.clock())
        if self.sa_watch.listed_at != listed_at:
            heap.trim()  # a listing of every SA, decoded and dropped

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.ovsdb.wait(poller)
        if self.sa_watch.events is not None:
            self.sa_watch.events.wait(poller)
        if not self.ovsdb.ready:
            # Nothing runs before OVSDB's first contents (the IDL wakes the loop when they
            # come): no timer of ours is due, only the caller's start-up timeout to notice.
            poller.timer_wait(int(self.settings.reconcile_interval * 1000))
            return
        # A check already due waits for its retry time only: the check time has passed, and
        # waking for it again would spin until charon is back.
        deadline = self._retry_at if self._check_due else self._next_check
        if self._dirty:
            deadline = min(deadline, self._retry_at)
        for due in (
            self.sa_watch.deadline(),
            self.guard.deadline(),
            self.report.failures.deadline(),
        ):
            if due is not None:
                deadline = min(deadline, due)
        poller.timer_wait(max(0, int((deadline - self.clock()) * 1000)))

    def _read_everything(self, *, reread_files: bool) -> Delta:
        rows = self.planner.reset_rows(self.ovsdb.all_rows())
        return self.planner.update(
            rows, self.ovsdb.other_config(), self.wall_clock(), reread_files=reread_files
        )

    def _absorb(self, delta: Delta) -> None:
        self.report.log_warnings()
        for what, exc in delta.internal_errors:
            # The planner made `what` invalid and carried on (issue 15 item 5); the traceback is
            # for a bug report. Names are escaped: a newline in one must not forge a log line.
            vlog.err(f"{ascii(what)[1:-1][:80]}: internal error while planning; it is invalid")
            for line in "".join(traceback.format_exception(exc)).splitlines():
                vlog.err(f"    {ascii(line)[1:-1]}")
        if delta.versioned:
            self.report.log_tunnel_changes(delta.versioned)
        if delta:
            self._conns_changed |= delta.conns
            self._shared_changed |= delta.shared
            self.guard.note(delta)
            self._dirty = True
            self._stale.touch(delta.conns)
        if self.applier.judge_credentials():
            self._dirty = True

    def request_refresh(self) -> None:
        """Re-read the certificate files, re-list charon and converge now (the `refresh`
        command); the SAs are listed again too."""
        self._check_due = False
        self._next_check = 0.0
        self._retry_at = 0.0
        self._refresh_requested = True
        self.sa_watch.request()

    # -- passes -----------------------------------------------------------------------------

    def reconcile(self) -> None:
        started = self.clock()
        self.health.passes += 1
        pass_id = self.health.passes
        check = self._check_due
        changed = self._dirty or self._refresh_requested  # upstream's refresh() runs then
        bulk = not self.first_pass_done or len(self._conns_changed) > BULK_ACTIONS
        # Protection first, whatever charon's state: new block policies are in the kernel before
        # anything is loaded into charon, and old ones leave only after charon's side changed.
        self.guard.protect(pass_id, check=check)
        try:
            self.applier.apply(
                pass_id, check=check, conns=self._conns_changed, shared=self._shared_changed
            )
        except CharonUnreachable as exc:
            self._charon_lost(pass_id, exc)
        else:
            self._conns_changed = set()
            self._shared_changed = set()
            self.converged_once = True
            self._dirty = False
            self._check_due = False
            self._backoff = 0.0
            self._next_check = self.clock() + self.settings.reconcile_interval
            if changed:
                self._refresh_requested = False
                self.report.log_refreshed()
        finally:
            self.guard.unprotect(pass_id, after_charon=True)
            self.first_pass_done = True
            self.health.last_pass_seconds = self.clock() - started
            self.report.log_invalid_changes()
            # What a first pass or a bulk load built is kept for good: out of the collector's
            # way (adapters/heap.py).
            if bulk:
                self.sa_watch.expect_own_burst()  # charon logs about each thing we loaded
                heap.settle()
            # Whatever the pass dropped (thousands of listed objects at a check, the messages of a
            # bulk load, a change's few) goes back to the kernel; nothing to give back costs
            # microseconds.
            heap.trim()

    def _guard_pass(self) -> None:
        """A pass of the guard's own, charon untouched: a retry after an XFRM failure, blocks
        to add while charon's retry waits, the end of a linger."""
        self.health.passes += 1
        self.guard.protect(self.health.passes, check=False)
        self.guard.unprotect(self.health.passes, after_charon=False)

    def _charon_lost(self, pass_id: int, exc: CharonUnreachable) -> None:
        first = self.applier.lost(exc)
        self.sa_watch.reset()
        self._check_due = True
        self._dirty = True
        self._backoff = min(MAX_BACKOFF, max(0.25, self._backoff * 2))
        self._retry_at = self.clock() + self._backoff
        log = vlog.warn if first else vlog.dbg
        ike = self.health.ike_daemon
        log(f"[{pass_id}] {ike} unreachable ({exc}); retrying in {self._backoff:g} s")

    # -- what the control socket, /metrics and systemd read ------------------------------------

    def statuses(self) -> dict[str, TunnelStatus]:
        return self.report.statuses()

    def explained_policies(self) -> dict[PolicySpec, tuple[PolicyReason, ...]]:
        return self.report.explained_policies()

    def protection(self) -> dict[str, Protection]:
        return self.report.protection()

    def port_status(self, names: Iterable[str]) -> dict[str, PortStatus]:
        return self.report.port_status(names)

    def metrics_snapshot(self) -> MetricsSnapshot:
        return self.report.metrics_snapshot()

    def memory_counts(self) -> dict[str, int]:
        return self.report.memory_counts()

    def summary(self) -> str:
        return self.report.summary()

    def request_sas(self) -> None:
        self.sa_watch.request()

    def sas_age(self) -> float | None:
        return self.sa_watch.age()

    def sas_settled(self, since: float) -> bool:
        return self.sa_watch.settled(since)

    # -- exit -------------------------------------------------------------------------------

    def take_over(self, record: bytes) -> None:
        """Start from the previous daemon's record (`Applier.take_over`)."""
        self.applier.take_over(record)

    def hand_over(self) -> bytes | None:
        """The record for the next daemon at a clean exit (`Applier.hand_over`)."""
        return self.applier.hand_over()

    def cleanup(self) -> None:
        """`exit` without --no-cleanup: take our connections and secrets out, and the block
        policies OVSDB no longer asks for (those it does stay: fail closed)."""
        try:
            if not self.charon.connected:
                self.charon.connect()
            conns = self.charon.owned_conns()
            shared = self.charon.owned_shared()
            for conn in sorted(conns):
                self.applier.perform(UnloadConn(conn))
            for secret_id in sorted(shared):
                self.charon.unload_shared(secret_id)
            vlog.info(f"cleanup: unloaded {len(conns)} connections and {len(shared)} secrets")
        except (CharonError, CharonUnreachable) as exc:
            vlog.warn(f"cleanup incomplete: {exc}")
        try:
            removed, kept = self.guard.remove_all_but_wanted()
            vlog.info(f"cleanup: removed {removed} protection policies")
            if kept:
                vlog.info(
                    f"cleanup: kept {kept} protection policies of ports that carry IPsec "
                    "options and of ipsec_skb_mark (remove those to switch IPsec off)"
                )
        except XfrmError as exc:
            vlog.warn(f"cleanup of protection policies incomplete: {exc}")
