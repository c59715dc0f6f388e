"""A throw-away lab of "hosts" (network namespaces) for tests, demos and benchmarks.

In the spirit of OVS's ovs-sandbox: `Lab(n)` starts n hosts on one L2 segment, each with its own
ovsdb-server, its own charon-systemd (own strongswan.conf and VICI socket) or, for the hosts named
in `libreswan_hosts`, its own pluto instead (pluto_lab.py), and, optionally, our daemon; `stop()`
takes all of it down again.

Topology (test-machine.md section 4): a hub namespace holds a bridge, and every host namespace gets
an `eth0` veth onto it with `10.77.0.<i>/24` and `fd77::<i>/64`. Namespace names carry a per-run
prefix (`oi<4 hex>`) because other jobs on the same machine create namespaces of their own; all
files live under a short workdir (`/tmp/oi-XXXXXXXX`) because unix socket paths are limited to
108 bytes.

Cleanup is the point of this module: every process is recorded by PID *and* start time (so a
recycled PID is never signalled), every namespace as soon as it exists, and `stop()` works from
those records, whatever state `start()` reached. It is idempotent and also runs at interpreter
exit.

Over 400 lines because its point is one cleanup bookkeeping (LabProcess records, Host, Lab.stop)
that every process and namespace goes through; the `ovs-ipsec-lab` command line is the last 70
lines.

May import: capabilities, pluto_lab (only inside functions: it imports this module), stdlib,
vici, prometheus_client.parser (the tests' extra).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, TypeVar

import vici

from ovs_ipsec.core.capabilities import charon_release

if TYPE_CHECKING:
    from ovs_ipsec.tools.pluto_lab import Pluto

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
CHARON = "/usr/sbin/charon-systemd"
KEEP_ENV = "OVS_IPSEC_KEEP_LAB"
NETNS_DIR = "/run/netns"

# charon needs 1.3-1.9 s to stop (it deletes its IKE_SAs and joins its threads); 5 s is a hang.
STOP_GRACE = 5.0
# After SIGKILL the kernel only has to reap; longer than this means something is badly wrong.
KILL_GRACE = 2.0
CHARON_START_TIMEOUT = 10.0
DAEMON_START_TIMEOUT = 30.0
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_HOSTS = 250  # one /24, .1 to .250

# Explicit plugin list (test-machine.md section 5): the compiled-in default would load
# kernel-libipsec, which silently replaces the kernel data plane, and 5.9.8 needs kdf for IKEv2.
CHARON_PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints aes sha1 sha2 hmac"
    " gcm gmp kdf kernel-netlink socket-default vici"
)

T = TypeVar("T")


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block in network namespace `ns`: this thread, the processes it starts and the
    sockets it opens meanwhile (setns(2) is per thread); back in its own namespace afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class LabError(RuntimeError):
    """The lab could not do what was asked (start, stop, run something in a host)."""


class LabCommandError(LabError):
    """A command failed or timed out; carries what ran and what it said."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exit code {returncode}"
        super().__init__(
            f"{shlex.join(self.argv)}: {status}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        )


def charon_keeps_ike_sa_without_child(version: tuple[int, ...]) -> bool:
    """Whether an IKE_SA survives the kernel refusing the CHILD_SA negotiated with it in
    IKE_AUTH, as on this lab's kernels (no ESP, no AEAD).

    5.9.x: yes. The responder answers IKE_AUTH with IDr, AUTH and N(NO_PROP); both sides
    establish the IKE_SA ("failed to establish CHILD_SA, keeping IKE_SA").
    6.0.x: no. The responder establishes the IKE_SA, but child_create.c (6.0.0 to at least
    6.0.6) flushes its IKE_AUTH answer down to N(NO_PROP); the initiator, without IDr, fails
    the IKE_SA ("IDr payload missing") and the responder deletes its own on the initiator's
    INFORMATIONAL. No charon setting changes that short of `childless` connections or
    kernel-libipsec, both of which change what is tested."""
    return version < (6,)


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something truthy and return that; TimeoutError if not."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(min(interval, remaining))


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run in text mode with captured output; LabCommandError on failure or timeout."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise LabCommandError(argv, None, _text(e.stdout), _text(e.stderr)) from None
    if check and proc.returncode != 0:
        raise LabCommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data if isinstance(data, str) else ""


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def await_socket(
    process: LabProcess | None,
    path: str,
    timeout: float,
    *,
    what: str,
    dead: str,
    logs: Sequence[str],
) -> None:
    """Wait until a daemon accepts on its unix socket `path`; LabError with the tails of its
    `logs` if it dies first."""

    def ready() -> bool:
        if process is None or not process.alive():
            raise LabError(dead + "".join(f"\n--- {log} ---\n{_tail(log)}" for log in logs))
        # Connecting, not just stat(): the file exists a moment before the daemon accepts.
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
            except OSError:
                return False
        return True

    wait_for(ready, timeout, what=f"{what} {path}")


def _tail(path: str, lines: int = 30) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of `pid`, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; the rest follows the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


@dataclass
class LabProcess:
    """A process the lab started, identified by PID and start time.

    The start time guards against PID reuse: a process that has exited and whose PID went to
    someone else is never signalled. Zombies count as dead, because detached daemons are
    re-parented to PID 1, which on some machines never reaps them.
    """

    pid: int
    what: str
    start_time: int | None = None
    # Set for processes we spawned ourselves, so we reap them (detached ones are not ours to reap).
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def track(cls, pid: int, what: str, popen: subprocess.Popen[bytes] | None = None) -> LabProcess:
        stat = _proc_stat(pid)
        return cls(pid, what, stat[1] if stat else None, popen)

    def alive(self) -> bool:
        if self.popen is not None:
            self.popen.poll()  # reap it if it exited, so it does not linger as our zombie
        stat = _proc_stat(self.pid)
        return stat is not None and stat[0] not in "ZX" and stat[1] == self.start_time

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def terminate(
    procs: Iterable[LabProcess], sig: int = signal.SIGTERM, grace: float = STOP_GRACE
) -> list[LabProcess]:
    """Signal all `procs` at once, wait up to `grace` s, SIGKILL the rest; return any survivors.

    Signalling everything first and then waiting makes N charons stop in the time of one.
    """
    live = [p for p in procs if p.alive()]
    for p in live:
        p.signal(sig)
    for timeout, then in ((grace, signal.SIGKILL), (KILL_GRACE, None)):
        with contextlib.suppress(TimeoutError):
            wait_for(lambda live=live: not any(p.alive() for p in live), timeout, what="exit")
        live = [p for p in live if p.alive()]
        if not live or then is None:
            break
        for p in live:
            p.signal(then)
    return live


def charon_conf(host_dir: str, extra: str = "", without: Iterable[str] = ()) -> str:
    """strongswan.conf for one lab host (test-machine.md section 5), `extra` inside `charon {}`;
    the plugins named in `without` are left out of the load list (a charon that lacks them)."""
    extra_block = textwrap.indent(textwrap.dedent(extra).strip(), "  ")
    left_out = set(without)
    unknown = left_out - set(CHARON_PLUGINS.split())
    if unknown:
        raise ValueError(f"not in the lab's plugin list: {', '.join(sorted(unknown))}")
    plugins = " ".join(p for p in CHARON_PLUGINS.split() if p not in left_out)
    return f"""\
charon {{
  load_modular = no
  load = {plugins}
  install_routes = no
  # "peer not responding" after about 6 s instead of minutes.
  retransmit_tries = 2
  retransmit_timeout = 1.0
  plugins {{
    vici {{
      socket = unix://{host_dir}/charon.vici
    }}
    kernel-netlink {{
      # The daemon relies on it (strongswan-vici.md section 8); read only at plugin creation.
      set_proto_port_transport_sa = yes
    }}
  }}
  filelog {{
    lab {{
      path = {host_dir}/charon.log
      time_format = %T
      default = 1
      ike = 2
      cfg = 2
      knl = 2
      flush_line = yes
    }}
  }}
{extra_block}
}}
# The filelog is the log; keep the journal quiet.
charon-systemd {{
  journal {{
    default = -1
  }}
}}
"""


class ViciSession(vici.Session):
    """A vici.Session that can be closed, also as a context manager."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.transport.close()

    def __enter__(self) -> ViciSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Host:
    """One lab host: a namespace with its ovsdb-server, charon or pluto, and (optionally) our
    daemon."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{lab.prefix}-{self.name}"
        self.ipv4 = f"10.77.0.{index}"
        self.ipv6 = f"fd77::{index}"
        self.dir = os.path.join(lab.workdir, self.name)
        # OVS_RUNDIR: the usual OVS places, so that OVS's defaults point at the right sockets.
        self.run_dir = os.path.join(self.dir, "run")
        self.db_path = os.path.join(self.run_dir, "db.sock")
        self.db = f"unix:{self.db_path}"
        self.vici_path = os.path.join(self.dir, "charon.vici")
        self.vici_uri = f"unix://{self.vici_path}"
        self.ctl_path = os.path.join(self.run_dir, "ovs-monitor-ipsec.ctl")
        self.conf_path = os.path.join(self.dir, "strongswan.conf")
        self.charon_log_path = os.path.join(self.dir, "charon.log")
        self.daemon_log_path = os.path.join(self.dir, "ovs-monitor-ipsec.log")
        self.daemon_pidfile = os.path.join(self.run_dir, "ovs-monitor-ipsec.pid")
        self._ovsdb: LabProcess | None = None
        self._charon: LabProcess | None = None
        self._daemon: LabProcess | None = None
        # Set (by Lab) for a host that runs Libreswan's pluto instead of charon.
        self.pluto: Pluto | None = None

    def __repr__(self) -> str:
        return f"<Host {self.name} ns={self.ns} {self.ipv4}>"

    @property
    def socket_paths(self) -> tuple[str, ...]:
        # The pluto control socket's path is checked too, whether or not this host runs pluto.
        pluto_ctl = os.path.join(self.dir, "pluto", "run", "pluto.ctl")
        return (
            self.db_path, self.vici_path, self.ctl_path, f"{self.run_dir}/ovsdb-server.ctl",
            pluto_ctl,
        )  # fmt: skip

    # -- running things ------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host's namespace; LabCommandError on failure (if `check`)."""
        return _run(
            ["ip", "netns", "exec", self.ns, *argv], check=check, timeout=timeout, input=input
        )

    def vsctl(self, *args: str) -> str:
        """ovs-vsctl against this host's database; stdout without its final newline.

        `--no-wait` because no ovs-vswitchd ever bumps `cur_cfg`: without it ovs-vsctl would wait
        forever.
        """
        argv = ["ovs-vsctl", f"--db={self.db}", "--no-wait", "--timeout=10", *args]
        return self.run(argv).stdout.rstrip("\n")

    def appctl(self, *args: str, timeout: float = 10) -> str:
        """ovs-appctl against this host's daemon; stdout without its final newline."""
        argv = ["ovs-appctl", "-t", self.ctl_path, f"--timeout={max(1, int(timeout))}", *args]
        return self.run(argv, timeout=timeout + 5).stdout.rstrip("\n")

    def swanctl(self, *args: str) -> str:
        """swanctl against this host's charon. Never `--load-*` unless you mean to wipe it."""
        return self.run(["swanctl", *args, "--uri", self.vici_uri]).stdout

    def vici(self, timeout: float = 10.0) -> ViciSession:
        """A new VICI session to this host's charon; the socket times out after `timeout` s."""
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(self.vici_path)
        except OSError:
            sock.close()
            raise
        return ViciSession(sock)

    def charon_version(self) -> tuple[int, ...]:
        """This host's charon version, as VICI `version` reports it: (6, 0, 1)."""
        with self.vici() as session:
            reply = session.version()
        version = reply.get("version", b"")
        return charon_release(version.decode() if isinstance(version, bytes) else version)

    # -- ovsdb-server --------------------------------------------------------------------------

    def start_ovsdb(self) -> None:
        """Start this host's ovsdb-server; the first time, create the database and add br0."""
        if self._ovsdb is not None and self._ovsdb.alive():
            raise LabError(f"{self.name}: ovsdb-server is already running")
        os.makedirs(self.run_dir, exist_ok=True)
        db_file = os.path.join(self.dir, "conf.db")
        fresh = not os.path.exists(db_file)
        if fresh:
            _run(["ovsdb-tool", "create", db_file, SCHEMA])
        pidfile = os.path.join(self.run_dir, "ovsdb-server.pid")
        self._ovsdb = self.lab.start_detached(self.ns, [
            "env", f"OVS_RUNDIR={self.run_dir}", f"OVS_LOGDIR={self.dir}",
            "ovsdb-server", db_file, f"--remote=punix:{self.db_path}",
            f"--unixctl={self.run_dir}/ovsdb-server.ctl", f"--pidfile={pidfile}",
            f"--log-file={self.dir}/ovsdb-server.log", "--detach",
        ], pidfile, f"{self.name} ovsdb-server")  # fmt: skip
        if fresh:
            self.vsctl("init")
            self.vsctl("--may-exist", "add-br", "br0")

    def stop_ovsdb(self, sig: int = signal.SIGTERM) -> None:
        """Stop this host's ovsdb-server (SIGKILL if it is still there after 5 s)."""
        if self._ovsdb is not None:
            self._check_stopped(terminate([self._ovsdb], sig))
            self._ovsdb = None

    @property
    def ovsdb_pid(self) -> int | None:
        return self._ovsdb.pid if self._ovsdb is not None and self._ovsdb.alive() else None

    # -- charon --------------------------------------------------------------------------------

    def start_charon(self, without: Iterable[str] = ()) -> None:
        """Start this host's charon-systemd and wait until its VICI socket answers; the plugins
        named in `without` are not loaded (a charon that lacks them, as on a machine without
        the package that ships them)."""
        self._spawn_charon(without)
        self._await_charon(CHARON_START_TIMEOUT)

    def _spawn_charon(self, without: Iterable[str] = ()) -> None:
        if self._charon is not None and self._charon.alive():
            raise LabError(f"{self.name}: charon is already running")
        os.makedirs(self.dir, exist_ok=True)
        with open(self.conf_path, "w") as f:
            f.write(charon_conf(self.dir, self.lab.charon_settings, without))
        # A socket left by a killed charon would look ready before the new one listens.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vici_path)
        with open(os.path.join(self.dir, "charon.stdout"), "ab") as out:
            # `ip netns exec` and `env` both exec, so the PID is charon's own. A new session keeps
            # a Ctrl-C on the terminal away from it: the lab stops it, in order.
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns,
                 "env", f"STRONGSWAN_CONF={self.conf_path}", CHARON],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._charon = self.lab._track(popen.pid, f"{self.name} charon", popen)

    def _await_charon(self, timeout: float) -> None:
        await_socket(
            self._charon, self.vici_path, timeout,
            what=f"{self.name}: charon's VICI socket",
            dead=f"{self.name}: charon exited during start-up",
            logs=(self.charon_log_path, os.path.join(self.dir, "charon.stdout")),
        )  # fmt: skip

    def stop_charon(self, sig: int = signal.SIGTERM) -> None:
        """Stop this host's charon and wait for it to exit (SIGKILL after 5 s)."""
        if self._charon is not None:
            self._check_stopped(terminate([self._charon], sig))
            self._charon = None

    @property
    def charon_pid(self) -> int | None:
        return self._charon.pid if self._charon is not None and self._charon.alive() else None

    def charon_log(self) -> str:
        return _read(self.charon_log_path)

    # -- our daemon ----------------------------------------------------------------------------

    def daemon_argv(self, *extra_args: str) -> list[str]:
        """The command line that starts our daemon in this host (returns once it is ready)."""
        # PYTHONPATH: run the package this lab was imported from, even from another checkout
        # than the one the venv's editable install points at.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return [
            "ip", "netns", "exec", self.ns,
            "env", f"OVS_RUNDIR={self.run_dir}", f"OVS_LOGDIR={self.dir}", f"OVS_DBDIR={self.dir}",
            f"PYTHONPATH={package_root}",
            # A pluto host: `ipsec` is the unpacked Libreswan's (pluto_lab.Pluto.daemon_env).
            *(self.pluto.daemon_env() if self.pluto is not None else []),
            # Through bin/ovs-monitor-ipsec, so the process looks like upstream's to anything
            # that matches on its command line ("python3 .../ovs-monitor-ipsec ...").
            self.lab.python, os.path.join(package_root, "bin", "ovs-monitor-ipsec"), self.db,
            *(self.pluto.daemon_args() if self.pluto is not None
              else ["--ike-daemon=strongswan", f"--vici={self.vici_uri}"]),
            f"--pidfile={self.daemon_pidfile}", f"--log-file={self.daemon_log_path}",
            f"--unixctl={self.ctl_path}", "--detach", "-vfile:dbg",
            *self.lab.daemon_args, *extra_args,
        ]  # fmt: skip

    def start_daemon(self, *extra_args: str) -> None:
        """Start our daemon (with `--detach`, so it returns once the daemon is ready)."""
        self._await_daemon(self._spawn_daemon(extra_args), DAEMON_START_TIMEOUT)

    def _spawn_daemon(self, extra_args: Sequence[str]) -> subprocess.Popen[bytes]:
        if self._daemon is not None and self._daemon.alive():
            raise LabError(f"{self.name}: the daemon is already running")
        os.makedirs(self.run_dir, exist_ok=True)
        # Output goes to a file, not a pipe: a detached child that kept the pipe open would make
        # us wait for EOF instead of for the parent's exit.
        with open(os.path.join(self.dir, "ovs-monitor-ipsec.stdout"), "ab") as out:
            popen = subprocess.Popen(
                self.daemon_argv(*extra_args), cwd=self.dir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        # Tracked too: if it hangs before detaching, stop() must still find it.
        self.lab._track(popen.pid, f"{self.name} daemon launcher", popen)
        return popen

    def _await_daemon(self, popen: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            rc: int | None = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            rc = None
        # Only after a clean start is the pidfile known to be fresh. After a failed one it may be
        # stale and name someone else's process; a daemon that did start and then hung is still
        # in our namespace, where stop() finds it anyway.
        pid = self._pidfile_pid() if rc == 0 else None
        if pid is not None:
            self._daemon = self.lab._track(pid, f"{self.name} daemon")
            if self._daemon.alive():
                return
        status = "did not become ready" if rc is None else f"exit code {rc}"
        raise LabError(
            f"{self.name}: the daemon failed to start ({status})\n"
            f"--- command ---\n{shlex.join(popen.args)}\n"
            f"--- output ---\n{_tail(os.path.join(self.dir, 'ovs-monitor-ipsec.stdout'))}\n"
            f"--- {self.daemon_log_path} ---\n{_tail(self.daemon_log_path)}"
        )

    def _pidfile_pid(self) -> int | None:
        try:
            return int(_read(self.daemon_pidfile).strip())
        except ValueError:
            return None

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to our daemon and wait for it to exit (SIGKILL after 5 s)."""
        if self._daemon is not None:
            self._check_stopped(terminate([self._daemon], sig))
            self._daemon = None

    def scrape_metrics(self, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The daemon's /metrics on 127.0.0.1:`port` in this host's namespace, parsed with
        prometheus-client's own parser: {(sample name, sorted labels): value}."""
        code = (
            "import urllib.request\n"
            f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5)"
            ".read().decode())\n"
        )
        text = self.run([sys.executable, "-c", code]).stdout
        from prometheus_client.parser import text_string_to_metric_families  # tests' extra

        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def send_probe(self, dst: str, kind: str, port: int | None = None, mark: int = 0) -> str:
        """Send one plaintext tunnel packet from this host: raw GRE (IP protocol 47) or UDP to
        `port`, optionally with SO_MARK standing in for OVS's skb mark. Returns "sent" or the
        error the kernel gave (e.g. "EPERM" when an XFRM block policy dropped it)."""
        family = "AF_INET6" if ":" in dst else "AF_INET"
        if kind == "gre":
            make, payload, addr = (
                f"socket.socket(socket.{family}, socket.SOCK_RAW, 47)",
                "b'\\0\\0\\x65\\x58x'",
                f"({dst!r}, 0)",
            )
        else:
            make, payload, addr = (
                f"socket.socket(socket.{family}, socket.SOCK_DGRAM)",
                "b'x'",
                f"({dst!r}, {int(port or 0)})",
            )
        code = (
            "import errno, socket\n"
            f"s = {make}\n"
            f"s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, {int(mark)})\n"
            "try:\n"
            f"    s.sendto({payload}, {addr}); print('sent')\n"
            "except OSError as e:\n"
            "    print(errno.errorcode.get(e.errno, str(e.errno)))\n"
        )
        return self.run([sys.executable, "-c", code]).stdout.strip()

    def xfrm_policies(self) -> str:
        """`ip xfrm policy` in this host."""
        return self.run(["ip", "xfrm", "policy"]).stdout

    def xfrm_stat(self) -> dict[str, int]:
        """This namespace's /proc/net/xfrm_stat counters."""
        text = self.run(["cat", "/proc/net/xfrm_stat"]).stdout
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line)}

    def kill_daemon(self) -> None:
        """SIGKILL our daemon (a crash, as far as it can tell) and wait until it is gone."""
        self.stop_daemon(signal.SIGKILL)

    @property
    def daemon_pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None and self._daemon.alive() else None

    def daemon_log(self) -> str:
        return _read(self.daemon_log_path)

    def await_psk_change(self, peer_ip: str, since: int, timeout: float = 10.0) -> None:
        """Until our daemon has finished the pass that took a changed PSK for `peer_ip`, as its
        log tells after offset `since` (`len(daemon_log())` before the change).

        That pass loads the new secret and then closes the IKE_SAs made with the old one. The
        close is its last request to charon, and it takes every IKE_SA of the connection that
        exists at that moment, including one a test started a moment earlier (which then ends
        without any failure). So a test that negotiates after a PSK change waits for this on
        both hosts; the new secret's "loaded" line is not enough."""
        line = f"closed IKE_SAs of ovs-{peer_ip} so that new credentials take effect"
        wait_for(
            lambda: line in self.daemon_log()[since:],
            timeout,
            what=f"{self.name}: the PSK change for {peer_ip} applied",
        )

    def _check_stopped(self, survivors: list[LabProcess]) -> None:
        if survivors:
            raise LabError(f"{self.name}: still running after SIGKILL: {survivors}")


class Lab:
    """N hosts on a shared L2 segment; a context manager, or call start() and stop()."""

    def __init__(
        self,
        n_hosts: int,
        *,
        workdir: str | None = None,
        keep: bool = False,
        daemon: bool = True,
        daemon_args: Sequence[str] = (),
        charon_settings: str = "",
        python: str | None = None,
        libreswan_hosts: Iterable[int] = (),
    ) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, not {n_hosts}")
        self.libreswan_hosts = frozenset(libreswan_hosts)
        if not self.libreswan_hosts <= set(range(1, n_hosts + 1)):
            raise ValueError(f"libreswan_hosts must be among 1..{n_hosts}")
        self.n_hosts = n_hosts
        self.keep = keep or os.environ.get(KEEP_ENV, "") not in ("", "0")
        self.daemon = daemon
        self.daemon_args = tuple(daemon_args)
        self.charon_settings = charon_settings
        self.python = python or sys.executable  # runs our daemon
        self.prefix = ""  # chosen by start(), once we can check which names are free
        self.workdir = workdir or ""
        self.hub = ""
        self.hosts: list[Host] = []
        self._requested_workdir = workdir
        self._made_workdir = False
        self._made_dirs: list[str] = []
        self._namespaces: list[str] = []
        self._processes: list[LabProcess] = []
        self._started = False

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
        else:
            # Do not let a cleanup problem hide the exception that got us here.
            self._stop_quietly()

    def __getitem__(self, index: int) -> Host:
        """lab[1] is h1 (1-based, like the host names and addresses)."""
        if not 1 <= index <= len(self.hosts):
            raise IndexError(f"no host h{index} in this lab")
        return self.hosts[index - 1]

    @property
    def processes(self) -> tuple[LabProcess, ...]:
        """Every process the lab started (or found in its namespaces), alive or not."""
        return tuple(self._processes)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces this lab created and has not deleted yet."""
        return tuple(self._namespaces)

    def _track(
        self, pid: int, what: str, popen: subprocess.Popen[bytes] | None = None
    ) -> LabProcess:
        proc = LabProcess.track(pid, what, popen)
        self._processes.append(proc)
        return proc

    def start_detached(self, ns: str, argv: Sequence[str], pidfile: str, what: str) -> LabProcess:
        """Run an OVS-style daemon in namespace `ns` (`argv` says `--detach` and
        `--pidfile=<pidfile>`, so it returns once the daemon is ready) and record it for stop()."""
        _run(["ip", "netns", "exec", ns, *argv])
        return self._track(int(_read(pidfile)), what)

    def run_in_hub(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the hub namespace (the hosts' segment); LabCommandError on failure."""
        return _run(["ip", "netns", "exec", self.hub, *argv], check=check, timeout=timeout)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> Lab:
        if self._started:
            raise LabError("a Lab can be started only once")
        self._started = True
        # Registered first: whatever the next lines create, interpreter exit cleans it up.
        atexit.register(self._stop_quietly)
        try:
            self._make_dirs()
            self._make_network()
            for host in self.hosts:
                host.start_ovsdb()
            # Start all charons and plutos, then wait: they come up concurrently.
            for host in self.hosts:
                if host.pluto is not None:
                    host.pluto.spawn()
                else:
                    host._spawn_charon()
            for host in self.hosts:
                if host.pluto is not None:
                    host.pluto.await_ready(CHARON_START_TIMEOUT)
                else:
                    host._await_charon(CHARON_START_TIMEOUT)
            if self.daemon:
                launchers = [(host, host._spawn_daemon(())) for host in self.hosts]
                for host, popen in launchers:
                    host._await_daemon(popen, DAEMON_START_TIMEOUT)
        except BaseException:
            self._stop_quietly()
            raise
        return self

    def _make_dirs(self) -> None:
        if self._requested_workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="oi-", dir="/tmp")
            self._made_workdir = True
        else:
            self.workdir = os.path.abspath(self._requested_workdir)
            if not os.path.isdir(self.workdir):
                os.makedirs(self.workdir)
                self._made_workdir = True
        self.prefix = self._free_prefix()
        self.hub = f"{self.prefix}-hub"
        self.hosts = [Host(self, i) for i in range(1, self.n_hosts + 1)]
        if self.libreswan_hosts:
            from ovs_ipsec.tools.pluto_lab import Pluto  # imports this module

            for host in self.hosts:
                if host.index in self.libreswan_hosts:
                    host.pluto = Pluto(host)
        for host in self.hosts:
            too_long = [p for p in host.socket_paths if len(p.encode()) > MAX_SOCKET_PATH]
            if too_long:
                raise LabError(f"socket path too long for a unix socket: {too_long[0]}")
            if os.path.exists(host.dir):
                # stop() deletes host dirs: never adopt one we did not create.
                raise LabError(f"{host.dir} already exists: give the lab an empty workdir")
            os.makedirs(host.dir)
            self._made_dirs.append(host.dir)
            os.makedirs(host.run_dir)

    @staticmethod
    def _free_prefix() -> str:
        existing = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
        for _ in range(100):
            prefix = f"oi{secrets.token_hex(2)}"
            if not any(name.startswith(f"{prefix}-") for name in existing):
                return prefix
        raise LabError(f"no free namespace prefix: {len(existing)} namespaces in {NETNS_DIR}")

    def _add_netns(self, name: str) -> None:
        # Recorded only once it exists: a name that clashed belongs to someone else.
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)

    def _make_network(self) -> None:
        self._add_netns(self.hub)
        _run(["ip", "-n", self.hub, "-batch", "-"],
             input="link set lo up\nlink add br0 type bridge\nlink set br0 up\n")  # fmt: skip
        hub_cmds = []
        for h in self.hosts:
            self._add_netns(h.ns)
            _run(["ip", "link", "add", "eth0", "netns", h.ns,
                  "type", "veth", "peer", "name", h.name, "netns", self.hub])  # fmt: skip
            # nodad: the IPv6 address is usable at once instead of after duplicate detection.
            _run(["ip", "-n", h.ns, "-batch", "-"], input=(
                "link set lo up\n"
                f"addr add {h.ipv4}/24 dev eth0\n"
                f"addr add {h.ipv6}/64 dev eth0 nodad\n"
                "link set eth0 up\n"))  # fmt: skip
            hub_cmds += [f"link set {h.name} master br0", f"link set {h.name} up"]
        _run(["ip", "-n", self.hub, "-batch", "-"], input="\n".join(hub_cmds) + "\n")

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process, delete every namespace, remove the workdir; safe to call again.

        Runs every step even when one fails, then raises LabError listing what could not be
        cleaned up.
        """
        atexit.unregister(self._stop_quietly)
        problems: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep going: the next steps free other resources
                problems.append(f"{what}: {e}")

        # Daemons first, so they do not watch their charon and database disappear under them.
        step("daemons", lambda: self._terminate(h._daemon for h in self.hosts))
        step("charons, plutos and ovsdb-servers", lambda: self._terminate(
            [h._charon for h in self.hosts] + [h.pluto.process for h in self.hosts if h.pluto]
            + [h._ovsdb for h in self.hosts]))  # fmt: skip
        # Anything else in our namespaces is ours too (a tcpdump a test left running, a daemon
        # that never wrote its pidfile); and anything we recorded that still lives.
        step("leftover processes", lambda: self._terminate(self._namespace_processes()))
        step("recorded processes", lambda: self._terminate(self._processes))
        for host in self.hosts:
            host._ovsdb = host._charon = host._daemon = None
        for ns in list(self._namespaces):
            step(f"namespace {ns}", lambda ns=ns: self._del_netns(ns))
        step("workdir", self._remove_workdir)
        if problems:
            raise LabError("lab cleanup incomplete:\n  " + "\n  ".join(problems))

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except Exception as e:
            print(f"ovs-ipsec lab {self.prefix}: {e}", file=sys.stderr)

    def _terminate(self, procs: Iterable[LabProcess | None]) -> None:
        survivors = terminate([p for p in procs if p is not None])
        if survivors:
            raise LabError(f"still running after SIGKILL: {survivors}")

    def _namespace_processes(self) -> list[LabProcess]:
        found = []
        for ns in self._namespaces:
            out = _run(["ip", "netns", "pids", ns], check=False).stdout
            found += [self._track(int(pid), f"process in {ns}") for pid in out.split()]
        return found

    def _del_netns(self, ns: str) -> None:
        result = _run(["ip", "netns", "del", ns], check=False)
        if result.returncode == 0 or not os.path.exists(os.path.join(NETNS_DIR, ns)):
            self._namespaces.remove(ns)
        else:
            raise LabError(result.stderr.strip())

    def _remove_workdir(self) -> None:
        if not self.workdir:
            return
        if self.keep:
            # Logs and configs stay for a post-mortem; sockets whose servers are gone do not.
            for host in self.hosts:
                for path in host.socket_paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            if os.path.isdir(self.workdir):
                print(f"ovs-ipsec lab {self.prefix}: kept {self.workdir}", file=sys.stderr)
            return
        if self._made_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            for d in self._made_dirs:
                shutil.rmtree(d, ignore_errors=True)
        leftover = [
            d for d in ([self.workdir] if self._made_workdir else self._made_dirs)
            if os.path.exists(d)
        ]  # fmt: skip
        if leftover:
            raise LabError(f"could not remove {leftover}")


# -- command line ------------------------------------------------------------------------------


def _describe(lab: Lab) -> str:
    lines = [f"lab {lab.prefix}: {len(lab.hosts)} hosts, state in {lab.workdir}"]
    for h in lab.hosts:
        lines += [
            f"{h.name}: ns {h.ns}  {h.ipv4}  {h.ipv6}",
            f"  shell   ip netns exec {h.ns} bash",
            f"  ovsdb   ovs-vsctl --db={h.db} --no-wait show",
        ]
        if h.pluto is not None:
            lines.append(
                f"  pluto   {h.pluto.whack_command()} --showstates   (log {h.pluto.log_path})"
            )
        else:
            lines.append(
                f"  charon  swanctl --list-sas --uri {h.vici_uri}   (log {h.charon_log_path})"
            )
        if h.daemon_pid is not None:
            lines.append(f"  daemon  ovs-appctl -t {h.ctl_path} version  (log {h.daemon_log_path})")
    return "\n".join(lines)


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(
        args.n_hosts,
        workdir=args.workdir,
        keep=args.keep,
        daemon=not args.no_daemon,
        daemon_args=shlex.split(args.daemon_args),
        charon_settings=args.charon_settings,
        libreswan_hosts=args.libreswan_hosts,
    )

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Explicitly, also for SIGINT: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.monotonic()
    lab.start()
    try:
        print(_describe(lab))
        print(f"up in {time.monotonic() - t0:.2f} s; Ctrl-C to stop", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ovs-ipsec-lab",
        description="Throw-away lab of network-namespace hosts with ovsdb-server and charon.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab, wait for Ctrl-C, stop it")
    up.add_argument("n_hosts", type=int, metavar="N", help=f"number of hosts (1-{MAX_HOSTS})")
    up.add_argument("--no-daemon", action="store_true", help="do not start ovs-monitor-ipsec")
    up.add_argument("--keep", action="store_true", help="keep the workdir (logs) afterwards")
    up.add_argument("--workdir", help="state directory (default: a new /tmp/oi-XXXXXXXX)")
    up.add_argument("--daemon-args", default="", help="extra daemon arguments (shell words)")
    up.add_argument("--charon-settings", default="", help="extra text inside charon { }")
    up.add_argument(
        "--libreswan", dest="libreswan_hosts", type=int, action="append", default=[],
        metavar="I", help="host I runs Libreswan's pluto instead of charon (repeatable)",
    )  # fmt: skip
    up.set_defaults(func=_cmd_up)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    try:
        return int(args.func(args))
    except LabError as e:
        print(f"ovs-ipsec-lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
