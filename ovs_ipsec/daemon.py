"""The `Daemon`: one ovs.poller loop over OVSDB, charon and the control socket. The only mutable
state of the program lives here; decisions are made by the pure core (parse, plan, reconcile,
status) and carried out through the adapters it is handed.

May import: everything in the package.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ovs.poller
import ovs.vlog

from ovs_ipsec import naming
from ovs_ipsec.charon import Charon
from ovs_ipsec.credentials import needed_paths, resolve
from ovs_ipsec.errors import CharonError, CharonUnreachable, XfrmError
from ovs_ipsec.files import read_files
from ovs_ipsec.model import Config, SkbMark
from ovs_ipsec.ovsdb import Ovsdb
from ovs_ipsec.parse import parse_config
from ovs_ipsec.plan import Desired, plan
from ovs_ipsec.protection import PolicySpec, diff_policies, plan_protection
from ovs_ipsec.reconcile import (
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
from ovs_ipsec.status import TunnelStatus, fold
from ovs_ipsec.xfrm import Xfrm

vlog = ovs.vlog.Vlog("ovs-monitor-ipsec")

MAX_BACKOFF = 8.0


@dataclass(frozen=True)
class Settings:
    database: str
    vici_path: str
    command_timeout: float = 5.0
    reconcile_interval: float = 15.0
    unixctl_path: str | None = None


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
    ) -> None:
        self.settings = settings
        self.ovsdb = ovsdb
        self.charon = charon
        self.xfrm = xfrm
        self.clock = clock
        self.wall_clock = wall_clock
        self.config = Config()
        self.desired = Desired()
        self.applied = Applied()
        self.desired_policies: frozenset[PolicySpec] = frozenset()
        # Our block policies in the kernel as last observed or applied; None: look first.
        self.policies: frozenset[PolicySpec] | None = None
        self._last_good_mark: SkbMark | None = None
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
        self._reported_warnings: tuple[str, ...] = ()
        self._replan = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """One turn: read OVSDB, and reconcile when something changed or a check is due."""
        self.ovsdb.run()
        if not self.ovsdb.ready:
            return
        if self.ovsdb.changed():
            self.config = self._keep_protection(parse_config(self.ovsdb.snapshot()))
            self._replan = True
        now = self.clock()
        if now >= self._next_check and not self._check_due:
            self._check_due = True
            self._replan = True  # certificate files may have changed at the same paths
        if self._replan:
            self._plan()
        if (self._dirty or self._check_due) and now >= self._retry_at:
            self.reconcile()

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.ovsdb.wait(poller)
        now = self.clock()
        deadline = self._next_check
        if self._dirty:
            deadline = min(deadline, self._retry_at)
        poller.timer_wait(max(0, int((deadline - now) * 1000)))

    def _keep_protection(self, config: Config) -> Config:
        """A malformed ipsec_skb_mark is reported, and the last valid one stays in force: a typo
        must never silently remove protection that is in place."""
        global_config = config.global_config
        if any(e.key == "ipsec_skb_mark" for e in global_config.errors):
            if self._last_good_mark is not None:
                kept = dataclasses.replace(global_config, skb_mark=self._last_good_mark)
                return dataclasses.replace(config, global_config=kept)
            return config
        self._last_good_mark = global_config.skb_mark
        return config

    def _plan(self) -> None:
        self._replan = False
        files = read_files(needed_paths(self.config))
        credentials = resolve(self.config, files, self.wall_clock())
        if credentials.warnings != self._reported_warnings:
            for warning in credentials.warnings:
                vlog.warn(f"other_config: {warning}")
            self._reported_warnings = credentials.warnings
        desired = plan(self.config, credentials)
        if desired != self.desired:
            self.desired = desired
            self._dirty = True
        # Invalid tunnels found while planning (conflicts, bad certificates) are blocked too.
        policies = plan_protection(dataclasses.replace(self.config, invalid=desired.invalid))
        if policies != self.desired_policies:
            self.desired_policies = policies
            self._dirty = True

    def request_refresh(self) -> None:
        """Re-list charon and converge now (the `refresh` command)."""
        self._check_due = True
        self._retry_at = 0.0

    # -- one reconcile pass -----------------------------------------------------------------

    def reconcile(self) -> None:
        started = self.clock()
        self.health.passes += 1
        pass_id = self.health.passes
        # Protection first, whatever charon's state: new block policies are in the kernel before
        # anything is loaded into charon, and old ones leave only after charon's side changed.
        to_add, to_remove = self._protection_diff(pass_id)
        self._apply_policies(pass_id, add=to_add)
        try:
            if self._check_due or not self.charon.connected:
                self._sync_with_charon(pass_id)
            self._execute(pass_id, diff(self.desired, self.applied))
        except CharonUnreachable as exc:
            self._charon_lost(pass_id, exc)
        else:
            self.converged_once = True
            self._dirty = False
            self._check_due = False
            self._backoff = 0.0
            self._next_check = self.clock() + self.settings.reconcile_interval
        finally:
            self._apply_policies(pass_id, remove=to_remove)
            self.first_pass_done = True
            self.health.last_pass_seconds = self.clock() - started
            self._log_invalid_changes()

    def _protection_diff(
        self, pass_id: int
    ) -> tuple[tuple[PolicySpec, ...], tuple[PolicySpec, ...]]:
        if self.policies is None or self._check_due:
            try:
                observed = self.xfrm.observe()
            except XfrmError as exc:
                self._xfrm_failed(pass_id, "listing policies", exc)
                # Unknown kernel state: (re)add everything desired, remove nothing.
                return tuple(sorted(self.desired_policies)), ()
            if self.policies is not None and observed != self.policies:
                vlog.warn(f"[{pass_id}] protection policies changed behind our back; restoring")
            self.policies = observed
        to_add, to_remove = diff_policies(self.desired_policies, self.policies)
        return tuple(to_add), tuple(to_remove)

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
        current = set(self.policies or ())
        current.update(add)
        current.difference_update(remove)
        self.policies = frozenset(current)
        self.health.xfrm_error = ""
        verb = "installed" if add else "removed"
        vlog.info(
            f"[{pass_id}] {verb} {len(add or remove)} protection policies "
            f"({len(self.policies)} in place)"
        )
        for spec in add or remove:
            vlog.dbg(f"[{pass_id}]   {verb}: {spec.describe()}")

    def _xfrm_failed(self, pass_id: int, what: str, exc: XfrmError) -> None:
        self.health.xfrm_error = str(exc)
        self._dirty = True
        self._retry_at = max(self._retry_at, self.clock() + 1.0)
        vlog.err(f"[{pass_id}] kernel XFRM: {what} failed: {exc}")

    def _sync_with_charon(self, pass_id: int) -> None:
        """Re-list our objects in charon: after a (re)connect, a charon restart or an external
        unload (`swanctl --load-all`), the believed state must follow what charon really has."""
        if not self.charon.connected:
            self.charon.connect()
            version = self.charon.version()
            self.health.charon_version = f"{version.get('daemon', '')} {version.get('version', '')}"
            vlog.info(
                f"[{pass_id}] connected to charon ({self.health.charon_version.strip()}) "
                f"at {self.settings.vici_path}"
            )
        since = str(self.charon.stats().get("uptime", {}).get("since", ""))
        if self.health.charon_since and since != self.health.charon_since:
            vlog.warn(f"[{pass_id}] charon restarted (up since {since}); reloading everything")
            self.applied = Applied()
        self.desired_policies: frozenset[PolicySpec] = frozenset()
        # Our block policies in the kernel as last observed or applied; None: look first.
        self.policies: frozenset[PolicySpec] | None = None
        self._last_good_mark: SkbMark | None = None
        self.health.charon_since = since
        key_ids = self.charon.key_ids() if self.applied.keys else frozenset()
        listed = adopt(self.charon.owned_conns(), self.charon.owned_shared(), self.applied, key_ids)
        lost = (set(self.applied.conns) - set(listed.conns)) | (
            set(self.applied.shared) - set(listed.shared)
        )
        if lost:
            vlog.warn(f"[{pass_id}] {len(lost)} of our objects vanished from charon; restoring")
        self.applied = listed
        self.health.charon_reachable = True
        self.health.charon_error = ""

    def _execute(self, pass_id: int, actions: list[Action]) -> None:
        failures: dict[str, str] = {
            conn: why for conn, why in self.health.failures.items() if conn in self.desired.conns
        }
        for action in actions:
            try:
                key_id = self._perform(action)
            except CharonError as exc:
                target = _target(action)
                vlog.warn(f"[{pass_id}] charon refused {exc.command} for {target}: {exc.errmsg}")
                if isinstance(action, (LoadConn, LoadShared)):
                    conn = action.spec.name if isinstance(action, LoadConn) else action.spec.conn
                    failures[conn] = f"charon refused {exc.command}: {exc.errmsg}"
                continue
            record(self.applied, action, key_id)
            if isinstance(action, LoadConn):
                failures.pop(action.spec.name, None)
            vlog.info(f"[{pass_id}] {_describe(action)}")
        self.health.failures = failures

    def _perform(self, action: Action) -> str:
        if isinstance(action, LoadKey):
            return self.charon.load_key(action.spec)
        if isinstance(action, UnloadKey):
            self.charon.unload_key(action.key_id)
        elif isinstance(action, LoadShared):
            self.charon.load_shared(action.spec)
        elif isinstance(action, LoadConn):
            self.charon.load_conn(action.spec)
        elif isinstance(action, TerminateIke):
            self.charon.terminate_ike(action.conn)
        elif isinstance(action, UnloadConn):
            # unload-conn removes the trap policies but leaves SAs set up through them.
            self.charon.terminate_ike(action.conn)
            try:
                self.charon.unload_conn(action.conn)
            except CharonError as exc:
                if "not found" not in exc.errmsg:
                    raise
        elif isinstance(action, UnloadShared):
            self.charon.unload_shared(action.id)
        return ""

    def _charon_lost(self, pass_id: int, exc: CharonUnreachable) -> None:
        self.charon.close()
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

    # -- reporting and exit -----------------------------------------------------------------

    def statuses(self) -> dict[str, TunnelStatus]:
        failures = dict(self.health.failures)
        if not self.health.charon_reachable:
            for conn in self.desired.conns:
                failures.setdefault(conn, f"charon unreachable: {self.health.charon_error}")
        loaded = frozenset(
            name
            for name, body in self.applied.conns.items()
            if name in self.desired.conns and body == self.desired.conns[name].body
        )
        return fold(self.desired, loaded, failures)

    def summary(self) -> str:
        """One line for systemd's STATUS= and logs."""
        counts: dict[str, int] = {}
        for status in self.statuses().values():
            counts[status.state.value] = counts.get(status.state.value, 0) + 1
        charon = "charon reachable" if self.health.charon_reachable else "charon unreachable"
        tunnels = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tunnels"
        return f"{tunnels}; {charon}"

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
