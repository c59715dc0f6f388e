"""The SaWatch: what charon's SAs are, from its events (folded as they arrive) and from list-sas,
which runs when the schedule says: at each periodic check, soon after a burst of events (at most
every SAS_MIN_INTERVAL), when a status command wants current counters, and again while an SA an
event announced is missing from the listing (charon's noblock listing skips busy SAs).

A lost event session or a failed listing raises `CharonUnreachable`; the loop handles charon's
loss for both sessions (`reset` here).

May import: core.sas, core.outcomes, adapters.ike_daemon, adapters.events, daemon.health, errors,
stdlib.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ovs_ipsec.adapters.events import (
    ALERT_EVENT,
    LOG_BUDGET,
    LOG_EVENT,
    REQUIRED_EVENTS,
    Events,
)
from ovs_ipsec.adapters.ike_daemon import IkeDaemon
from ovs_ipsec.core.outcomes import Tracker, dispatch
from ovs_ipsec.core.sas import IkeSa, merge_listing
from ovs_ipsec.daemon.health import Health, vlog
from ovs_ipsec.errors import CharonError, CharonUnreachable

Touch = Callable[[Iterable[str] | None], None]

# list-sas after events at most this often: a burst of events costs one listing.
SAS_MIN_INTERVAL = 0.5
# Listings that may still miss an SA an event announced (noblock skips busy SAs) before the
# listing is believed.
SAS_RECHECKS = 10
# Log events dropped for want of budget (an IKE flood) are reported at most this often.
DROPPED_REPORT_EVERY = 60.0
# After a pass that sent charon thousands of requests, its log lines about them (several per
# connection loaded) wait in the event session, and reading them drops more than the budget
# until that backlog is read (tens of seconds at 5,000 tunnels): that is expected, not a flood.
# It ends when reads have dropped nothing for a second, and after this long at the latest.
OWN_BURST_MAX_SECONDS = 60.0


class SaWatch:
    def __init__(
        self,
        charon: IkeDaemon,
        events: Events | None,
        health: Health,
        touch: Touch,
        clock: Callable[[], float],
        *,
        command_timeout: float,
    ) -> None:
        self.charon = charon
        # charon's event session (None: SAs are only polled); its outcomes and the last list-sas.
        self.events = events
        self.health = health
        self._touch = touch
        self.clock = clock
        self._command_timeout = command_timeout
        self.tracker = Tracker()
        self.sas: dict[str, tuple[IkeSa, ...]] = {}
        self.listed_at: float | None = None
        self._due: float | None = None
        self._expected: dict[tuple[str, int], bool] = {}
        self._rechecks = 0
        self._dropped_logs = 0  # since the last report
        self._dropped_reported_at: float | None = None
        self._own_burst_until: float | None = None
        self._own_dropped = 0
        self._own_dropped_at = 0.0

    # -- the schedule ---------------------------------------------------------------------

    def request(self) -> None:
        """List the SAs as soon as the rate bound allows (status commands, checks)."""
        now = self.clock()
        due = now if self.listed_at is None else max(now, self.listed_at + SAS_MIN_INTERVAL)
        self._due = due if self._due is None else min(self._due, due)

    def age(self) -> float | None:
        """Seconds since the last list-sas; None when there is none (charon not reachable)."""
        return None if self.listed_at is None else self.clock() - self.listed_at

    def settled(self, since: float) -> bool:
        """True once the SAs were listed after `since`, or cannot be listed now."""
        if self.listed_at is not None and self.listed_at >= since:
            return True
        return not self._reachable() or self.clock() - since > self._command_timeout

    def deadline(self) -> float | None:
        """When the loop must turn for the SAs (None: nothing scheduled)."""
        if not self._reachable():
            return None
        if self.events is not None and not self.events.connected:
            return self.clock()  # subscribe (in run) as soon as the loop turns
        if self._due is None and self.listed_at is None:
            return self.clock()  # never listed yet
        return self._due

    def _reachable(self) -> bool:
        return self.health.charon_reachable and self.charon.connected

    # -- events and listings ----------------------------------------------------------------

    def run_events(self) -> None:
        """Fold what the event session brought. Raises CharonUnreachable when it ended."""
        if self.events is None or not self.events.connected:
            return
        received = self.events.receive()
        if received.dropped_logs or self._own_burst_until is not None:
            self._note_dropped(received.dropped_logs)
        changed = False
        for name, body in received.events:
            self.sas, expected, conns = dispatch(name, body, self.tracker, self.sas)
            if conns:
                changed = True
                self._expected.update(expected)
                self._touch(conns)
        self._touch(self.tracker.touched())
        if changed:
            self._rechecks = 0
            self.request()
        if received.lost is not None:
            # EOF here is how a charon restart or crash shows up first: at once, not at the
            # next request.
            raise CharonUnreachable("events", received.lost)

    def run(self) -> None:
        """Subscribe to events if needed, and list the SAs when due. Raises CharonUnreachable."""
        if not self._reachable() or self.charon.busy:
            return
        if self.events is not None and not self.events.connected:
            self._connect_events()
        deadline = self.deadline()
        if deadline is None or self.clock() < deadline:
            return
        try:
            listed = self.charon.listed_sas()
        except CharonError as exc:
            vlog.warn(f"{self.health.ike_daemon} refused list-sas: {exc.errmsg}")
            listed = {}
        previous = self.sas
        self.sas, self._expected = merge_listing(listed, self.sas, self._expected)
        for conn, outcome in self.charon.failures(self.sas).items():
            self.tracker.note(conn, outcome)
        self._touch(self.tracker.touched())
        self._touch(
            c for c in previous.keys() | self.sas.keys() if previous.get(c) != self.sas.get(c)
        )
        self.listed_at = self.clock()
        self._due = None
        if self._expected:
            self._rechecks += 1
            if self._rechecks < SAS_RECHECKS:
                self.request()
            else:
                self._expected = {}

    def expect_own_burst(self) -> None:
        """The daemon just sent charon a bulk load: the log events charon wrote about it are
        dropped beyond the budget without a warning, until they are read."""
        self._own_burst_until = self.clock() + OWN_BURST_MAX_SECONDS

    def _note_dropped(self, count: int) -> None:
        now = self.clock()
        if self._own_burst_until is not None:
            if count and now <= self._own_burst_until:
                self._own_dropped += count
                self._own_dropped_at = now
                return
            # A read that dropped nothing ends the burst only a second after the last drop: the
            # budget is per second, so each second's first reads fit in it while the backlog lasts.
            if now <= self._own_burst_until and (
                not self._own_dropped or now - self._own_dropped_at < 1.0
            ):
                return
            if self._own_dropped:
                vlog.dbg(f"{self._own_dropped} of charon's log events about our bulk load "
                         f"dropped undecoded (more than {LOG_BUDGET} a second)")  # fmt: skip
            self._own_burst_until, self._own_dropped = None, 0
        if not count:
            return
        self._dropped_logs += count
        last = self._dropped_reported_at
        if last is not None and now - last < DROPPED_REPORT_EVERY:
            return
        vlog.warn(f"charon logs more than {LOG_BUDGET} lines a second (an IKE flood?): "
                  f"{self._dropped_logs} log events dropped undecoded; failure causes may be "
                  f"missing meanwhile")  # fmt: skip
        self._dropped_logs, self._dropped_reported_at = 0, now

    def _connect_events(self) -> None:
        assert self.events is not None
        try:
            registered = self.events.connect(REQUIRED_EVENTS, ((ALERT_EVENT, LOG_EVENT),))
        except CharonError as exc:
            vlog.err(f"charon's events unavailable ({exc.errmsg}); tunnel states are polled only")
            self.events = None
            return
        how = "alerts" if ALERT_EVENT in registered else "log messages (no alert event)"
        vlog.info(f"listening to charon's events ({', '.join(registered)}); failure causes "
                  f"from {how}")  # fmt: skip
        # Whatever happened before the subscription is only in charon's SAs: list them now.
        self.listed_at = None
        self.request()

    def reset(self) -> None:
        """charon went away: the event session closes (a charon that came back is a new one,
        its SAs and loaded state lost; events are subscribed again once the command session
        has resynchronised), and nothing is known of its SAs."""
        if self.events is not None:
            self.events.close()
        self.tracker.reset()
        self.sas = {}
        self._expected = {}
        self.listed_at = self._due = None
