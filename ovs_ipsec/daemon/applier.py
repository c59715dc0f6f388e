"""The Applier: one pass's charon half. It re-lists charon when that is due, diffs the desired
state against what the daemon believes charon holds (`applied`, a `reconcile.Applied`), holds
back the connections charon lacks something for, and carries the actions out, pipelined where
it can; charon's refusals are kept per connection for the tunnel states and retried at checks.

`applied` changes only here: by what charon listed (`sync`) and by each action charon carried
out (`execute`). A lost charon raises `CharonUnreachable` out of `apply`; the loop backs off.

Over 400 lines because what charon can do decides which actions are carried out at all
(`hold_back` reads `preflight` and `applied` in the same pass), and the log's wording of each
action (`_describe`, `_target`) is only used while carrying them out; split, each part would
reach into the other's state.

May import: core.*, adapters.ike_daemon, daemon.health, errors, stdlib.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from ovs_ipsec.adapters.ike_daemon import IkeDaemon
from ovs_ipsec.core import handover, naming
from ovs_ipsec.core.capabilities import (
    Lack,
    Preflight,
    conn_needs,
    parse_capabilities,
    tunnel_needs,
)
from ovs_ipsec.core.connections import ConnSpec
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.ike_options.settings import NO_SETTINGS
from ovs_ipsec.core.log_text import printable
from ovs_ipsec.core.model import AuthMode
from ovs_ipsec.core.outcomes import Tracker
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
from ovs_ipsec.daemon.health import BULK_ACTIONS, Health, vlog
from ovs_ipsec.errors import CharonError, CharonUnreachable

Touch = Callable[[Iterable[str] | None], None]

# Simple loads and unloads: written back to back, their replies read afterwards.
PIPELINED = (LoadShared, LoadConn, UnloadShared)
_PLURAL = {
    "LoadShared": "secrets loaded",
    "LoadKey": "keys loaded",
    "LoadConn": "connections loaded",
    "TerminateIke": "IKE_SAs closed",
    "UnloadConn": "connections unloaded",
    "UnloadShared": "secrets unloaded",
    "UnloadKey": "keys unloaded",
}


class Applier:
    def __init__(
        self,
        charon: IkeDaemon,
        planner: Planner,
        health: Health,
        tracker: Tracker,
        touch: Touch,
        *,
        vici_path: str,
        use_default_crypto: bool = False,
    ) -> None:
        self.charon = charon
        self.planner = planner
        self.health = health
        self.tracker = tracker
        self._touch = touch
        self._vici_path = vici_path
        self._use_default_crypto = use_default_crypto
        self.applied = Applied()
        # charon's refusals by (connection, action kind): a connection's load and its secret's
        # are refused, and cleared, each on its own (a loaded connection does not make its
        # refused secret loaded). `health.failures` shows them per connection.
        self._refused: dict[tuple[str, str], str] = {}
        # Diff everything at the next pass, not only the names a change touched: at start, and
        # after anything that may have moved charon's state or what is held back.
        self._full_diff = True
        # What the connected charon can do, judging each connection's needs (None: not asked
        # yet); the capabilities it lacks, logged once per charon, and the credentials whose
        # key algorithms it judges.
        self.preflight: Preflight | None = None
        self.lacks: dict[str, Lack] = {}
        self._judged_credentials: Credentials | None = None
        # The previous daemon's record (core/handover.py), until the first listing of charon.
        self._handover: handover.Handover | None = None

    # -- one pass ---------------------------------------------------------------------------

    @property
    def _ike(self) -> str:
        """The IKE daemon as log lines and reasons name it (charon, pluto)."""
        return self.health.ike_daemon

    def apply(
        self, pass_id: int, *, check: bool, conns: Iterable[str], shared: Iterable[str]
    ) -> None:
        """Bring charon to the desired state: everything at a check or when a full diff is due,
        else the connections and secrets a change touched. Raises CharonUnreachable."""
        desired = self.planner.desired
        try:
            if (check or not self.charon.connected) and self.sync(pass_id):
                self._full_diff = True  # charon's listing differs from what we believed
            if check and (
                self.health.failures
                or not self.applied.conns.keys() <= desired.conns.keys()
                or not self.applied.shared.keys() <= desired.shared.keys()
            ):
                self._full_diff = True  # retry what charon refused or left behind
            if self._full_diff:
                actions = diff(desired, self.applied)
            else:
                actions = diff(desired, self.applied, conns, shared)
            self.execute(pass_id, self.hold_back(actions))
        except CharonUnreachable:
            self._full_diff = True
            raise
        self._full_diff = False

    def sync(self, pass_id: int) -> bool:
        """Re-list our objects in charon: after a (re)connect, a charon restart or an external
        unload (`swanctl --load-all`), the believed state must follow what charon really has.
        True when it differed."""
        changed = False
        if not self.charon.connected:
            changed = True
            self.charon.connect()
            version = self.charon.version()
            self.health.charon_version = f"{version.get('daemon', '')} {version.get('version', '')}"
            vlog.info(
                f"[{pass_id}] connected to {self._ike} ({self.health.charon_version.strip()}) "
                f"at {self._vici_path}"
            )
        stats = self.charon.stats()
        since = str(stats.get("uptime", {}).get("since", ""))
        if handover.charon_restarted(self.health.charon_since, since):
            vlog.warn(f"[{pass_id}] {self._ike} restarted (up since {since}); reloading everything")
            self.applied = Applied()
            changed = True
        self.health.charon_since = since
        if self._handover is not None:
            self._take_handover(pass_id, since)
        if changed or self.preflight is None:
            self._ask_capabilities(pass_id, stats)
        key_ids = self.charon.key_ids() if self.applied.keys else frozenset()
        listed = adopt(self.charon.owned_conns(), self.charon.owned_shared(), self.applied, key_ids)
        lost: set[str] = set()
        if listed is not self.applied:
            lost = (self.applied.conns.keys() - listed.conns.keys()) | (
                self.applied.shared.keys() - listed.shared.keys()
            )
            if lost:
                vlog.warn(f"[{pass_id}] {len(lost)} of our objects vanished from "
                          f"{self._ike}; restoring")  # fmt: skip
            changed = changed or (
                listed.conns.keys() != self.applied.conns.keys()
                or listed.shared.keys() != self.applied.shared.keys()
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
            record, self.health.charon_version, since, self.planner.desired
        )
        if why:
            vlog.info(f"[{pass_id}] the previous daemon's record does not apply: {why}")
            return
        conns = sum(spec is not None for spec in self.applied.conns.values())
        shared = sum(s is not handover.PREVIOUS_SECRET for s in self.applied.shared.values())
        vlog.info(
            f"[{pass_id}] the previous daemon's record vouches for {conns} connections and "
            f"{shared} secrets as wanted now"
        )

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

    def lost(self, exc: CharonUnreachable) -> bool:
        """charon went away: its command session closes and everything is diffed once it is
        back. True when this is news (not the same failure again)."""
        self._touch(None)
        self.charon.close()
        first = self.health.charon_reachable or not self.health.charon_error
        self.health.charon_reachable = False
        self.health.charon_error = exc.cause
        self._full_diff = True
        return first

    # -- what charon can do ---------------------------------------------------------------

    def _ask_capabilities(self, pass_id: int, stats: Mapping[str, object]) -> None:
        """What this charon can do (its algorithms; its plugins, from `stats`): each
        connection's needs are judged against it as its tunnels' states are folded."""
        try:
            algorithms = self.charon.get_algorithms()
        except CharonError as exc:
            vlog.warn(f"[{pass_id}] {self._ike} refused get-algorithms ({exc.errmsg}); what it "
                      "lacks is not checked")  # fmt: skip
            algorithms = None
        self.preflight = Preflight(
            parse_capabilities(algorithms, stats, self.health.charon_version),
            _key_algorithms(self.planner.credentials),
        )
        self._judged_credentials = self.planner.credentials
        self.lacks = {}
        self._touch(None)

    def judge_credentials(self) -> bool:
        """Certificates or a key of another algorithm (rare: a rotation) need other plugins.
        True when what is held back, or loaded, may change: the next pass diffs everything."""
        credentials = self.planner.credentials
        if credentials is self._judged_credentials:
            return False
        self._judged_credentials = credentials
        if self.preflight is None:
            return False
        algorithms = _key_algorithms(credentials)
        if algorithms == self.preflight.key_algorithms:
            return False
        self.preflight = Preflight(self.preflight.caps, algorithms)
        self._touch(None)
        self._full_diff = True
        return True

    def lacking(self, conn: ConnSpec) -> tuple[Lack, ...]:
        """What charon lacks that `conn` needs (a lookup: each distinct need is judged once)."""
        if self.preflight is None:
            return ()
        tunnels = self.planner.config.tunnels
        settings = self.planner.settings
        return self.preflight.lacking(conn_needs(
            tunnel_needs(settings.get(name, NO_SETTINGS),
                         tunnels[name].auth is not AuthMode.PSK, self._use_default_crypto)
            for name in conn.tunnels if name in tunnels
        ))  # fmt: skip

    def hold_back(self, actions: list[Action]) -> list[Action]:
        """Connections charon lacks something for stay out of it (unloaded if an earlier
        daemon loaded them): it could not negotiate them, and without their trap policies
        our block policies answer their plaintext (EPERM) instead of a doomed negotiation.
        The diff offers them again once charon has what they need."""
        if self.preflight is None:
            return actions
        kept: list[Action] = []
        for action in actions:
            if isinstance(action, LoadConn) and self.lacking(action.spec):
                if action.spec.name in self.applied.conns:
                    kept.append(UnloadConn(action.spec.name))
                continue
            kept.append(action)
        return kept

    def report_lacks(self) -> None:
        """One ERROR line per capability the connected charon lacks and a tunnel needs."""
        if self.preflight is None:
            return
        for lack in self.preflight.drain():
            if lack.capability not in self.lacks:
                self.lacks[lack.capability] = lack
                vlog.err(f"{lack.describe()}; the tunnels that need it are failed")

    def loaded_as_desired(self) -> _LoadedAsDesired:
        """The connections charon holds as we want them (for the tunnel states)."""
        return _LoadedAsDesired(self.applied.conns, self.planner.desired.conns)

    # -- carrying actions out -------------------------------------------------------------

    def execute(self, pass_id: int, actions: list[Action]) -> None:
        desired = self.planner.desired.conns
        refused = {key: why for key, why in self._refused.items() if key[0] in desired}
        self._touch(name for name in map(_conn_loaded_or_not, actions) if name is not None)
        bulk = len(actions) > BULK_ACTIONS
        if actions:
            # Where the daemon's own work on a change ends and waiting for charon begins.
            vlog.dbg(f"[{pass_id}] {len(actions)} requests to {self._ike}")
        done: Counter[str] = Counter()
        names: dict[str, list[str]] = {}
        for action, outcome in self._outcomes(actions):
            kind = type(action).__name__
            refusal = _refusal_key(action)
            if isinstance(outcome, CharonError):
                vlog.warn(f"[{pass_id}] {self._ike} refused {outcome.command} for "
                          f"{_target(action)}: {outcome.errmsg}")  # fmt: skip
                if refusal is not None:
                    refused[refusal] = f"{self._ike} refused {outcome.command}: {outcome.errmsg}"
                if isinstance(action, LoadConn) and action.spec.name in self.applied.conns:
                    # What it holds is no longer known to be what we believed: a change undone
                    # after the refusal is loaded again (and clears the refusal) at the next check.
                    self.applied.conns[action.spec.name] = None
                continue
            record(self.applied, action, outcome)
            self._forget_outcomes(action)
            if refusal is not None:
                refused.pop(refusal, None)
            if bulk:
                names.setdefault(kind, []).append(_target(action))
            else:
                vlog.info(f"[{pass_id}] {_describe(action)}")
            done[kind] += 1
        self._refused = refused
        failures: dict[str, str] = {}
        for (conn, _), why in refused.items():
            failures[conn] = why  # the last refusal of a connection's objects is reported
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
                replies = self.charon.carry_out(run)
                for done, reply in zip(run, replies, strict=True):
                    yield done, reply if isinstance(reply, CharonError) else ""
                run = []
            if action is not None:
                try:
                    yield action, self.perform(action)
                except CharonError as exc:
                    yield action, exc

    def perform(self, action: Action) -> str:
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
                vlog.warn(f"{self._ike} refused terminate for {action.conn}: {exc.errmsg}")
            try:
                self.charon.unload_conn(action.conn)
            except CharonError as exc:
                if "not found" not in exc.errmsg:
                    raise
        return ""

    def _forget_outcomes(self, action: Action) -> None:
        """A (re)loaded connection or secret makes earlier failures of that peer history."""
        if isinstance(action, LoadConn):
            self.tracker.forget(action.spec.name)
        elif isinstance(action, LoadShared):
            self.tracker.forget(action.spec.conn)
        elif isinstance(action, (TerminateIke, UnloadConn)):
            self.tracker.forget(action.conn)


def _key_algorithms(credentials: Credentials) -> frozenset[str]:
    """The public key algorithms of the key and certificates in use ("RSA", "EC", ...)."""
    certs = [*credentials.cas, *credentials.remote_certs.values()]
    if credentials.local is not None:
        certs.append(credentials.local.cert)
    return frozenset(cert.key_algorithm for cert in certs)


class _LoadedAsDesired:
    """The connections charon holds as we want them, looked up one at a time (a set of them
    would cost a pass over every connection)."""

    def __init__(
        self, applied: Mapping[str, ConnSpec | None], desired: Mapping[str, ConnSpec]
    ) -> None:
        self._applied = applied
        self._desired = desired

    def __contains__(self, name: object) -> bool:
        loaded = self._applied.get(name)  # type: ignore[call-overload]
        spec = self._desired.get(name)  # type: ignore[call-overload]
        return loaded is not None and spec is not None and (loaded is spec or loaded == spec)


def _refusal_key(action: Action) -> tuple[str, str] | None:
    """The (connection, kind) a refusal of `action` fails and its success clears."""
    if isinstance(action, LoadConn):
        return (action.spec.name, "conn")
    if isinstance(action, LoadShared):
        return (action.spec.conn, "secret")
    return None


def _conn_loaded_or_not(action: Action) -> str | None:
    """The connection whose place in charon this action changes, if any."""
    if isinstance(action, LoadConn):
        return action.spec.name
    if isinstance(action, (TerminateIke, UnloadConn)):
        return action.conn
    return None


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
        owners = ", ".join(printable(owner) for owner in action.spec.owners)
        return f"loaded shared secret {action.spec.id} (owners {owners})"
    if isinstance(action, LoadConn):
        tunnels = ", ".join(printable(tunnel) for tunnel in action.spec.tunnels)
        return f"loaded connection {action.spec.name} (tunnels {tunnels})"
    if isinstance(action, TerminateIke):
        return f"closed IKE_SAs of {action.conn} so that new credentials take effect"
    if isinstance(action, UnloadConn):
        return f"unloaded connection {action.conn} (peer {naming.remote_of_conn(action.conn)})"
    return f"unloaded shared secret {action.id}"
