"""Debian's upstream `ovs-monitor-ipsec` (openvswitch-ipsec, OVS 3.1) with its stroke `ipsec`
starter and its own charon, in one lab host's network namespace (test-machine.md section 12).

Every upstream process runs in a private mount namespace in which `/run`, `/etc/ipsec.conf`,
`/etc/ipsec.secrets` and `/etc/strongswan.d` are bind mounts of files under this host's
directory, so starter's and charon's pidfiles, sockets and configuration are per host and the
machine's own `/etc` is never written. The mounts vanish with the last process inside them.
The host's charon-systemd must be stopped first: both would bind the IKE ports.

Cleanup: every process is tracked by PID and start time (ovs_ipsec.tools.lab.LabProcess); `stop()`
also sweeps the namespace for anything else upstream left (an `ipsec` script, its `sleep 2`),
sparing only the PIDs it is told to keep (the host's ovsdb-server).

May import: stdlib, ovs_ipsec.tools.lab, probes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time

from probes import flush_xfrm, read_pidfile, wait_socket

try:
    from ovs_ipsec.tools.lab import LabProcess, terminate
except ImportError:  # --commit of a revision before the subpackages (da7b6dc)
    from ovs_ipsec.lab import LabProcess, terminate  # type: ignore[no-redef]

SCRIPT = "/usr/share/openvswitch/scripts/ovs-monitor-ipsec"
PYTHON = "/usr/bin/python3"  # Debian's python3-openvswitch is visible only to this one

# What upstream itself writes to /etc/strongswan.d/ovs.conf when it restarts the IKE daemon
# (StrongSwanHelper.STRONGSWAN_CONF in OVS 3.1); written by us for --no-restart-ike-daemon runs,
# which otherwise would run charon without these settings.
OVS_CONF = """\
charon {
  plugins {
    kernel-netlink {
      set_proto_port_transport_sa = yes
      xfrm_ack_expires = 10
    }
    gcm {
      load = yes
    }
  }
  load_modular = yes
}
"""


class UpstreamError(RuntimeError):
    pass


class Upstream:
    def __init__(self, ns: str, host_dir: str, db: str, keep_pids: tuple[int, ...] = ()) -> None:
        self.ns = ns
        self.db = db
        self.dir = os.path.join(host_dir, "up")
        self.run_dir = os.path.join(self.dir, "run")
        self.etc_dir = os.path.join(self.dir, "etc")
        self.swan_d = os.path.join(self.dir, "strongswan.d")
        self.ovs_run = os.path.join(self.dir, "ovsrun")
        self.vici_path = os.path.join(self.run_dir, "charon.vici")
        self.stroke_path = os.path.join(self.run_dir, "charon.ctl")
        self.pidfile = os.path.join(self.ovs_run, "ovs-monitor-ipsec.pid")
        self.log_path = os.path.join(self.dir, "ovs-monitor-ipsec.log")
        self.keep_pids = keep_pids
        self.procs: list[LabProcess] = []
        self._launcher: subprocess.Popen[bytes] | None = None

    # -- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        for d in (self.run_dir, self.etc_dir, self.ovs_run):
            os.makedirs(d, exist_ok=True)
        if not os.path.isdir(self.swan_d):
            shutil.copytree("/etc/strongswan.d", self.swan_d, symlinks=True)
        with open(os.path.join(self.swan_d, "zz-lab.conf"), "w") as f:
            f.write(
                "charon {\n  retransmit_tries = 2\n  filelog {\n    lab {\n"
                f"      path = {self.dir}/charon.log\n      default = 1\n"
                "      flush_line = yes\n    }\n  }\n}\n"
            )
        for name in ("ipsec.conf", "ipsec.secrets"):
            with open(os.path.join(self.etc_dir, name), "w"):
                pass

    def _wrap(self, argv: list[str]) -> list[str]:
        mounts = " && ".join(
            f"mount --bind {shlex.quote(src)} {dst}"
            for src, dst in (
                (self.run_dir, "/run"),
                (os.path.join(self.etc_dir, "ipsec.conf"), "/etc/ipsec.conf"),
                (os.path.join(self.etc_dir, "ipsec.secrets"), "/etc/ipsec.secrets"),
                (self.swan_d, "/etc/strongswan.d"),
            )
        )
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{mounts} && exec {shlex.join(argv)}",
        ]

    def _spawn(self, argv: list[str], what: str, log: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.dir, log), "ab") as out:
            popen = subprocess.Popen(
                self._wrap(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(LabProcess.track(popen.pid, what, popen))
        return popen

    # -- the IKE daemon (only for --no-restart-ike-daemon runs) ----------------------------------

    def start_ike(self, timeout: float = 30.0) -> None:
        """`ipsec start` (starter, which starts charon) with upstream's ovs.conf in place."""
        with open(os.path.join(self.swan_d, "ovs.conf"), "w") as f:
            f.write(OVS_CONF)
        popen = self._spawn(["ipsec", "start"], "upstream ipsec start", "ipsec-start.out")
        popen.wait(timeout)
        self._await_charon(timeout)

    def _await_charon(self, timeout: float) -> None:
        wait_socket(self.stroke_path, timeout)
        wait_socket(self.vici_path, timeout)
        self._track_pidfiles()

    # -- the monitor ----------------------------------------------------------------------------

    def spawn_monitor(self, restart: bool) -> None:
        """Start upstream's monitor (returns at once; `finish_start` waits for the launcher).

        With restart (upstream's default) the launcher runs `ipsec restart` before detaching."""
        argv = [
            "env",
            f"OVS_RUNDIR={self.ovs_run}",
            f"OVS_LOGDIR={self.dir}",
            PYTHON,
            SCRIPT,
            self.db,
            "--ike-daemon=strongswan",
            f"--pidfile={self.pidfile}",
            f"--log-file={self.log_path}",
            "--detach",
        ]
        if not restart:
            argv.append("--no-restart-ike-daemon")
        self._launcher = self._spawn(argv, "upstream monitor launcher", "monitor.out")

    def finish_start(self, timeout: float = 60.0) -> None:
        assert self._launcher is not None
        try:
            rc = self._launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            raise UpstreamError(f"upstream's monitor did not detach within {timeout:g} s") from None
        if rc != 0:
            raise UpstreamError(f"upstream's monitor launcher exited {rc}; see {self.dir}")
        self._await_charon(timeout)

    def _track_pidfiles(self) -> None:
        known = {p.pid for p in self.procs}
        for path, what in (
            (self.pidfile, "upstream monitor"),
            (os.path.join(self.run_dir, "starter.charon.pid"), "upstream starter"),
            (os.path.join(self.run_dir, "charon.pid"), "upstream charon"),
        ):
            pid = read_pidfile(path)
            if pid is not None and pid not in known:
                proc = LabProcess.track(pid, what)
                if proc.alive():
                    self.procs.append(proc)

    @property
    def monitor_pid(self) -> int | None:
        pid = read_pidfile(self.pidfile)
        if pid is None:
            return None
        return pid if LabProcess.track(pid, "probe").alive() else None

    @property
    def charon_pid(self) -> int | None:
        return read_pidfile(os.path.join(self.run_dir, "charon.pid"))

    # -- teardown -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every upstream process (SIGTERM, SIGKILL after 3 s), flush the namespace's XFRM
        state and forget starter's and charon's runtime files."""
        with contextlib.suppress(OSError):
            self._track_pidfiles()
        survivors = terminate(self.procs, signal.SIGTERM, grace=3.0)
        leftovers = self._namespace_leftovers()
        survivors += terminate(leftovers, signal.SIGKILL, grace=2.0)
        self.procs = [p for p in survivors if p.alive()]
        self._launcher = None
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            flush_xfrm(self.ns)
        if os.path.isdir(self.run_dir):
            for name in os.listdir(self.run_dir):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.run_dir, name))
        if self.procs:
            raise UpstreamError(f"upstream processes survived SIGKILL: {self.procs}")

    def _namespace_leftovers(self) -> list[LabProcess]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns], capture_output=True, text=True, check=False
        ).stdout
        pids = [int(p) for p in out.split() if int(p) not in self.keep_pids]
        return [LabProcess.track(pid, f"leftover in {self.ns}") for pid in pids]


def wait_gone(proc_pid: int | None, timeout: float = 5.0) -> None:
    if proc_pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(f"/proc/{proc_pid}"):
        time.sleep(0.05)
