"""The Report: every tunnel's state, folded from what the daemon's parts hold, and logged when it
changes; the statuses, protection, metrics and memory snapshots that status commands, /metrics
and systemd read. It only reads: nothing here calls charon, so a status command never waits
for it (`protection` alone lists the kernel, live).

Tunnel states are refolded per connection, for the connections whose inputs may have moved
since the last refold (`Stale`: the parts name them as they change them; None: all of them).

May import: core.*, adapters.metrics (loaded only when metrics are served), adapters.ovsdb,
adapters.xfrm.adapter, daemon.applier, daemon.sa_watch, daemon.policy_guard, daemon.health,
errors, stdlib.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from ovs_ipsec.adapters.ovsdb import Ovsdb
from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core.block_policies import PolicyReason, PolicySpec, explain_protection
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.failures import FailureCounts
from ovs_ipsec.core.log_text import printable
from ovs_ipsec.core.model import Config, PortStatus
from ovs_ipsec.core.status import (
    Protection,
    StateKey,
    StatusBook,
    TunnelStatus,
    View,
    fold,
    protection_by_tunnel,
)
from ovs_ipsec.daemon.applier import Applier
from ovs_ipsec.daemon.health import Health, vlog
from ovs_ipsec.daemon.policy_guard import PolicyGuard
from ovs_ipsec.daemon.sa_watch import SaWatch
from ovs_ipsec.errors import XfrmError

if TYPE_CHECKING:
    from ovs_ipsec.adapters.metrics import MetricsSnapshot

# Upstream's words (and typo), kept so that alerts on them keep firing.
UPSTREAM_PKI_WARNING = (
    "The cert and key configuration is not valid. The valid configuations are 1): certificate, "
    "private_key and ca_cert are not set; or 2): certificate and private_key are all set."
)


class Stale:
    """The connections whose tunnel states may have moved since the last refold."""

    def __init__(self) -> None:
        self.conns: set[str] | None = None  # None: anyone's

    def touch(self, conns: Iterable[str] | None) -> None:
        """These connections' tunnel states may have moved (None: anyone's may have)."""
        if conns is None:
            self.conns = None
        elif self.conns is not None:
            self.conns.update(conns)

    def __bool__(self) -> bool:
        return self.conns is None or bool(self.conns)

    def take(self) -> set[str] | None:
        conns, self.conns = self.conns, set()
        return conns


class Report:
    def __init__(
        self,
        planner: Planner,
        applier: Applier,
        sa_watch: SaWatch,
        guard: PolicyGuard,
        health: Health,
        stale: Stale,
        *,
        ovsdb: Ovsdb,
        xfrm: Xfrm,
        clock: Callable[[], float],
        wall_clock: Callable[[], dt.datetime],
    ) -> None:
        self.planner = planner
        self.applier = applier
        self.sa_watch = sa_watch
        self.guard = guard
        self.health = health
        self.stale = stale
        self.ovsdb = ovsdb
        self.xfrm = xfrm
        self.clock = clock
        self.wall_clock = wall_clock
        self.failures = FailureCounts()
        self._book = StatusBook()
        # State changes folded but not logged yet: (as last logged, now) per tunnel.
        self._unlogged: dict[str, tuple[StateKey | None, StateKey | None]] = {}
        self._reported_invalid: dict[str, str] = {}
        self._reported_caveats: dict[str, str] = {}
        self._reported_warnings: tuple[str, ...] = ()
        self._all_up_logged = False
        self._pki_judged: object = None

    # -- upstream's log lines (README "Log lines"): same words, same levels, same events ------

    def log_tunnel_changes(self, names: Iterable[str]) -> None:
        """Upstream's INFO lines for a port that appeared, changed or disappeared."""
        versions = self.planner.versions
        for name in sorted(names):
            version = versions.get(name)
            shown = printable(name)
            if version is None:
                vlog.info(f"Tunnel {shown} disappeared from OVSDB")
            elif version == 1:
                vlog.info(f"Tunnel {shown} appeared in OVSDB")
            else:
                vlog.info(f"Tunnel's '{shown}' configuration changed in OVSDB to {version}")

    def log_refreshed(self) -> None:
        """Upstream's line at the end of a refresh that had something to do."""
        vlog.info("Refreshing is done.")

    # -- tunnel states ----------------------------------------------------------------------

    def statuses(self) -> dict[str, TunnelStatus]:
        """Every port's whole status, folded now (O(tunnels): for status commands)."""
        return fold(self._view())

    def _view(self) -> View:
        charon_error = None
        if not self.health.charon_reachable:
            charon_error = self.health.charon_error or "not connected yet"
        desired = self.planner.desired
        applier = self.applier
        return View(
            desired=desired,
            loaded=applier.loaded_as_desired(),
            refusals={c: why for c, why in self.health.failures.items() if c in desired.conns},
            charon_error=charon_error,
            ike_daemon=self.health.ike_daemon,
            sas=self.sa_watch.sas,
            outcomes=self.sa_watch.tracker.outcomes(),
            lacking=applier.lacking if applier.preflight is not None else None,
        )

    def _refold(self) -> None:
        for name, (before, now) in self._book.refold(self._view(), self.stale.take()).items():
            first = self._unlogged.get(name)
            self._unlogged[name] = (before if first is None else first[0], now)

    def log_state_changes(self) -> None:
        """Each tunnel's state and reason, logged when they change (charon-wide causes are
        already logged once, so they go to the debug level)."""
        self._refold()
        self.applier.report_lacks()
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
            log(f"{printable(name)}: {state.value}" + (f": {reason}" if reason else ""))
        if changed:
            self._log_all_up()

    def _log_all_up(self) -> None:
        """Upstream's line once every configured tunnel is up (again)."""
        up = self._book.all_up()
        if up and not self._all_up_logged:
            vlog.info(f"Connections for all({up}) configured tunnels are Up.")
        self._all_up_logged = bool(up)

    def log_invalid_changes(self) -> None:
        """Warn once per new reason, naming the interface and the key."""
        config = self.planner.config
        current = {name: bad.reason for name, bad in self.planner.desired.invalid.items()}
        current.update({f"other_config:{e.key}": e.reason for e in config.global_config.errors})
        for name, reason in current.items():
            if self._reported_invalid.get(name) != reason:
                vlog.warn(f"{printable(name)}: invalid IPsec configuration: {reason}")
                if name in self.planner.desired.invalid:
                    vlog.warn(f"{printable(name)} contains invalid configuration: {reason}")
        self._reported_invalid = current
        other_config = self.planner.other_config
        if other_config is not self._pki_judged:  # replaced, never mutated, on a change
            self._pki_judged = other_config
            if not upstream_pki_valid(other_config):
                vlog.warn(UPSTREAM_PKI_WARNING)
        caveats = self.planner.caveats
        if caveats != self._reported_caveats:
            for name, warning in caveats.items():
                if self._reported_caveats.get(name) != warning:
                    vlog.warn(f"{printable(name)}: {warning}")
            self._reported_caveats = dict(caveats)

    def log_warnings(self) -> None:
        """The credentials' warnings (files unreadable, a key that does not match) and the
        global keys' (an ipsec_skb_mark mask of 0), once."""
        warnings = self.planner.warnings + tuple(
            f"{w.key}: {w.reason}" for w in self.planner.config.global_config.warnings
        )
        if warnings != self._reported_warnings:
            for warning in warnings:
                vlog.warn(f"other_config: {warning}")
            self._reported_warnings = warnings

    def summary(self) -> str:
        """One line for systemd's STATUS= and logs."""
        self._refold()
        counts = Counter(state.value for state, _, _ in self._book.states().values())
        reachable = "reachable" if self.health.charon_reachable else "unreachable"
        charon = f"{self.health.ike_daemon} {reachable}"
        tunnels = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tunnels"
        return f"{tunnels}; {charon}"

    # -- protection -------------------------------------------------------------------------

    def explained_policies(self) -> dict[PolicySpec, tuple[PolicyReason, ...]]:
        """Every protection policy wanted now, with the tunnels (or ipsec_skb_mark) it is for;
        the same config the planner protects, invalid tunnels found while planning included."""
        config = dataclasses.replace(self.planner.config, invalid=self.planner.desired.invalid)
        return explain_protection(config)

    def protection(self) -> dict[str, Protection]:
        """Per tunnel: are our block policies for it in the kernel? Looked up live (one
        `ip xfrm policy`), since someone may have flushed them since the last pass."""
        try:
            installed = self.xfrm.observe()
        except XfrmError as exc:
            vlog.warn(f"kernel XFRM: listing policies for status failed: {exc}")
            installed = frozenset(self.guard.policies or ())
        return self._protection(installed)

    def _protection(self, installed: AbstractSet[PolicySpec]) -> dict[str, Protection]:
        config = self.planner.config
        names = sorted(set(config.tunnels) | set(self.planner.desired.invalid))
        fail_open = config.global_config.fail_open
        return protection_by_tunnel(self.explained_policies(), installed, names, fail_open)

    # -- snapshots --------------------------------------------------------------------------

    def port_status(self, names: Iterable[str]) -> dict[str, PortStatus]:
        """Ofport and CFM fault of these ports, as the OVSDB adapter holds them now."""
        row_of = self.planner.row_of
        return self.ovsdb.port_status({name: row_of[name] for name in names if name in row_of})

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Everything /metrics reports, from state the daemon already holds (nothing here
        calls charon, so a scrape never waits for it)."""
        # prometheus-client costs about 10 MiB of memory: loaded only when metrics are served.
        from ovs_ipsec.adapters.metrics import MetricsSnapshot, TunnelMetrics

        config, desired = self.planner.config, self.planner.desired
        statuses = self.statuses()
        installed = self.guard.policies or set()
        protection = self._protection(installed)
        tunnels = []
        for name, status in statuses.items():
            tunnel = config.tunnels.get(name)
            invalid = desired.invalid.get(name)
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
        lacks = self.applier.lacks
        return MetricsSnapshot(
            tunnels=tuple(tunnels),
            failures=dict(self.failures.counts()),
            protection_policies=dict(Counter(spec.purpose or "other" for spec in installed)),
            xfrm_stat=xfrm_stat,
            certificate_expiry=certificate_expiry(
                self.planner.credentials, config, self.wall_clock()
            ),
            reconcile_seconds=self.health.last_pass_seconds,
            reconciles=self.health.passes,
            charon_up=self.health.charon_reachable,
            ovsdb_up=self.ovsdb.connected,
            charon_lacks={name: " or ".join(lack.packages) for name, lack in sorted(lacks.items())},
        )

    def memory_counts(self) -> dict[str, int]:
        """What the daemon holds, counted (`memory/show`)."""
        desired = self.planner.desired
        return {
            "ports": len(self.planner.row_names),
            "tunnels": len(self.planner.tunnels),
            "invalid": len(desired.invalid),
            "conns": len(desired.conns),
            "secrets": len(desired.shared),
            "policies": len(self.guard.policies or ()),
            "lingering": self.guard.lingering,
            "ike_sas": sum(len(sas) for sas in self.sa_watch.sas.values()),
        }


def upstream_pki_valid(other_config: Mapping[str, str]) -> bool:
    """Upstream's rule for the global PKI: certificate and private_key both set, or none of
    certificate, private_key and ca_cert (ours judges each tunnel by what it needs)."""
    cert, key = other_config.get("certificate"), other_config.get("private_key")
    return bool(cert and key) or not (cert or key or other_config.get("ca_cert"))


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
