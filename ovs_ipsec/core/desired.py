"""Incremental planning: the parsed model and desired state kept between OVSDB changes, with
only what a change touches recomputed — by the same pure functions a full plan uses (parse_tunnel,
admit, plan_peer, protect_*), so both always agree (a property test checks it).

A change to one port re-parses that port, re-plans its peer's connection and its own protection
policies, and reports exactly those names for the reconciler to diff. A change to other_config
(certificates, ipsec_skb_mark, fail-open) re-evaluates every IPsec port. Work per change is thus
proportional to what changed, not to the number of tunnels.

One tunnel's trouble stays its own: input VICI cannot carry (vici_wire.Unsendable) makes the
tunnels of that peer invalid with the reason, and any other exception while planning a tunnel,
a peer or the credentials makes what it was about invalid ("internal error"), fail closed, and
is handed to the daemon in `Delta.internal_errors` to log with its traceback. A bug met by one
odd row must not stop the daemon, and with it every tunnel's protection, at every restart.

One file, over 400 lines: every step reads and updates the same indexes of the Planner (rows,
tunnels, members, conflicts, policy counts); split, they would be a dozen dicts passed around.

May import: model, parse, naming, credentials, admission, connections, block_policies,
ike_options.settings, vici_wire, stdlib.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ovs_ipsec.core import naming
from ovs_ipsec.core.admission import admit
from ovs_ipsec.core.block_policies import (
    PolicySpec,
    protect_invalid,
    protect_skb_mark,
    protect_tunnel,
)
from ovs_ipsec.core.connections import (
    ConnSpec,
    Desired,
    KeySpec,
    SharedSpec,
    plan_keys,
    plan_peer,
)
from ovs_ipsec.core.credentials import Credentials, FileContent, file_digests, resolve
from ovs_ipsec.core.ike_options import settings as ike_settings
from ovs_ipsec.core.model import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    UDP_TUNNEL_PORTS,
    AuthMode,
    Config,
    GlobalConfig,
    InterfaceRow,
    Invalid,
    InvalidTunnel,
    RowId,
    Tunnel,
)
from ovs_ipsec.core.parse import (
    caveat,
    is_ipsec_port,
    parse_global,
    parse_tunnel,
    row_wire_port,
)
from ovs_ipsec.core.vici_wire import Unsendable

PSK = AuthMode.PSK
ReadFiles = Callable[[Iterable[str]], Mapping[str, FileContent]]
# An Interface row as OVSDB holds it now, by uuid (None: gone). The rows stay where they are
# (the OVS IDL's copy); the planner keeps only their names and wire ports.
ReadRow = Callable[[RowId], InterfaceRow | None]
INTERNAL_ERROR = Invalid("ipsec", "internal error while planning (the daemon's log has details)")


@dataclass
class Delta:
    """What one update may have changed: the reconciler diffs only these."""

    conns: set[str] = field(default_factory=set)
    shared: set[str] = field(default_factory=set)
    keys: bool = False
    tunnels: set[str] = field(default_factory=set)
    policies_added: set[PolicySpec] = field(default_factory=set)
    policies_removed: set[PolicySpec] = field(default_factory=set)
    # The removed policies that belonged to ports deleted from OVSDB (and only to them): those
    # are the ones worth keeping a while, for a port OVS may be re-creating.
    policies_of_deleted: set[PolicySpec] = field(default_factory=set)
    # IPsec ports whose configuration version moved: appeared, changed or gone (upstream's
    # "Tunnel ... appeared in OVSDB" lines; the planner's `versions` says which).
    versioned: set[str] = field(default_factory=set)
    # Unexpected exceptions met while planning, each with what it was about (a tunnel, a peer,
    # the credentials); that part is invalid, and the daemon logs each one's traceback.
    internal_errors: list[tuple[str, Exception]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.conns or self.shared or self.keys or self.tunnels
            or self.policies_added or self.policies_removed
        )  # fmt: skip


def keep_valid_mark(new: GlobalConfig, current: GlobalConfig) -> GlobalConfig:
    """A malformed ipsec_skb_mark is reported (it stays in `errors`) and the mark in force stays:
    a typo must never silently remove protection that is in place."""
    if any(e.key == "ipsec_skb_mark" for e in new.errors):
        return dataclasses.replace(new, skb_mark=current.skb_mark)
    return new


class Planner:
    def __init__(
        self, read_files: ReadFiles, read_row: ReadRow, *, use_default_crypto: bool = False
    ) -> None:
        self.read_files = read_files
        self.use_default_crypto = use_default_crypto
        # Read again only when every IPsec port is parsed again (a global change): a copy of
        # each row here, beside the IDL's, would be a fifth of the planner's state.
        self.read_row = read_row
        self.row_names: dict[RowId, str] = {}  # OVSDB row uuid -> interface name
        self.row_of: dict[str, RowId] = {}  # interface name -> row uuid
        # (IP protocol, port) of the rows sent to a port, as counted in `port_counts`.
        self.row_ports: dict[RowId, tuple[int, int]] = {}
        self.other_config: Mapping[str, str] = {}
        self.global_config = GlobalConfig()
        self.credentials = Credentials()
        # What the files in use held, as digests: only change detection needs them, and the
        # bytes (the private key among them) are dropped once resolved. The key itself stays,
        # as a Secret in `credentials`: charon loses it at each restart, and it is loaded again
        # from memory, since the file may have changed or gone in the meantime.
        self.file_digests: Mapping[str, str] = {}
        self.warnings: tuple[str, ...] = ()
        self._resolved = False
        # Parse results of IPsec ports, and the views a Config is made of.
        self.tunnels: dict[str, Tunnel] = {}
        self.parse_invalid: dict[str, InvalidTunnel] = {}
        self.caveats: dict[str, str] = {}  # valid tunnels that will carry nothing, and why
        # Per IPsec port, the version of its configuration (upstream's `v<N>`, display only).
        self.versions: dict[str, int] = {}
        # (IP protocol, port) of every tunnel sent to a port (UDP, STT's TCP), IPsec or not.
        self.port_counts: Counter[tuple[int, int]] = Counter()
        # Admission (options, credentials) and per-peer plans.
        # Translated ipsec_* options of admitted tunnels that have any (absent: NO_SETTINGS).
        self.settings: dict[str, ike_settings.IkeSettings] = {}
        self.rejected: dict[str, InvalidTunnel] = {}
        self.peer_of: dict[str, str] = {}
        # Tuples, not sets: most peers have one tunnel, and a set costs four times as much.
        self.members: dict[str, tuple[str, ...]] = {}
        self.conflicts: dict[str, dict[str, InvalidTunnel]] = {}
        self.conns: dict[str, ConnSpec] = {}
        self.shared: dict[str, SharedSpec] = {}
        self.keys: dict[str, KeySpec] = {}
        self.invalid: dict[str, InvalidTunnel] = {}
        # Protection: policies per IPsec port (counted: two ports may want the same policy).
        self.tunnel_policies: dict[str, tuple[PolicySpec, ...]] = {}
        self.mark_policies: tuple[PolicySpec, ...] = ()
        self.policy_counts: Counter[PolicySpec] = Counter()

    # -- views ------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return Config(
            global_config=self.global_config,
            tunnels=self.tunnels,
            invalid=self.parse_invalid,
            tunnel_ports=self._ports(IPPROTO_UDP),
            tcp_tunnel_ports=self._ports(IPPROTO_TCP),
            versions=self.versions,
        )

    @property
    def desired(self) -> Desired:
        return Desired(conns=self.conns, shared=self.shared, keys=self.keys, invalid=self.invalid)

    @property
    def policies(self) -> AbstractSet[PolicySpec]:
        """Every policy wanted now: a live view (a set of thousands would be a copy to keep);
        each update's Delta says which policies came and went."""
        return self.policy_counts.keys()

    def wants(self, spec: PolicySpec) -> bool:
        """Is this policy among `policies` (without building that set)?"""
        return spec in self.policy_counts

    # -- updates ----------------------------------------------------------------------------

    def update(
        self,
        changed_rows: Mapping[RowId, InterfaceRow | None],
        other_config: Mapping[str, str] | None,
        now: dt.datetime,
        *,
        reread_files: bool = False,
    ) -> Delta:
        """Apply changed Interface rows (uuid -> row, None for a deleted row) and, when given,
        the new other_config. `reread_files` checks certificate files for new contents."""
        delta = Delta()
        affected: set[str] = set()
        everything = False
        ports_before = set(self.port_counts)

        if other_config is not None and other_config != self.other_config:
            self.other_config = dict(other_config)
            global_config = keep_valid_mark(parse_global(other_config), self.global_config)
            if global_config != self.global_config:
                self.global_config = global_config
                everything = True

        for uuid, row in changed_rows.items():
            old_name = self.row_names.pop(uuid, None)
            if old_name is not None:
                affected.add(old_name)
                self._count_port(self.row_ports.pop(uuid, None), -1)
                if self.row_of.get(old_name) == uuid:
                    del self.row_of[old_name]
            if row is not None:
                self.row_names[uuid] = row.name
                self.row_of[row.name] = uuid
                affected.add(row.name)
                port = row_wire_port(row)
                if port is not None:
                    self.row_ports[uuid] = port
                    self._count_port(port, +1)

        if everything:
            # Every IPsec port is one of these: each parse lands in one or the other.
            affected |= set(self.tunnels) | set(self.parse_invalid)

        def cert_names() -> set[str]:
            return {n for n in affected if n in self.tunnels and self.tunnels[n].auth is not PSK}

        # A certificate tunnel coming, going or changing may need other files.
        cert_touched = bool(cert_names())
        for name in affected:
            if self._reparse(name, changed_rows, delta, global_changed=everything):
                delta.versioned.add(name)
        cert_touched = cert_touched or bool(cert_names())
        if (everything or cert_touched or reread_files) and self._refresh_credentials(now, delta):
            affected |= {n for n, t in self.tunnels.items() if t.auth is not PSK}

        peers: set[str] = set()
        for name in affected:
            peers |= self._readmit(name, delta)
        for peer in peers:
            self._replan_peer(peer, delta)
        self._refresh_invalid(affected | {n for p in peers for n in self.members.get(p, ())}, delta)
        self._refresh_keys(delta)

        if everything:
            affected |= set(self.tunnel_policies)
        deleted = {name for name in affected if name not in self.row_of}
        for name in affected:
            self._reprotect(name, delta, deleted=name in deleted)
        if everything or set(self.port_counts) != ports_before:
            self._reprotect_marks(delta)
        delta.tunnels |= affected
        return delta

    def reset_rows(self, rows: Mapping[RowId, InterfaceRow]) -> dict[RowId, InterfaceRow | None]:
        """The changes that turn the known rows into `rows` (a full snapshot): every row of it
        (their contents are not kept to compare), and the rows no longer in it as gone."""
        changes: dict[RowId, InterfaceRow | None] = {
            uuid: None for uuid in self.row_names if uuid not in rows
        }
        changes.update(rows)
        return changes

    # -- steps --------------------------------------------------------------------------------

    def _ports(self, protocol: int) -> tuple[int, ...]:
        return tuple(sorted(port for proto, port in self.port_counts if proto == protocol))

    def _count_port(self, port: tuple[int, int] | None, sign: int) -> None:
        if port is not None:
            self.port_counts[port] += sign
            if self.port_counts[port] <= 0:
                del self.port_counts[port]

    def _reparse(
        self,
        name: str,
        changed_rows: Mapping[RowId, InterfaceRow | None],
        delta: Delta,
        *,
        global_changed: bool = False,
    ) -> bool:
        """Parse the port again (its row from this update's, else as OVSDB holds it); True if
        its version moved (appeared, changed or gone)."""
        before_valid = self.tunnels.pop(name, None)
        before = self.parse_invalid.pop(name, None) or before_valid
        self.caveats.pop(name, None)
        uuid = self.row_of.get(name)
        row: InterfaceRow | None = None
        if uuid is not None:
            row = changed_rows[uuid] if uuid in changed_rows else self.read_row(uuid)
        try:
            if row is None or not is_ipsec_port(row.options):
                return self.versions.pop(name, None) is not None
            parsed = parse_tunnel(row, self.global_config)
        except Exception as exc:
            delta.internal_errors.append((name, exc))
            parsed = _unparsed(name, row)
        moved = parsed != before or global_changed or name not in self.versions
        if moved:
            self.versions[name] = self.versions.get(name, 0) + 1
        if isinstance(parsed, Tunnel):
            self.tunnels[name] = parsed
            if (warning := caveat(parsed)) is not None:
                self.caveats[name] = warning
        else:
            self.parse_invalid[name] = parsed
        return moved

    def _refresh_credentials(self, now: dt.datetime, delta: Delta) -> bool:
        """Re-read the certificate files in use; True if the credentials changed."""
        paths = set()
        cert_tunnels = [t for t in self.tunnels.values() if t.auth is not AuthMode.PSK]
        if cert_tunnels:
            g = self.global_config
            paths.update(p for p in (g.certificate, g.private_key, g.ca_cert) if p)
            paths.update(t.remote_cert for t in cert_tunnels if t.remote_cert)
        contents = self.read_files(sorted(paths)) if paths else {}
        digests = file_digests(contents)
        if digests == self.file_digests and self._resolved:
            return False
        self.file_digests = digests
        self._resolved = True
        try:
            credentials = resolve(self.config, contents, now)
        except Exception as exc:
            # Every certificate tunnel is refused for it (admission names local_errors).
            delta.internal_errors.append(("credentials", exc))
            failed = dataclasses.replace(INTERNAL_ERROR, key="certificate")
            credentials = Credentials(local_errors=(failed,), ca_errors=(failed,))
        self.warnings = credentials.warnings
        if credentials == self.credentials:
            return False
        self.credentials = credentials
        return True

    def _readmit(self, name: str, delta: Delta) -> set[str]:
        """Re-decide whether `name` is loadable; returns the peers whose plan may change."""
        peers = set()
        old_peer = self.peer_of.pop(name, None)
        if old_peer is not None:
            self.members[old_peer] = tuple(n for n in self.members[old_peer] if n != name)
            peers.add(old_peer)
        self.settings.pop(name, None)
        self.rejected.pop(name, None)
        tunnel = self.tunnels.get(name)
        if tunnel is None:
            return peers
        try:
            translated, rejected = admit(tunnel, self.credentials, self.use_default_crypto)
        except Exception as exc:
            delta.internal_errors.append((name, exc))
            translated, rejected = None, _refused(tunnel, INTERNAL_ERROR)
        if rejected is not None:
            self.rejected[name] = rejected
            return peers
        assert translated is not None
        if translated is not ike_settings.NO_SETTINGS:  # absent means none (most tunnels)
            self.settings[name] = translated
        self.peer_of[name] = tunnel.remote_ip
        current = self.members.get(tunnel.remote_ip, ())
        if name not in current:
            self.members[tunnel.remote_ip] = (*current, name)
        peers.add(tunnel.remote_ip)
        return peers

    def _replan_peer(self, peer: str, delta: Delta) -> None:
        conn_name = naming.conn_name(peer)
        secret_id = naming.shared_id(peer)
        names = sorted(self.members.get(peer, ()))
        if not names:
            self.members.pop(peer, None)
            self.conflicts.pop(peer, None)
            if self.conns.pop(conn_name, None) is not None:
                delta.conns.add(conn_name)
            if self.shared.pop(secret_id, None) is not None:
                delta.shared.add(secret_id)
            return
        group = [self.tunnels[n] for n in names]
        try:
            conn, secret, conflicts = plan_peer(
                peer, group, self.settings, self.credentials, self.use_default_crypto
            )
        except Exception as exc:
            # One connection carries the whole group: none of it can be loaded.
            if isinstance(exc, Unsendable):
                why = Invalid("ipsec", f"cannot be given to charon: {exc}")
            elif isinstance(exc, UnicodeError):  # a name with a lone surrogate (naming.py)
                why = Invalid("ipsec", "cannot be given to charon: a name is not valid unicode")
            else:
                delta.internal_errors.append((f"peer {peer}", exc))
                why = INTERNAL_ERROR
            self.conflicts[peer] = {t.name: _refused(t, why) for t in group}
            if self.conns.pop(conn_name, None) is not None:
                delta.conns.add(conn_name)
            if self.shared.pop(secret_id, None) is not None:
                delta.shared.add(secret_id)
            return
        if conflicts:
            self.conflicts[peer] = conflicts
        else:
            self.conflicts.pop(peer, None)  # thousands of peers, nearly all without conflicts
        # Keyed by the specs' own name strings: one string per name, whoever holds it.
        if self.conns.get(conn_name) != conn:
            self.conns[conn.name] = conn
            delta.conns.add(conn.name)
        if secret is None:
            if self.shared.pop(secret_id, None) is not None:
                delta.shared.add(secret_id)
        elif self.shared.get(secret_id) != secret:
            self.shared[secret.id] = secret
            delta.shared.add(secret.id)

    def _refresh_invalid(self, names: set[str], delta: Delta) -> None:
        for name in names:
            peer = self.peer_of.get(name)
            entry = (
                self.parse_invalid.get(name)
                or self.rejected.get(name)
                or (self.conflicts.get(peer, {}).get(name) if peer is not None else None)
            )
            if entry is None:
                if self.invalid.pop(name, None) is not None:
                    delta.tunnels.add(name)
            elif self.invalid.get(name) != entry:
                self.invalid[name] = entry
                delta.tunnels.add(name)

    def _refresh_keys(self, delta: Delta) -> None:
        uses_key = any(
            self.tunnels[n].auth is not AuthMode.PSK
            for names in self.members.values()
            for n in names
        ) if self.credentials.local is not None else False  # fmt: skip
        keys = plan_keys(self.credentials, uses_key)
        if keys != self.keys:
            self.keys = keys
            delta.keys = True

    def _reprotect(self, name: str, delta: Delta, *, deleted: bool = False) -> None:
        old = self.tunnel_policies.pop(name, ())
        new: tuple[PolicySpec, ...] = ()
        if not self.global_config.fail_open:
            if name in self.tunnels:
                new = protect_tunnel(self.tunnels[name])
            elif name in self.parse_invalid:
                new = protect_invalid(self.parse_invalid[name])
        if new:
            self.tunnel_policies[name] = new
        if old != new:
            removed = self._recount(old, new, delta)
            if deleted:
                delta.policies_of_deleted |= removed

    def _reprotect_marks(self, delta: Delta) -> None:
        mark = self.global_config.skb_mark
        new = (
            protect_skb_mark(mark, self._ports(IPPROTO_UDP), self._ports(IPPROTO_TCP))
            if mark is not None
            else ()
        )
        if new != self.mark_policies:
            self._recount(self.mark_policies, new, delta)
            self.mark_policies = new

    def _recount(
        self, old: Iterable[PolicySpec], new: Iterable[PolicySpec], delta: Delta
    ) -> set[PolicySpec]:
        """Count `old` out and `new` in; returns the policies no port wants any more."""
        removed = set()
        for spec in old:
            self.policy_counts[spec] -= 1
            if self.policy_counts[spec] <= 0:
                del self.policy_counts[spec]
                delta.policies_removed.add(spec)
                delta.policies_added.discard(spec)
                removed.add(spec)
        for spec in new:
            if self.policy_counts[spec] == 0:
                delta.policies_added.add(spec)
                delta.policies_removed.discard(spec)
                delta.policies_of_deleted.discard(spec)
                removed.discard(spec)
            self.policy_counts[spec] += 1
        return removed


def _refused(tunnel: Tunnel, why: Invalid) -> InvalidTunnel:
    """`tunnel` invalid for `why`, what is known of its traffic kept (its blocks stay)."""
    return InvalidTunnel(tunnel.name, (why,), tunnel.type, tunnel.remote_ip, tunnel.dst_port)


def _unparsed(name: str, row: InterfaceRow | None) -> InvalidTunnel:
    """A port whose parsing failed unexpectedly: blocked as an unknown type towards its
    remote_ip when that reads as an address (fail closed), otherwise nothing is known."""
    remote_ip: str | None = None
    try:
        if row is not None:
            remote_ip = str(ipaddress.ip_address(row.options.get("remote_ip", "")))
    except ValueError:
        pass
    return InvalidTunnel(name, (INTERNAL_ERROR,), None, remote_ip, None)


__all__ = ["Delta", "Planner", "UDP_TUNNEL_PORTS"]
