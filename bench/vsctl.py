"""Where the time of one `ovs-vsctl` that adds N ports goes (issue 14: 35-48 s for 5,000 at
6f05b94). One call: `ovs-vsctl --no-wait -- add-port br0 t0 -- set interface t0 type=gre
options:remote_ip=... options:psk=... -- add-port ...`, as an operator or a provisioning
script would write it, run in the host's namespace.

Measured: the call's wall time; its own CPU (user + system, from wait4's rusage of the child:
`ip netns exec` execs ovs-vsctl in place, so the child is ovs-vsctl); and, from /proc over the
same window, the CPU of ovsdb-server, of our daemon and of charon, when they run. The rest of
the wall time is waiting that none of them spent on a CPU (or other jobs on the machine).

May import: stdlib, workload.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

import workload


def vsctl_argv(ns: str, db: str, rows: list[tuple[str, dict[str, str]]]) -> list[str]:
    argv = ["ip", "netns", "exec", ns, "ovs-vsctl", f"--db={db}", "--no-wait", "--timeout=900"]
    for name, options in rows:
        argv += ["--", "add-port", "br0", name, "--", "set", "interface", name, "type=gre"]
        argv += [f"options:{k}={v}" for k, v in options.items()]
    return argv


@dataclass(frozen=True)
class VsctlRun:
    wall_s: float
    vsctl_cpu_s: float
    cpu_s: Mapping[str, float]  # other processes' CPU over the same window, by role
    started: float  # time.monotonic() at the spawn


def _cpu(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def add_ports(ns: str, db: str, n: int, watch: Mapping[str, int | None]) -> VsctlRun:
    """Run the one ovs-vsctl that adds tunnels t0..t<n-1>; `watch` names the pids whose CPU
    is taken over the same window (None: not running)."""
    pids = {role: pid for role, pid in watch.items() if pid}
    before = {role: _cpu(pid) for role, pid in pids.items()}
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            vsctl_argv(ns, db, workload.tunnels(n)), stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"ovs-vsctl exited with {proc.returncode}: {err.read().decode()[-500:]}"
            )
    after = {role: _cpu(pid) for role, pid in pids.items()}
    cpu = {
        role: after[role] - before[role]  # type: ignore[operator]
        for role in pids
        if before[role] is not None and after[role] is not None
    }
    return VsctlRun(wall, usage.ru_utime + usage.ru_stime, cpu, started)
