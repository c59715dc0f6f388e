"""Thin adapter over Libreswan's pluto: our conn include and secrets file, `ipsec addconn` and
`ipsec whack` through pluto's control socket, each run bounded by the command timeout.

It is the `IkeDaemon` (adapters/ike_daemon.py) the applier and the SA watch use for charon,
so everything above it is shared. Our files hold only our entries and are written whole and
atomically, root's alone (`files.write_private`); a PSK goes only into the secrets file (never
into argv or a log) and pluto is told to re-read it. Only conns whose names are ours
(`libreswan_conf.split_name`) are listed, deleted or touched. `stats()`'s `since` is the
identity of pluto's control socket, which a restarted pluto creates anew: that is how the
applier tells a pluto restart (and reloads everything).

Failures become `CharonError` (pluto refused: the message is its reply) or `CharonUnreachable`
(no control socket, a timeout), the IKE daemon's two kinds of failure for the daemon.

Over 400 lines because it is one `IkeDaemon`: its reads (SAs, the probe for reasons, re-routing
lost traps) and writes (files, addconn, whack) share what our files hold and what pluto was
given; the certificates are adapters/nss.py's, the words core/libreswan_conf.py's.

May import: files, nss, proc, core.libreswan_conf, core.credentials, core.pluto_status,
core.connections, core.model, core.ike_options.settings, core.naming, core.outcomes, core.sas,
core.reconcile, errors, stdlib.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ovs_ipsec.adapters import proc
from ovs_ipsec.adapters.files import write_private
from ovs_ipsec.adapters.nss import Certificates
from ovs_ipsec.core import libreswan_conf, naming, pluto_status
from ovs_ipsec.core.connections import AuthClass, ConnSpec, KeySpec, SharedSpec
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ike_options.settings import IkeSettings
from ovs_ipsec.core.libreswan_conf import PlutoConn
from ovs_ipsec.core.model import Tunnel
from ovs_ipsec.core.outcomes import Outcome
from ovs_ipsec.core.reconcile import Action, LoadConn, LoadShared, UnloadShared
from ovs_ipsec.core.sas import IkeSa
from ovs_ipsec.errors import CharonError, CharonUnreachable, CommandError

DEFAULT_IPSEC_CONF = "/etc/ipsec.conf"
DEFAULT_IPSEC_SECRETS = "/etc/ipsec.secrets"
DEFAULT_IPSEC_D = "/var/lib/ipsec/nss"
DEFAULT_IPSEC_CTL = "/run/pluto/pluto.ctl"
DEFAULT_IPSEC = "/usr/sbin/ipsec"
DEFAULT_TOOLS = "/usr/libexec/ipsec"  # whack and addconn (what `ipsec whack` runs)
# A peer's conn that is not up is initiated (to learn why) at most this often, each wait bounded.
PROBE_INTERVAL = 30.0
PROBE_TIMEOUT = 2.0
REROUTE_BATCH = 32
ADDCONN_BATCH = 500  # names per addconn call (argv stays far below the kernel's limit)

# What the planner knows of a ConnSpec's tunnels and of our certificates (the shell wires it to
# the Planner).
Context = Callable[[], tuple[Mapping[str, Tunnel], Mapping[str, IkeSettings], Credentials]]


class Pluto:
    def __init__(
        self,
        *,
        tools: str,
        conf: str,
        root_conf: str,
        secrets: str,
        ctl: str,
        timeout: float,
        context: Context,
        certs: Certificates | None = None,
        use_default_crypto: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.tools = tools
        self.conf = conf
        self.root_conf = root_conf
        self.secrets = secrets
        self.ctl = ctl
        self.timeout = timeout
        self.context = context
        self.certs = certs
        self.use_default_crypto = use_default_crypto
        self.on_wait = on_wait
        self._connected = False
        # What our files hold: pluto conns by ConnSpec name, secrets by id.
        self._conns: dict[str, tuple[PlutoConn, ...]] = {}
        self._secrets: dict[str, SharedSpec] = {}
        # The text each pluto conn was added with (from our file after a restart of the
        # daemon): an unchanged conn is not added again, so its SAs live on.
        self._added: dict[str, str] = {}
        self._version = ""
        self._since = ""  # the identity of the control socket last seen (stats)
        self._reroute_from = 0  # where the next round of re-routing idle conns starts
        self._probed: dict[str, float] = {}  # ConnSpec name -> when it was last initiated
        # ConnSpecs pluto listed a state of since they were added: traffic wanted them up.
        self._attempted: set[str] = set()

    # -- the session ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def busy(self) -> bool:
        return False

    def fileno(self) -> int | None:
        return None

    def connect(self) -> None:
        """pluto answers on its control socket; what our files hold is read back (the conn
        texts, the secret ids: never a secret)."""
        self._connected = False
        listed = self._loaded()
        self._connected = True
        sections = libreswan_conf.conf_sections(_read(self.conf))
        self._added = {name: text for name, text in sections.items() if name in listed}
        self._conns = {}
        for name, text in self._added.items():
            parts = libreswan_conf.split_name(name)
            if parts is not None:
                conn = PlutoConn(name, parts[0], parts[1], "", text)
                self._conns[parts[0]] = (*self._conns.get(parts[0], ()), conn)
        self._secrets = libreswan_conf.secrets_of(_read(self.secrets))

    def close(self) -> None:
        self._connected = False

    # -- reads ----------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        if not self._version:
            # "Libreswan 4.10" (whack --version prints its own, which is pluto's release)
            words = self._whack("--version").stdout.split()
            self._version = words[1] if len(words) > 1 else ""
        return {"daemon": "Libreswan", "version": self._version}

    def stats(self) -> dict[str, Any]:
        try:
            st = os.stat(self.ctl)
        except OSError as exc:
            self.close()
            raise CharonUnreachable("stats", f"{self.ctl}: {exc.strerror}", "pluto") from exc
        since = f"{st.st_ino}.{st.st_mtime_ns}"
        if self._since and since != self._since:
            self._added = {}  # a new pluto holds none of our conns
        self._since = since
        return {"uptime": {"since": since}}

    def get_algorithms(self) -> dict[str, Any]:
        return {}  # nothing is claimed missing: pluto refuses what it lacks when a conn is added

    def owned_conns(self) -> frozenset[str]:
        conns = set()
        for name in self._loaded():
            parts = libreswan_conf.split_name(name)
            if parts is not None:
                conns.add(parts[0])
        return frozenset(conns)

    def owned_shared(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def key_ids(self) -> frozenset[str]:
        return frozenset() if self.certs is None else self.certs.key_ids()

    def listed_sas(self) -> dict[str, tuple[IkeSa, ...]]:
        states = self._whack("--showstates").stdout
        traffic = self._whack("--trafficstatus").stdout
        sas = pluto_status.parse_states(states, traffic)
        self._attempted.update(sas)
        self._reroute(sas)
        return {
            conn: tuple(self._with_ends(conn, sa) for sa in found) for conn, found in sas.items()
        }

    def _with_ends(self, conn: str, sa: IkeSa) -> IkeSa:
        """An SA with its ends and identities (pluto's state listing has neither; our conn
        text says them)."""
        group = self._conns.get(conn)
        if not group:
            return sa
        local, remote, local_id, remote_id = libreswan_conf.endpoints(group[0].text)
        return dataclasses.replace(
            sa, local_host=local, remote_host=remote or sa.remote_host, local_id=local_id,
            remote_id=remote_id,
        )  # fmt: skip

    def _reroute(self, sas: Mapping[str, tuple[IkeSa, ...]]) -> None:
        """pluto 4.10 loses a conn's trap policy when an acquire it answered fails (it deletes
        its "narrow hold", which is the trap) though `--status` still says routed: until it is
        routed again our block answers that traffic (fail-closed) and nothing negotiates. A
        failure can come and go between two listings, so every conn without an SA is routed
        again in turn (`--route` is idempotent; 1-4 ms each), those traffic asked for first, at
        most REROUTE_BATCH per listing."""
        idle = [c for c in sorted(self._conns) if self._conns[c] and not sas.get(c)]
        if not idle:
            return
        first = [c for c in idle if c in self._attempted]
        rest = [c for c in idle if c not in self._attempted]
        start = self._reroute_from % len(rest) if rest else 0
        due = first + rest[start:] + rest[:start]
        chosen = due[:REROUTE_BATCH]
        self._reroute_from = start + len(chosen) - min(len(first), len(chosen))
        for conn in chosen:
            for pluto_conn in self._conns[conn]:
                with contextlib.suppress(CharonError):
                    self._whack("--name", pluto_conn.name, "--route", command="route")

    def failures(self, sas: Mapping[str, tuple[IkeSa, ...]]) -> dict[str, Outcome]:
        """pluto has no events: a peer's conn that negotiated since it was added (traffic hit
        its trap) but has no established IKE SA now is initiated synchronously (at most one
        per listing, each at most every PROBE_INTERVAL, bounded by PROBE_TIMEOUT), and pluto's
        reply tells why it fails. A conn no traffic asked for is left alone, as charon's."""
        now = time.monotonic()
        for conn in sorted(self._attempted, key=lambda c: self._probed.get(c, 0.0)):
            if any(sa.is_established for sa in sas.get(conn, ())) or not self._conns.get(conn):
                continue
            if now - self._probed.get(conn, -PROBE_INTERVAL) < PROBE_INTERVAL:
                continue
            self._probed[conn] = now
            first = self._conns[conn][0].name
            argv = (os.path.join(self.tools, "whack"), "--ctlsocket", self.ctl, "--initiate",
                    "--name", first)  # fmt: skip
            try:
                reply = proc.run(argv, timeout=PROBE_TIMEOUT, check=False).stdout
            except CommandError:
                return {conn: pluto_status.unreachable(naming.remote_of_conn(conn),
                                                       PROBE_TIMEOUT)}  # fmt: skip
            outcome = pluto_status.outcome_of(reply)
            return {} if outcome is None else {conn: outcome}
        return {}

    def _loaded(self) -> frozenset[str]:
        """Our conns pluto holds; those it was asked to bring up count as attempted (the
        probe in `failures` then tells why they are not up)."""
        status = self._whack("--status").stdout
        for name in pluto_status.asked_up(status):
            parts = libreswan_conf.split_name(name)
            if parts is not None and parts[0] in self._conns:
                self._attempted.add(parts[0])
        return pluto_status.loaded_conns(status)

    # -- writes ---------------------------------------------------------------------------

    def carry_out(self, actions: Sequence[Action]) -> list[dict[str, Any] | CharonError]:
        """Loads and unloads of conns and secrets, one outcome per action: our files are
        written once, then pluto re-reads the secrets and adds and routes each changed conn."""
        outcomes: list[dict[str, Any] | CharonError] = [{} for _ in actions]
        secrets_changed = False
        to_add: list[tuple[int, PlutoConn]] = []
        tunnels, settings, credentials = self.context()
        for index, action in enumerate(actions):
            if isinstance(action, LoadShared):
                self._secrets[action.spec.id] = action.spec
                secrets_changed = True
            elif isinstance(action, UnloadShared):
                self._secrets.pop(action.id, None)
                secrets_changed = True
            elif isinstance(action, LoadConn):
                # A changed conn negotiates anew: what an earlier probe found is history.
                self._attempted.discard(action.spec.name)
                self._probed.pop(action.spec.name, None)
                refusal = self._plan_conn(action.spec, tunnels, settings, credentials)
                if isinstance(refusal, CharonError):
                    outcomes[index] = refusal
                    continue
                to_add.extend((index, conn) for conn in refusal)
        if secrets_changed:
            refused = self._reread_secrets()
            if refused is not None:
                for index, action in enumerate(actions):
                    if isinstance(action, (LoadShared, UnloadShared)):
                        outcomes[index] = refused
        if to_add:
            try:
                self._write_conf()
            except OSError as exc:
                refusal = CharonError("load-conn", f"cannot write {self.conf}: {exc.strerror}")
                for index, _ in to_add:
                    outcomes[index] = refusal
                to_add = []
        changed = [(i, c) for i, c in to_add if self._added.get(c.name) != c.text]
        for start in range(0, len(changed), ADDCONN_BATCH):
            batch = changed[start : start + ADDCONN_BATCH]
            for (index, _), refusal in zip(batch, self._add([c for _, c in batch]), strict=True):
                if refusal is not None:
                    outcomes[index] = refusal
        if to_add and self.certs is not None:
            self.certs.prune([c.text for group in self._conns.values() for c in group])
        return outcomes

    def _reread_secrets(self) -> CharonError | None:
        """Our secrets file written whole, and pluto told to read it again."""
        text = libreswan_conf.secrets_text(self._secrets.values())
        try:
            write_private(self.secrets, text.encode("utf-8"))
        except OSError as exc:
            return CharonError("load-shared", f"cannot write {self.secrets}: {exc.strerror}")
        try:
            self._whack("--rereadsecrets")
        except CharonError as exc:
            return exc
        return None

    def _plan_conn(
        self,
        spec: ConnSpec,
        tunnels: Mapping[str, Tunnel],
        settings: Mapping[str, IkeSettings],
        credentials: Credentials,
    ) -> tuple[PlutoConn, ...] | CharonError:
        nss_names = None
        if spec.auth is not AuthClass.PSK:
            try:
                nss_names = self._certificates(spec, tunnels, credentials)
            except CharonError as exc:
                return exc
        conns = libreswan_conf.render_conns(
            spec, tunnels, settings, use_default_crypto=self.use_default_crypto, nss=nss_names
        )
        # A setting pluto cannot honour refuses the peer's conn (its tunnels stay blocked, the
        # reason names the option), as charon refuses what it cannot take: never ignored.
        unhonoured = sorted({f"{c.tunnel}: {key}" for c in conns for key in c.unhonoured})
        if unhonoured:
            which = ", ".join(unhonoured)
            return CharonError("load-conn", f"Libreswan has no equivalent of the setting of "
                               f"{which} (remove it, or use strongSwan)")  # fmt: skip
        stale = {c.name for c in self._conns.get(spec.name, ())} - {c.name for c in conns}
        self._conns[spec.name] = conns
        for name in sorted(stale):
            self._delete(name)
        return conns

    def _add(self, conns: Sequence[PlutoConn]) -> list[CharonError | None]:
        """Add (or replace) `conns` with one addconn (it parses the whole file for each call:
        200 ms at 1,000 conns, so names go in batches), then route each: auto= in the file is
        not acted on for a named conn, and a replaced conn is unrouted. addconn exits 0 when a
        conn did not load, so its words are read."""
        names = [c.name for c in conns]
        try:
            reply = self._run("addconn", ("--ctlsocket", self.ctl, "--config", self.root_conf,
                                          *names), "load-conn")  # fmt: skip
            text = reply.stdout + reply.stderr
        except CharonError as exc:
            return [exc] * len(conns)
        refusals: list[CharonError | None] = []
        for conn in conns:
            failed = pluto_status.addconn_failure(text, conn.name)
            if failed is not None:
                refusals.append(CharonError("load-conn", failed))
                continue
            try:
                self._whack("--name", conn.name, "--route", command="route")
            except CharonError as exc:
                refusals.append(exc)
                continue
            self._added[conn.name] = conn.text
            refusals.append(None)
        return refusals

    def _delete(self, name: str) -> None:
        self._added.pop(name, None)
        with contextlib.suppress(CharonError):  # not there: nothing to delete
            self._whack("--name", name, "--delete", command="unload-conn")

    def unload_conn(self, name: str) -> None:
        """Delete every pluto conn of ConnSpec `name` (its SAs with it) and drop it from our
        include."""
        self._attempted.discard(name)
        tracked = self._conns.pop(name, None)
        if tracked is not None:
            # Ours since connect() or our own load, stale children deleted on each load: no
            # listing (at 1,000 conns `whack --status` is 225 ms, once per removed peer).
            listed = {c.name for c in tracked}
        else:
            # Left by an earlier daemon or outside our file: only pluto's listing names them.
            listed = {
                n for n in self._loaded() if (libreswan_conf.split_name(n) or ("",))[0] == name
            }
        for pluto_name in sorted(listed):
            self._delete(pluto_name)
        self._write_conf()

    def terminate_ike(self, conn: str) -> None:
        """Delete the states of ConnSpec `conn` (new credentials take effect at the next
        negotiation, which its routed conns start on the next packet)."""
        states = self._whack("--showstates").stdout
        for serial in pluto_status.serials_of(states, conn):
            with contextlib.suppress(CharonError):  # gone meanwhile
                self._whack("--deletestate", str(serial), command="terminate")

    def unload_shared(self, secret_id: str) -> None:
        (outcome,) = self.carry_out([UnloadShared(secret_id)])
        if isinstance(outcome, CharonError):
            raise outcome

    # -- certificates (adapters/nss.py) -----------------------------------------------------

    def _certificates(
        self, spec: ConnSpec, tunnels: Mapping[str, Tunnel], credentials: Credentials
    ) -> libreswan_conf.NssNames:
        if self.certs is None:
            raise CharonError("load-conn", "no NSS database for certificates (--ipsec-d)")
        return self.certs.for_conn(spec, tunnels, credentials)

    def load_key(self, spec: KeySpec) -> str:
        if self.certs is None:
            raise CharonError("load-key", "no NSS database for certificates (--ipsec-d)")
        return self.certs.load_key(spec, self.context()[2])

    def unload_key(self, key_id: str) -> None:
        if self.certs is not None:
            self.certs.unload_key(key_id)

    def empty_files(self) -> None:
        """Our files with no entries (before a restart of pluto at start-up, as upstream)."""
        self._conns, self._secrets = {}, {}
        write_private(self.secrets, libreswan_conf.secrets_text(()).encode("utf-8"))
        self._write_conf()

    def remove_files(self) -> None:
        """`exit` with cleanup: our include and secrets leave with our conns, our certificates
        and key with them (as upstream's). A conn file that is the root ipsec.conf itself
        (upstream's default) is left empty instead: pluto reads it when it starts."""
        self._conns, self._secrets = {}, {}
        if self.certs is not None:
            self.certs.remove_all()
        for path in (self.conf, self.secrets):
            if path == self.root_conf:
                self._write_conf()
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    # -- helpers --------------------------------------------------------------------------

    def _write_conf(self) -> None:
        conns = [c for group in self._conns.values() for c in group]
        text = libreswan_conf.conf_text(conns)
        if self.conf == self.root_conf:
            text = libreswan_conf.HEADER + "config setup\n\n" + text[len(libreswan_conf.HEADER) :]
        write_private(self.conf, text.encode("utf-8"))

    def _whack(self, *args: str, command: str = "") -> proc.Result:
        return self._run("whack", ("--ctlsocket", self.ctl, *args), command or args[0])

    def _run(self, tool: str, args: tuple[str, ...], command: str) -> proc.Result:
        """One bounded run of whack or addconn: pluto's refusal as CharonError, a missing or
        silent pluto as CharonUnreachable."""
        if not os.path.exists(self.ctl):
            self.close()
            raise CharonUnreachable(command, f"no control socket at {self.ctl}", "pluto")
        try:
            result = proc.run((os.path.join(self.tools, tool), *args), timeout=self.timeout,
                              check=False, on_wait=self.on_wait)  # fmt: skip
        except CommandError as exc:
            self.close()
            raise CharonUnreachable(command, exc.stderr or str(exc), "pluto") from exc
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            reply = proc.error_text(lines[-1] if lines else f"exit code {result.returncode}")
            if any(sign in reply for sign in _UNREACHABLE):
                self.close()
                raise CharonUnreachable(command, reply, "pluto")
            raise CharonError(command, reply)
        return result


# whack's words when pluto is not there (or went away mid-call).
_UNREACHABLE = (
    "connect(", "Connection refused", "Connection reset", "read() failed", "No such file",
)  # fmt: skip


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(4 << 20)
    except OSError:
        return ""
