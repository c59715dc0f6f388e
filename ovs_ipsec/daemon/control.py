"""The control socket (`ovs-appctl -t ovs-monitor-ipsec ...`): registers the commands once and
binds them to the daemon. Handlers only ask the daemon for data, call render and reply.

Handlers never call charon: they also run while the daemon waits for a slow charon (the
charon adapter's on_wait), and a hung charon must not hang ovs-appctl. `tunnels/show` wants
SA counters that are current, so when the last `list-sas` is older than FRESH_SAS it asks the
daemon for a new one and answers once the loop has done it (`flush()`), or once charon turns
out to be unreachable or slow.

Status commands answer text by default, JSON with `--json`, and a JSON value (not a string) to
a client that said `set-options --format json` (`ovs-appctl --format json`, OVS 3.4+; the
library has that command from OVS 3.3 on). The shapes are in docs/status-json.md.

Every command in the library's table, the library's own included (`set-options` runs argparse,
which exits on `--help` or a bad value; `vlog/set`, `vlog/reopen` can raise), is wrapped once
registered: whatever a handler raises, the client gets an error reply and the daemon runs on.

May import: ovs, render, render_xfrm, status, xfrm.iproute2, control_socket, daemon.loop (its
types), errors, stdlib.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import ovs.poller
import ovs.unixctl
import ovs.unixctl.server
import ovs.util
import ovs.version
import ovs.vlog

from ovs_ipsec import __version__
from ovs_ipsec.adapters.control_socket import create_server
from ovs_ipsec.adapters.xfrm.iproute2 import parse_policies, parse_states
from ovs_ipsec.daemon.loop import Daemon
from ovs_ipsec.errors import XfrmError

vlog = ovs.vlog.Vlog("control")

# tunnels/show waits for a new list-sas when the last one is older than this.
FRESH_SAS = 1.0
JSON_FLAG = "--json"


def version_text() -> str:
    # ovs-ctl reads the last word of the first line as an OVS version and sends `exit` only when
    # it is at least 2.5.90, so the first line keeps OVS's format with the OVS library's version.
    return f"{ovs.util.PROGRAM_NAME} (Open vSwitch) {ovs.version.VERSION}\novs-ipsec {__version__}"


def help_text() -> str:
    """`help`/`list-commands`: the format of OVS's own (ovs/unixctl/__init__.py)."""
    lines = ["The available commands are:"]
    for name in sorted(ovs.unixctl.commands):
        usage = ovs.unixctl.commands[name].usage
        lines.append(f"  {name:<23} {usage}" if usage else f"  {name}")
    return "\n".join(lines) + "\n"


def wants_json_value(conn: Any) -> bool:
    """True when the client asked for JSON replies with `set-options --format json`. The
    library keeps that per connection in a private field; older libraries have neither."""
    output_format = getattr(ovs.unixctl, "UnixctlOutputFormat", None)
    return output_format is not None and getattr(conn, "_fmt", None) == output_format.JSON


class Control:
    def __init__(self, daemon: Daemon, path: str | None) -> None:
        self.daemon = daemon
        # Root's alone, whatever the umask; connections and request sizes bounded.
        self.server: ovs.unixctl.server.UnixctlServer = create_server(path)
        # tunnels/show requests waiting for a fresh list-sas: (connection, argv, asked at).
        self._pending: list[tuple[Any, list[str], float]] = []

    def register_commands(self) -> None:
        """Bind our commands to this Control in the library's process-wide command table
        (`ovs.unixctl.commands`). The entry point calls it once, after creating the Control;
        the library keeps the first registration of a name, so ours are dropped first and a
        later Control in the same process answers with its own daemon."""
        commands: list[tuple[str, str, int, int, Callable[[Any, list[str], Any], None]]] = [
            ("version", "", 0, 0, self._version),
            ("exit", "[--no-cleanup]", 0, 1, self._exit),
            ("refresh", "", 0, 0, self._refresh),
            ("tunnels/show", "[--json]", 0, 1, self._tunnels_show),
            ("ipsec/status", "[--json]", 0, 1, self._ipsec_status),
            ("xfrm/policies", "[--json]", 0, 1, self._xfrm_policies),
            ("xfrm/state", "[--json]", 0, 1, self._xfrm_state),
            ("memory/show", "", 0, 0, self._memory_show),
            # OVS's C daemons answer both names; the Python library registers only `help`.
            ("list-commands", "", 0, 0, self._help),
            # The library's replies "success" to a bad spec and raises on `FACILITY` alone.
            ("vlog/set", "spec", 1, sys.maxsize, self._vlog_set),
        ]
        # UnixctlServer.create() registered the library's own `version`; ours adds a line.
        for name, usage, min_args, max_args, callback in commands:
            ovs.unixctl.commands.pop(name, None)
            ovs.unixctl.command_register(name, usage, min_args, max_args, callback, None)
        guard_every_command()

    def run(self) -> None:
        self.server.run()
        self.flush()

    def flush(self) -> None:
        """Answer the tunnels/show requests whose fresh SAs the daemon has listed (or cannot)."""
        if not self._pending:
            return
        waiting = []
        for conn, argv, asked in self._pending:
            if self.daemon.sas_settled(asked):
                _guarded(self._answer_tunnels)(conn, argv, None)
            else:
                waiting.append((conn, argv, asked))
        self._pending = waiting

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.server.wait(poller)
        if self._pending:
            poller.timer_wait(100)  # bounded: sas_settled() gives up after --command-timeout

    def close(self) -> None:
        for conn, argv, _ in self._pending:
            _guarded(self._answer_tunnels)(conn, argv, None)
        self._pending = []
        self.server.close()

    # -- handlers ---------------------------------------------------------------------------

    def _version(self, conn: Any, argv: list[str], aux: Any) -> None:
        conn.reply(version_text())

    def _help(self, conn: Any, argv: list[str], aux: Any) -> None:
        conn.reply(help_text())

    def _vlog_set(self, conn: Any, argv: list[str], aux: Any) -> None:
        """Each spec as the library's vlog/set reads it; a bad one is an error reply, as in
        OVS's C daemons."""
        for spec in argv:
            try:
                problem = ovs.vlog.Vlog.set_levels_from_string(spec)
            except IndexError:  # `FACILITY` or `pattern` without its value
                problem = f"incomplete specification: {spec}"
            if problem:
                conn.reply_error(problem)
                return
        conn.reply(None)

    def _exit(self, conn: Any, argv: list[str], aux: Any) -> None:
        if argv and argv[0] != "--no-cleanup":
            # Upstream's reply, as a normal one (scripts check ovs-appctl's status), and the
            # daemon keeps running.
            conn.reply(f"unrecognized parameter: {argv[0]}")
            return
        self.daemon.cleanup_on_exit = not argv
        self.daemon.exiting = True
        conn.reply(None)

    def _refresh(self, conn: Any, argv: list[str], aux: Any) -> None:
        vlog.info("refresh requested over the control socket")
        self.daemon.request_refresh()
        conn.reply(None)

    def _tunnels_show(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not _format_ok(conn, argv):
            return
        age = self.daemon.sas_age()
        if age is not None and age > FRESH_SAS:
            self.daemon.request_sas()
            self._pending.append((conn, argv, self.daemon.clock()))
            return
        self._answer_tunnels(conn, argv, aux)

    def _answer_tunnels(self, conn: Any, argv: list[str], aux: Any) -> None:
        daemon = self.daemon
        statuses = daemon.statuses()
        protection = daemon.protection()
        ports = daemon.port_status(statuses)
        kernel = self._kernel() if statuses else _render().NO_KERNEL
        _reply(
            conn,
            argv,
            lambda: _render().tunnels_json(daemon.config, statuses, protection, ports, kernel),
            lambda: _render().tunnels_text(
                daemon.config, statuses, daemon.health, protection, ports, kernel
            ),
        )

    def _kernel(self) -> Any:
        """The kernel's policies and SAs for tunnels/show's sections (upstream's, listed the
        same way: `ip xfrm policy` and `ip xfrm state`, keys redacted as they are read)."""
        render = _render()
        try:
            policies = parse_policies(self.daemon.xfrm.policies_text())
            states = parse_states(self.daemon.xfrm.states_text())
        except XfrmError as exc:
            return render.Kernel(error=str(exc))
        return render.Kernel(policies=policies, states=states)

    def _ipsec_status(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not _format_ok(conn, argv):
            return
        status = _render().ipsec_status_json(self.daemon.statuses())
        # Dict-shaped in every form, like upstream's reply, so that `{}` stays `{}`.
        _reply(conn, argv, lambda: status, lambda: _render().to_json(status))

    def _xfrm_policies(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not _format_ok(conn, argv):
            return
        try:
            observed = parse_policies(self.daemon.xfrm.policies_text())
        except XfrmError as exc:
            conn.reply_error(f"cannot list XFRM policies: {exc}")
            return
        explained = self.daemon.explained_policies()
        _reply(
            conn,
            argv,
            lambda: _render_xfrm().policies_json(observed, explained),
            lambda: _render_xfrm().policies_text(observed, explained),
        )

    def _xfrm_state(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not _format_ok(conn, argv):
            return
        try:
            states = parse_states(self.daemon.xfrm.states_text())  # keys already redacted
        except XfrmError as exc:
            conn.reply_error(f"cannot list XFRM states: {exc}")
            return
        _reply(
            conn,
            argv,
            lambda: _render_xfrm().states_json(states),
            lambda: _render_xfrm().states_text(states),
        )

    def _memory_show(self, conn: Any, argv: list[str], aux: Any) -> None:
        conn.reply(_render().memory_text(self.daemon.memory_counts(), _status_memory(),
                                      _allocation_sites()))  # fmt: skip


def _status_memory() -> dict[str, str]:
    """VmRSS and VmHWM of this process, as /proc says them."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith("Vm"))
    except OSError:
        return {}
    return {key: fields[key].strip() for key in ("VmRSS", "VmHWM") if key in fields}


def _render() -> ModuleType:
    """The renderers (about 0.1 MiB), loaded with the first status command, not at start-up."""
    from ovs_ipsec.core import render

    return render


def _render_xfrm() -> ModuleType:
    """The kernel's policies and SAs as text, loaded with the first xfrm/ command."""
    from ovs_ipsec.core import render_xfrm

    return render_xfrm


def _allocation_sites(limit: int = 15) -> list[tuple[str, int, int]]:
    """The largest live Python allocations by source file, when the daemon runs with
    PYTHONTRACEMALLOC=1 (or -X tracemalloc): (file, bytes, blocks). Empty otherwise."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    stats = tracemalloc.take_snapshot().statistics("filename")
    return [(str(s.traceback[0].filename), s.size, s.count) for s in stats[:limit]]


def _format_ok(conn: Any, argv: list[str]) -> bool:
    if argv and argv != [JSON_FLAG]:
        conn.reply_error(f"unrecognized parameter: {argv[0]} (the only option is {JSON_FLAG})")
        return False
    return True


def _reply(
    conn: Any, argv: list[str], as_json: Callable[[], Any], as_text: Callable[[], str]
) -> None:
    if wants_json_value(conn):
        conn.reply_json(as_json())
    elif argv:
        conn.reply(_render().to_json(as_json()))
    else:
        conn.reply(as_text())


def guard_every_command() -> None:
    """Wrap every command in the library's table that is not wrapped yet: ours, the library's
    (`help`, `version`, `set-options`, `vlog/*`) and any registered before this call."""
    for name, command in ovs.unixctl.commands.items():
        if not getattr(command.callback, "guarded", False):
            command.callback = _guarded(command.callback, name)


def _guarded(
    callback: Callable[[Any, list[str], Any], None], name: str = ""
) -> Callable[[Any, list[str], Any], None]:
    """A bug or a bad argument in one command must cost that command, not the daemon (an
    exception escaping UnixctlServer.run() reaches the main loop and restarts the process; a
    SystemExit from argparse would end it with status 0, which systemd does not restart)."""

    def guarded(conn: Any, argv: list[str], aux: Any) -> None:
        # argparse writes its usage and errors to stdout or stderr: they become the reply.
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                callback(conn, argv, aux)
        except SystemExit:
            _reply_error(conn, printed.getvalue().strip() or f"{name}: invalid arguments")
        except OSError as exc:
            vlog.warn(f"control command {name} failed: {exc}")
            _reply_error(conn, f"{name} failed: {exc.strerror or type(exc).__name__}"
                         + (f": {exc.filename}" if exc.filename else ""))  # fmt: skip
        except Exception as exc:
            # ascii() and a cap: a client's arguments must not forge or flood log lines.
            vlog.exception(f"control command {name} failed: {ascii(argv)[:200]}")
            _reply_error(conn, f"internal error: {type(exc).__name__}")

    guarded.guarded = True  # type: ignore[attr-defined]
    return guarded


def _reply_error(conn: Any, text: str) -> None:
    """Answer with an error unless the handler replied before failing (the library then holds
    no request id: a second reply would be an orphan)."""
    if getattr(conn, "_request_id", True) is None:
        return
    with contextlib.suppress(Exception):
        conn.reply_error(text)
