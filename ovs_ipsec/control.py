"""The control socket (`ovs-appctl -t ovs-monitor-ipsec ...`): registers the commands once and
binds them to the daemon. Handlers only call render functions and reply.

May import: ovs.unixctl, render, status, daemon types, stdlib.
"""

from __future__ import annotations

from typing import Any

import ovs.unixctl
import ovs.unixctl.server
import ovs.util
import ovs.version

from ovs_ipsec import __version__, render
from ovs_ipsec.daemon import Daemon


def version_text() -> str:
    # ovs-ctl reads the last word of the first line as an OVS version and sends `exit` only when
    # it is at least 2.5.90, so the first line keeps OVS's format with the OVS library's version.
    return f"{ovs.util.PROGRAM_NAME} (Open vSwitch) {ovs.version.VERSION}\novs-ipsec {__version__}"


class Control:
    def __init__(self, daemon: Daemon, path: str | None) -> None:
        self.daemon = daemon
        error, server = ovs.unixctl.server.UnixctlServer.create(path)
        if error:
            raise OSError(error, f"could not create the control socket {path or ''}")
        self.server = server
        self._register()

    def _register(self) -> None:
        commands: list[tuple[str, str, int, int, Any]] = [
            ("version", "", 0, 0, self._version),
            ("exit", "[--no-cleanup]", 0, 1, self._exit),
            ("refresh", "", 0, 0, self._refresh),
            ("tunnels/show", "[--json]", 0, 1, self._tunnels_show),
            ("ipsec/status", "[--json]", 0, 1, self._ipsec_status),
        ]
        # UnixctlServer.create() registered the library's own `version`; ours adds a line.
        ovs.unixctl.commands.pop("version", None)
        for name, usage, min_args, max_args, callback in commands:
            ovs.unixctl.command_register(name, usage, min_args, max_args, callback, None)

    def run(self) -> None:
        self.server.run()

    def wait(self, poller: Any) -> None:
        self.server.wait(poller)

    def close(self) -> None:
        self.server.close()

    # -- handlers -------------------------------------------------------------------------

    def _version(self, conn: Any, argv: list[str], aux: Any) -> None:
        conn.reply(version_text())

    def _exit(self, conn: Any, argv: list[str], aux: Any) -> None:
        if argv and argv[0] != "--no-cleanup":
            conn.reply_error(f"unrecognized parameter: {argv[0]}")
            return
        self.daemon.cleanup_on_exit = not argv
        self.daemon.exiting = True
        conn.reply(None)

    def _refresh(self, conn: Any, argv: list[str], aux: Any) -> None:
        self.daemon.request_refresh()
        conn.reply(None)

    def _tunnels_show(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not self._format_ok(conn, argv):
            return
        statuses = self.daemon.statuses()
        if argv:
            conn.reply(render.to_json(render.tunnels_json(self.daemon.config, statuses)))
        else:
            conn.reply(render.tunnels_text(self.daemon.config, statuses, self.daemon.health))

    def _ipsec_status(self, conn: Any, argv: list[str], aux: Any) -> None:
        if not self._format_ok(conn, argv):
            return
        conn.reply(render.to_json(render.ipsec_status_json(self.daemon.statuses())))

    @staticmethod
    def _format_ok(conn: Any, argv: list[str]) -> bool:
        if argv and argv != ["--json"]:
            conn.reply_error(f"unrecognized parameter: {argv[0]}")
            return False
        return True
