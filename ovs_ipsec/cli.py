"""Command line (upstream-compatible flags) -> `Settings`, then the daemon's main loop.

Over 400 lines because it is the command line of both IKE daemons (upstream's flags for
strongSwan and for Libreswan, with their defaults) and the start-up and exit that go with them;
the parts share the parsed arguments.

May import: daemon.loop, daemon.health, control, charon, pluto, nss, ike_daemon, proc, events,
heap, ovsdb, xfrm.adapter, sdnotify, stop_signal, files, log_guard, log_lines, core_dumps,
metrics_http, metrics, ovs_dirs, credentials, errors, ovs, prometheus_client (only to tell
whether it is installed), stdlib.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ovs.daemon
import ovs.dirs
import ovs.poller
import ovs.util
import ovs.vlog

from ovs_ipsec import PROGRAM_NAME, __version__
from ovs_ipsec.adapters import heap, proc
from ovs_ipsec.adapters.charon import DEFAULT_VICI_URI, Charon, vici_path
from ovs_ipsec.adapters.core_dumps import disable_core_dumps
from ovs_ipsec.adapters.events import Events
from ovs_ipsec.adapters.files import take_private, write_private
from ovs_ipsec.adapters.ike_daemon import IkeDaemon
from ovs_ipsec.adapters.log_guard import guard_logs, tighten_log_file
from ovs_ipsec.adapters.log_lines import lighten_records
from ovs_ipsec.adapters.nss import Certificates, Nss
from ovs_ipsec.adapters.ovsdb import Ovsdb, receive_whole_utf8_characters
from ovs_ipsec.adapters.pluto import (
    DEFAULT_IPSEC,
    DEFAULT_IPSEC_CONF,
    DEFAULT_IPSEC_CTL,
    DEFAULT_IPSEC_D,
    DEFAULT_IPSEC_SECRETS,
    DEFAULT_TOOLS,
    Pluto,
)
from ovs_ipsec.adapters.sdnotify import Watchdog, notify, watchdog_interval
from ovs_ipsec.adapters.stop_signal import StopSignal
from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ovs_dirs import OvsDirs, effective_dirs
from ovs_ipsec.daemon.control import Control
from ovs_ipsec.daemon.health import vlog
from ovs_ipsec.daemon.loop import Daemon, Settings
from ovs_ipsec.errors import CommandError

if TYPE_CHECKING:
    from ovs_ipsec.adapters.metrics_http import Handler, HttpServer

# With --ike-daemon=strongswan, flags that only meant something to upstream's Libreswan or
# stroke backends, or to its restarting of the IKE daemon: accepted so that existing units,
# containers and `ovs-ctl start-ovs-ipsec` keep working, and ignored with a one-line notice
# each. With --ike-daemon=libreswan they are honoured.
_LIBRESWAN = "Libreswan only; nothing is written for an IKE daemon, charon is driven over VICI"
IGNORED_FLAGS = {
    "no_restart_ike_daemon": ("--no-restart-ike-daemon", "this daemon never restarts charon"),
    "root_prefix": (
        "--root-prefix",
        "no IKE daemon files are written, so there is nothing to prefix",
    ),
    "ipsec_conf": ("--ipsec-conf", _LIBRESWAN),
    "root_ipsec_conf": ("--root-ipsec-conf", _LIBRESWAN),
    "ipsec_d": ("--ipsec-d", _LIBRESWAN),
    "ipsec_secrets": ("--ipsec-secrets", _LIBRESWAN),
    "ipsec_ctl": ("--ipsec-ctl", _LIBRESWAN),
}
STARTUP_TIMEOUT = 30.0
# Upstream restarts the IKE daemon at start-up unless --no-restart-ike-daemon, without its
# command timeout; ours is bounded by this.
RESTART_TIMEOUT = 120.0


def use_system_dirs() -> None:
    """Point the ovs library at the system's Open vSwitch directories (see ovs_dirs) before
    anything derives a pidfile, control socket, log file or database path from them."""
    library = OvsDirs(ovs.dirs.RUNDIR, ovs.dirs.LOGDIR, ovs.dirs.DBDIR)
    dirs = effective_dirs(library, os.environ, os.path.isdir)
    ovs.dirs.RUNDIR, ovs.dirs.LOGDIR, ovs.dirs.DBDIR = dirs.rundir, dirs.logdir, dirs.dbdir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM_NAME,
        description="Keep strongSwan (over VICI) or Libreswan (pluto) and the kernel in line "
        "with the IPsec options of Open vSwitch tunnel ports.",
    )
    parser.add_argument(
        "database",
        nargs="?",
        default=f"unix:{ovs.dirs.RUNDIR}/db.sock",
        help="OVSDB to watch (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--ike-daemon",
        default="strongswan",
        help="IKE daemon to drive: strongswan (charon over VICI, the default) or libreswan "
        "(pluto, through its control socket and the files below)",
    )
    parser.add_argument(
        "--vici",
        default=DEFAULT_VICI_URI,
        metavar="URI",
        help="charon's VICI socket, unix:///absolute/path (default: %(default)s)",
    )
    parser.add_argument(
        "--unixctl",
        metavar="SOCKET",
        help=f"control socket path (default: <rundir>/{PROGRAM_NAME}.<pid>.ctl)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="timeout of every call to the IKE daemon (charon over VICI; pluto's whack and "
        "addconn) or the kernel (default: %(default)s)",
    )
    parser.add_argument(
        "--reconcile-interval",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often to check that the IKE daemon still holds our configuration (pluto: also "
        "when its SAs are read and a failing conn is asked why; default: %(default)s)",
    )
    parser.add_argument(
        "--use-default-crypto",
        action="store_true",
        help="let the IKE daemon choose the IKE and ESP proposals instead of upstream's defaults",
    )
    parser.add_argument(
        "--protection-linger",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep the fail-closed block policies of a port deleted from OVSDB this long, so "
        "that a port OVS re-creates never sends in clear before IPsec is back "
        "(default: %(default)s; 0: off)",
    )
    parser.add_argument(
        "--metrics-address",
        metavar="[HOST]:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; HOST "
        "defaults to 127.0.0.1: 0.0.0.0 or [::] serve every address, without authentication)",
    )
    libreswan = parser.add_argument_group(
        "Libreswan (--ike-daemon=libreswan; accepted and ignored with strongswan)"
    )
    libreswan.add_argument(
        "--no-restart-ike-daemon",
        action="store_true",
        help="do not restart pluto at start-up (upstream's default: our files emptied, then "
        "`ipsec restart`, bounded by 120 s)",
    )
    libreswan.add_argument(
        "--root-prefix",
        default="",
        metavar="DIR",
        help="prefix of every Libreswan path below except --root-ipsec-conf (for tests)",
    )
    libreswan.add_argument(
        "--ipsec-conf",
        metavar="FILE",
        help="the conn include this daemon owns and rewrites: our conns only, each routed "
        "(trap policies at once), with priority= below our block policies and "
        f"leftupdown=%%disabled (default: {DEFAULT_IPSEC_CONF})",
    )
    libreswan.add_argument(
        "--root-ipsec-conf",
        metavar="FILE",
        help="the ipsec.conf that includes --ipsec-conf, read by addconn (default: "
        "--ipsec-conf itself)",
    )
    libreswan.add_argument(
        "--ipsec-d",
        metavar="DIR",
        help=f"pluto's NSS database, where our certificates and key go (ours only, removed "
        f"at exit; default: {DEFAULT_IPSEC_D})",
    )
    libreswan.add_argument(
        "--ipsec-secrets",
        metavar="FILE",
        help="the secrets file this daemon owns (root-only, our PSKs only, removed at exit; "
        f"pluto's secrets file or one it includes; default: {DEFAULT_IPSEC_SECRETS})",
    )
    libreswan.add_argument(
        "--ipsec-ctl",
        metavar="SOCKET",
        help=f"pluto's control socket (default: {DEFAULT_IPSEC_CTL})",
    )
    libreswan.add_argument(
        "--libreswan-tools",
        metavar="DIR",
        help=f"where Libreswan's whack and addconn are (default: {DEFAULT_TOOLS})",
    )
    ovs.daemon.add_args(parser)
    ovs.vlog.add_args(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    # ovs.util derives the program name from argv[0], which is "__main__.py" under `python -m`;
    # the pidfile, control socket and log names must be upstream's.
    ovs.util.PROGRAM_NAME = PROGRAM_NAME
    use_system_dirs()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ike_daemon not in ("strongswan", "libreswan"):
        parser.exit(
            1,
            f"{PROGRAM_NAME}: --ike-daemon={args.ike_daemon} is not supported: use "
            "strongswan (charon over VICI) or libreswan (pluto)\n",
        )
    try:
        path = vici_path(args.vici)
    except ValueError as exc:
        parser.exit(1, f"{PROGRAM_NAME}: {exc}\n")
    if args.metrics_address and not metrics_library_present():
        parser.exit(
            1,
            f"{PROGRAM_NAME}: --metrics-address needs the prometheus-client library: "
            "pip install 'ovs-ipsec[metrics]' (Debian: apt install python3-prometheus-client)\n",
        )
    if args.command_timeout <= 0 or args.reconcile_interval <= 0:
        parser.exit(1, f"{PROGRAM_NAME}: timeouts and intervals must be positive\n")

    # Before the log file is opened: no secret reaches any log, whatever vlog/set asks later,
    # and the file is not for others to read (adapters/log_guard.py).
    guard_logs()
    lighten_records()
    tighten_log_file(log_file_path(args.log_file))
    ovs.vlog.handle_args(args)
    for problem in disable_core_dumps():
        vlog.warn(f"core dumps may hold secrets: {problem}")
    # At debug level ovs.jsonrpc logs every OVSDB message whole, options:psk included: the
    # filter redacts it, and at start-up the module stays at info whatever -v asks for (a dump
    # of every message is rarely what -v meant).
    ovs.vlog.Vlog.set_level("jsonrpc", "any", "info")
    ovs.daemon.handle_args(args)
    pidfile = ovs.daemon.make_pidfile_name(args.pidfile) if args.pidfile else None
    if args.pidfile is None:
        # `ovs-appctl -t ovs-monitor-ipsec` (and ovs-ctl, logrotate) find the control socket
        # only through <rundir>/ovs-monitor-ipsec.pid, so there is one even without --pidfile.
        if os.path.isdir(ovs.dirs.RUNDIR):
            ovs.daemon.set_pidfile(None)
            pidfile = ovs.daemon.make_pidfile_name(None)
        else:
            vlog.warn(
                f"no pidfile: {ovs.dirs.RUNDIR} does not exist (is Open vSwitch installed? "
                "set OVS_RUNDIR or --pidfile); "
                f"ovs-appctl -t {PROGRAM_NAME} will not find this daemon"
            )
    libreswan = args.ike_daemon == "libreswan"
    for attr, (flag, why) in IGNORED_FLAGS.items():
        if not libreswan and getattr(args, attr):
            vlog.info(f"ignoring {flag}: {why}")

    settings = Settings(
        database=args.database,
        vici_path=path,
        command_timeout=args.command_timeout,
        reconcile_interval=args.reconcile_interval,
        unixctl_path=args.unixctl,
        use_default_crypto=args.use_default_crypto,
        protection_linger=max(0.0, args.protection_linger),
    )
    ovs.daemon.daemonize_start()
    heap.hold_off()  # until the first pass (adapters/heap.py)
    receive_whole_utf8_characters()
    ike: IkeDaemon
    events: Events | None
    if libreswan:
        pluto = make_pluto(args, settings)
        # What the log names as the IKE daemon's socket.
        settings = dataclasses.replace(settings, vici_path=pluto.ctl)
        if not args.no_restart_ike_daemon:
            restart_pluto(pluto, args)
        ike, events, where = pluto, None, f"pluto {pluto.ctl}"
    else:
        ike, where = Charon(path, settings.command_timeout), f"charon {path}"
        events = Events(path, settings.command_timeout)
    daemon = Daemon(
        settings,
        Ovsdb(settings.database),
        ike,
        Xfrm(timeout=settings.command_timeout),
        events=events,
    )
    if libreswan:
        daemon.health.ike_daemon = "pluto"
        planner = daemon.planner
        pluto.context = lambda: (planner.config.tunnels, planner.settings, planner.credentials)
    # Beside the pidfile: the run directory, root's alone (core/handover.py).
    handover_path = None if pidfile is None else f"{os.path.splitext(pidfile)[0]}.handover"
    if handover_path is not None:
        take_over(daemon, handover_path)
    try:
        control = Control(daemon, settings.unixctl_path)
    except OSError as exc:
        vlog.err(str(exc))
        sys.exit(1)
    control.register_commands()
    metrics = None
    if args.metrics_address:
        try:
            from ovs_ipsec.adapters.metrics_http import (
                HttpServer,
                parse_address,
            )  # only with metrics

            metrics = HttpServer(
                parse_address(args.metrics_address),
                metrics_handler(daemon),
                log_error=vlog.exception,
            )
        except (OSError, ValueError) as exc:
            vlog.err(f"--metrics-address={args.metrics_address}: {exc}")
            sys.exit(1)
        vlog.info(f"serving metrics on {args.metrics_address} (/metrics)")

    interval = watchdog_interval()
    watchdog = None if interval is None else Watchdog(interval)

    def serve_while_waiting() -> None:
        # A hung charon must not make the control socket (or a scrape) hang with it. Each
        # wait is bounded (--command-timeout): the loop is alive, systemd's watchdog is told.
        control.run()
        if metrics is not None:
            metrics.run()
        if watchdog is not None:
            watchdog.run()

    ike.on_wait = serve_while_waiting
    if events is not None:
        events.on_wait = serve_while_waiting  # registering can wait on charon (issue 15 item 20)
    vlog.info(f"{PROGRAM_NAME} {__version__} started: database {settings.database}, {where}")
    run_loop(daemon, control, metrics, StopSignal(), handover_path, watchdog,
             on_cleanup=pluto.remove_files if libreswan else None)  # fmt: skip


def make_pluto(args: argparse.Namespace, settings: Settings) -> Pluto:
    """Upstream's Libreswan paths: every one under --root-prefix but --root-ipsec-conf."""
    prefix = args.root_prefix or ""
    conf = prefix + (args.ipsec_conf or DEFAULT_IPSEC_CONF)
    return Pluto(
        tools=args.libreswan_tools or prefix + DEFAULT_TOOLS,
        conf=conf,
        root_conf=args.root_ipsec_conf or conf,
        secrets=prefix + (args.ipsec_secrets or DEFAULT_IPSEC_SECRETS),
        ctl=prefix + (args.ipsec_ctl or DEFAULT_IPSEC_CTL),
        timeout=settings.command_timeout,
        context=lambda: ({}, {}, Credentials()),
        certs=Certificates(
            Nss(prefix + (args.ipsec_d or DEFAULT_IPSEC_D), settings.command_timeout)
        ),
        use_default_crypto=settings.use_default_crypto,
    )


def restart_pluto(pluto: Pluto, args: argparse.Namespace) -> None:
    """Upstream's start-up without --no-restart-ike-daemon: our files emptied, then
    `ipsec restart` (pluto comes back with none of our conns; the first pass loads them), at
    most RESTART_TIMEOUT; a failure is logged and the daemon goes on (its first pass finds
    pluto or retries). Debian's `ipsec restart` is `systemctl restart ipsec.service` (its
    `setup` script hard-codes systemd): the lab test stands in for systemctl only."""
    ipsec = (args.root_prefix or "") + DEFAULT_IPSEC
    vlog.info(f"restarting pluto ({ipsec} restart; --no-restart-ike-daemon skips this)")
    try:
        pluto.empty_files()
        proc.run((ipsec, "restart"), timeout=RESTART_TIMEOUT)
    except (OSError, CommandError) as exc:
        vlog.warn(f"restarting pluto failed: {exc}")


def log_file_path(log_file: str | None) -> str | None:
    """The file --log-file names (ovs.vlog.handle_args spells the default the same way)."""
    if log_file == "default":
        return f"{ovs.dirs.LOGDIR}/{ovs.util.PROGRAM_NAME}.log"
    return log_file


def metrics_library_present() -> bool:
    """prometheus-client is an optional extra (ovs-ipsec[metrics])."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def metrics_handler(daemon: Daemon) -> Handler:
    # prometheus-client costs about 10 MiB of memory: loaded only when metrics are served.
    from ovs_ipsec.adapters.metrics import CONTENT_TYPE
    from ovs_ipsec.adapters.metrics import render as render_metrics

    def handle(path: str) -> tuple[str, str, bytes]:
        if path in ("/metrics", "/"):
            return "200 OK", CONTENT_TYPE, render_metrics(daemon.metrics_snapshot())
        return "404 Not Found", "text/plain", b"not found; try /metrics\n"

    return handle


def reload(daemon: Daemon) -> None:
    """SIGHUP (`systemctl reload`, logrotate): reopen the log file, then re-read the certificate
    files and charon as `refresh` does."""
    try:
        ovs.vlog.Vlog.reopen_log_file()
    except OSError as exc:
        vlog.warn(f"SIGHUP: cannot reopen the log file: {exc}; re-reading the certificate "
                  "files and charon")  # fmt: skip
    else:
        vlog.info("SIGHUP: log file reopened; re-reading the certificate files and charon")
    daemon.request_refresh()


def take_over(daemon: Daemon, path: str) -> None:
    """The record the previous daemon left at its clean exit, if any (read once: deleted)."""
    record = take_private(path)
    if isinstance(record, str):
        vlog.warn(f"ignoring the previous daemon's record: {record}")
    elif record is not None:
        daemon.take_over(record)


def hand_over(daemon: Daemon, path: str) -> None:
    record = daemon.hand_over()
    if record is None:
        return
    try:
        write_private(path, record)
    except OSError as exc:
        vlog.warn(f"cannot leave a record for the next daemon at {path}: {exc}")


def run_loop(
    daemon: Daemon,
    control: Control,
    metrics: HttpServer | None = None,
    stop: StopSignal | None = None,
    handover_path: str | None = None,
    watchdog: Watchdog | None = None,
    on_cleanup: Callable[[], None] | None = None,
) -> None:
    started = time.monotonic()
    completed = False
    ready = False
    try:
        while True:
            control.run()
            if metrics is not None:
                metrics.run()
            daemon.run()
            # tunnels/show requests that waited for the SAs daemon.run() just listed.
            control.flush()
            if not ready and (
                daemon.converged_once or time.monotonic() - started > STARTUP_TIMEOUT
            ):
                # systemd (Type=notify) orders dependants after this: protection and every
                # valid tunnel are in place. After the timeout we report ready but degraded,
                # so a missing charon cannot hold boot for ever.
                notify("READY=1\n" + f"STATUS={daemon.summary()}")
                ready = True
            if not completed and (
                daemon.first_pass_done or time.monotonic() - started > STARTUP_TIMEOUT
            ):
                if not daemon.first_pass_done:
                    vlog.warn("OVSDB not reachable yet; continuing in the background")
                    heap.settle()  # the collector waits no longer for the first pass
                ovs.daemon.daemonize_complete()
                completed = True
            if stop is not None:
                stop.run()
                if stop.take_hangup():
                    reload(daemon)
            if watchdog is not None:
                watchdog.run()
            if daemon.exiting or (stop is not None and stop.received):
                break
            poller = ovs.poller.Poller()
            if stop is not None:
                stop.wait(poller)
            control.wait(poller)
            if metrics is not None:
                metrics.wait(poller)
            if watchdog is not None:
                watchdog.wait(poller)
            daemon.wait(poller)
            poller.block()
    except Exception:
        vlog.exception("unexpected error; exiting so that the supervisor restarts us")
        sys.exit(ovs.daemon.RESTART_EXIT_CODE)
    notify("STOPPING=1")
    if daemon.cleanup_on_exit:
        daemon.cleanup()
        if on_cleanup is not None:
            on_cleanup()
    elif handover_path is not None:
        hand_over(daemon, handover_path)
    vlog.info("exiting" + ("" if daemon.cleanup_on_exit else " (IPsec state left in place)"))
    control.run()
    control.close()
    if metrics is not None:
        metrics.close()
    daemon.ovsdb.close()
