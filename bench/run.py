#!/usr/bin/env python3
"""The ovs-ipsec benchmark (issues 7 and 14): convergence, change latency, idle cost, memory and
restart cost of our daemon at N tunnels, side by side with the raw VICI floor and with Debian's
upstream ovs-monitor-ipsec, on lab hosts (real ovsdb-server, charon and kernel XFRM), and where
one ovs-vsctl adding N ports spends its time. Prints one table (bench/table.py) with issue 14's
bars.

    bench/run.py [--sizes 1000 5000] [--repeat K] [--vsctl-n N...] [--quick]
                 [--idle-seconds S] [--json FILE] [--commit REV | --compare REV... | tree]

Over 400 lines because it is one sequence of measurements sharing one lab: each system's
cold start, bulk add, changes, restart and idle window, in that order; the table, the restart
observers and the ovs-vsctl run live in table.py, restart.py and vsctl.py.

Needs root. Progress goes to stderr, the table to stdout. See bench/README.md for what each
figure means.

Lab layout: h1 runs our daemon (ovsdb-server, charon-systemd, ovs-monitor-ipsec); h2 runs the
floor (charon-systemd and bench/floor.py); h3 runs upstream (ovsdb-server, and upstream's monitor
with its own starter and charon in a private mount namespace; h3's charon-systemd is stopped).
The systems are measured one after the other, never concurrently, except the idle phase, in
which ours and upstream idle side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import snapshot  # noqa: E402

# --compare only runs this script once per revision: the children take the snapshots.
SNAPSHOT = (
    snapshot.select(sys.argv[1:])
    if __name__ == "__main__" and not any(a.startswith("--compare") for a in sys.argv)
    else None
)

import workload  # noqa: E402
from ovsdb_rpc import (  # noqa: E402
    OvsdbClient,
    Sent,
    add_tunnels_ops,
    keep_only_ports_ops,
    set_options_op,
)
from probes import (  # noqa: E402
    ProcSample,
    SpdCounter,
    Vici,
    flush_xfrm,
    policy_census,
    proc_sample,
)
from restart import Readiness, XfrmMonitor, charon_requests  # noqa: E402
from table import compare_table, render  # noqa: E402
from upstream import SCRIPT as UPSTREAM_SCRIPT  # noqa: E402
from upstream import Upstream, UpstreamError  # noqa: E402
from vsctl import add_ports  # noqa: E402

try:
    from ovs_ipsec.core import naming
    from ovs_ipsec.tools.lab import Host, Lab
except ImportError:  # --commit of a revision before the subpackages (da7b6dc)
    from ovs_ipsec.lab import Host, Lab  # type: ignore[no-redef]

    from ovs_ipsec import naming  # type: ignore[no-redef]

POLL = 0.01  # convergence polling interval (s): one get-conns plus one SPD count
CHANGE_POLL = 0.0005  # change polling interval (s): one filtered list-conns
SAMPLE = 0.05  # idle sampling interval (s)
SETTLE = 0.05  # pause between two changes (s)

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# -- measuring ------------------------------------------------------------------------------------


def converge(
    spd: SpdCounter,
    ns: str,
    n: int,
    t0: float,
    timeout: float,
    vici: Vici | None = None,
    alive: Callable[[], None] | None = None,
) -> float:
    """Seconds from `t0` until charon holds all n connections (get-conns, when `vici` is given:
    VICI-loaded ones only) and all 2n trap policies are in the kernel.

    Polls cheaply (one SPD count, one get-conns) every POLL s and records each sample; once the
    counts look complete, one full `ip xfrm policy` listing confirms that 2n of the policies are
    ESP trap policies. The answer is the end of the first sample that showed the final state.
    `alive`, called before each sample, raises if the system under test has died."""
    samples: list[tuple[float, int | None, int]] = []
    censused_at = -1
    while True:
        if alive is not None:
            alive()  # raises when the system under test has died: no point in waiting
        conns = vici.count_conns() if vici is not None else None
        total = spd.total()
        now = time.monotonic()
        samples.append((now, conns, total))
        if (conns is None or conns >= n) and total >= 2 * n and total != censused_at:
            censused_at = total
            if policy_census(ns).trap >= 2 * n:
                break
        if now - t0 > timeout:
            raise TimeoutError(
                f"not converged after {timeout:g} s: {conns} connections, {total} policies"
            )
        time.sleep(POLL)
    final = spd.total()
    for t, conns, total in samples:
        if (conns is None or conns >= n) and total == final:
            return t - t0
    return samples[-1][0] - t0


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = CHANGE_POLL
) -> float:
    """Poll `predicate`; return the time.monotonic() at which it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_quiet(pid: int | None, quiet: float = 0.05, timeout: float = 30.0) -> None:
    """Wait until process `pid` has neither run nor blocked for `quiet` s (it sits in poll),
    so that one change's measurement never starts while the previous pass is still finishing
    (removing policies, running `ipsec status`)."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    last, changed_at = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            s = proc_sample(pid)
        except OSError:
            return
        state = (s.cpu, s.vcsw, s.nvcsw)
        if state != last:
            last, changed_at = state, s.t
        elif s.t - changed_at >= quiet:
            return
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} still busy after {timeout:g} s")


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclasses.dataclass
class ChangeRecord:
    conn: str  # the new connection's name in charon
    sent: Sent
    latency: float  # s, commit sent -> charon lists the connection


def change_stats(records: list[ChangeRecord]) -> dict[str, float]:
    ms = [r.latency * 1000 for r in records]
    return {"change_med_ms": statistics.median(ms), "change_p95_ms": nearest_rank(ms, 0.95)}


# ovs.vlog prints the milliseconds as the first three characters of a float's text: "094" is
# never written, 94 ms reads "94." and 5 ms "5.5"; the digits before a dot are the milliseconds.
_LOG_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{1,3})[.\d]*Z")


def _log_time(line: str) -> float | None:
    match = _LOG_STAMP.fullmatch(line.split("|", 1)[0].strip())
    if match is None:
        return None
    when = dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    return when.timestamp() + int(match.group(2)) / 1000


def daemon_internal(log_text: str, records: list[ChangeRecord]) -> dict[str, Any]:
    """Daemon-internal change latency from its -vfile:dbg log (millisecond timestamps): from the
    first poller wake-up on input ("[POLLIN] on fd N", logged by ovs.poller at debug level) after
    the commit was sent, to "loaded connection <new conn>" (logged once load-conn returned),
    split at "<n> requests to charon" (logged before the first request is written) into the
    daemon's own work and the wait for charon's answers. Also commit sent -> that log line,
    which adds ovsdb-server's part."""
    lines = log_text.splitlines()
    internal, commit_to_loaded, missing = [], [], 0
    own: list[float] = []
    start = 0
    for rec in records:
        floor_ms = math.floor(rec.sent.wall * 1000) / 1000
        marker = f"loaded connection {rec.conn} "
        loaded_at = next((i for i in range(start, len(lines)) if marker in lines[i]), None)
        if loaded_at is None:
            missing += 1
            continue
        wake = None
        window = range(start, loaded_at)
        for i in window:
            if "[POLLIN]" in lines[i]:
                t = _log_time(lines[i])
                if t is not None and t >= floor_ms:
                    wake = t
                    break
        loaded = _log_time(lines[loaded_at])
        start = loaded_at + 1
        if wake is None or loaded is None:
            missing += 1
            continue
        internal.append((loaded - wake) * 1000)
        commit_to_loaded.append((loaded - rec.sent.wall) * 1000)
        sending = next(
            (_log_time(lines[i]) for i in window if "requests to charon" in lines[i]
             and (_log_time(lines[i]) or 0) >= wake),
            None,
        )  # fmt: skip
        if sending is not None:
            own.append((sending - wake) * 1000)
    if not internal:
        return {"internal_missing": missing}
    return {
        "internal_med_ms": statistics.median(internal),
        "internal_p95_ms": nearest_rank(internal, 0.95),
        "internal_max_ms": max(internal),
        "commit_to_log_med_ms": statistics.median(commit_to_loaded),
        "internal_missing": missing,
        **(
            {"own_med_ms": statistics.median(own), "own_p95_ms": nearest_rank(own, 0.95)}
            if own
            else {}
        ),
    }


def analyse_idle(samples: list[ProcSample], gap: int = 2) -> dict[str, float]:
    """CPU and wake-ups over an idle window, split into periodic-check episodes and others.

    An episode is a run of sample intervals in which the process ran or switched (quiet gaps of
    up to `gap` intervals are bridged). A periodic check talks to charon several times and runs
    `ip`, so it blocks at least three times: episodes with >= 3 voluntary switches are checks,
    anything smaller is an "other" wake-up (a timer or socket wake-up doing nothing)."""
    episodes: list[dict[str, float]] = []
    quiet = gap + 1
    for a, b in zip(samples, samples[1:], strict=False):
        switches = (b.vcsw - a.vcsw) + (b.nvcsw - a.nvcsw)
        cpu = b.cpu - a.cpu
        if switches or cpu > 0:
            if quiet > gap:
                episodes.append({"t": a.t - samples[0].t, "vcsw": 0, "cpu": 0.0})
            episodes[-1]["vcsw"] += b.vcsw - a.vcsw
            episodes[-1]["cpu"] += cpu
            quiet = 0
        else:
            quiet += 1
    checks = [e for e in episodes if e["vcsw"] >= 3]
    others = [e for e in episodes if e["vcsw"] < 3]
    span = samples[-1].t - samples[0].t
    return {
        "seconds": span,
        "cpu_s": samples[-1].cpu - samples[0].cpu,
        "cpu_children_s": samples[-1].cpu_children - samples[0].cpu_children,
        "check_cpu_s": sum(e["cpu"] for e in checks),
        "vcsw": samples[-1].vcsw - samples[0].vcsw,
        "wakeups": len(episodes),
        "check_wakeups": len(checks),
        "other_wakeups": len(others),
        "check_times": [round(e["t"], 2) for e in checks],
        "other_times": [round(e["t"], 2) for e in others],
    }


# -- the bench ------------------------------------------------------------------------------------


class Db:
    """One host's OVSDB, changed over a persistent JSON-RPC connection."""

    def __init__(self, host: Host) -> None:
        self.client = OvsdbClient(host.db_path)
        br0 = self.client.port_uuid("br0")
        if br0 is None:
            raise BenchError(f"{host.name}: no br0 port")
        self.keep = [br0]

    def clear(self) -> None:
        self.client.transact(keep_only_ports_ops(self.keep))

    def add(self, rows: list[tuple[str, dict[str, str]]]) -> Sent:
        return self.client.transact(add_tunnels_ops(rows))[1]

    def reset(self, rows: list[tuple[str, dict[str, str]]]) -> None:
        self.clear()
        if rows:
            self.add(rows)

    def change(self, name: str, options: dict[str, str]) -> Sent:
        return self.client.transact([set_options_op(name, options)])[1]

    def close(self) -> None:
        self.client.close()


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.ours, self.floor_host, self.up_host = lab[1], lab[2], lab[3]
        self.db_ours = Db(self.ours)
        self.db_up = Db(self.up_host)
        self.upstream = Upstream(
            self.up_host.ns,
            self.up_host.dir,
            self.up_host.db,
            keep_pids=tuple(p for p in (self.up_host.ovsdb_pid,) if p),
        )
        self.spd = {h.ns: SpdCounter(h.ns) for h in (self.ours, self.floor_host, self.up_host)}
        self.floor_proc: subprocess.Popen[str] | None = None
        self._change_counter = 0
        self.upstream_notes: dict[int, list[str]] = {}

    def close(self) -> None:
        self.stop_floor()
        with contextlib.suppress(Exception):
            self.upstream.stop()
        for spd in self.spd.values():
            spd.close()
        self.db_ours.close()
        self.db_up.close()

    def next_change_ip(self) -> str:
        ip = workload.changed_peer(self._change_counter)
        self._change_counter += 1
        return ip

    # -- ours ---------------------------------------------------------------------------------

    def ours_reset(self, rows: list[tuple[str, dict[str, str]]]) -> None:
        """Daemon stopped, charon fresh and empty, no policies in the kernel, OVSDB = rows."""
        h = self.ours
        h.stop_daemon()
        h.stop_charon()
        flush_xfrm(h.ns)
        self.db_ours.reset(rows)
        h.start_charon()

    def ours_alive(self) -> None:
        if self.ours.daemon_pid is None:
            tail = "\n".join(self.ours.daemon_log().splitlines()[-15:])
            raise BenchError(f"our daemon exited; the end of its log:\n{tail}")

    def _cpu_split(self, charon_before: float) -> dict[str, float]:
        """CPU our daemon has used since it started, and charon since `charon_before` (its
        reading then): which of the two a cold start's or bulk add's growth with N is made of."""
        h = self.ours
        split = {}
        if h.daemon_pid is not None:
            split["daemon_cpu_s"] = proc_sample(h.daemon_pid).cpu
        if h.charon_pid is not None:
            split["charon_cpu_s"] = proc_sample(h.charon_pid).cpu - charon_before
        return split

    def ours_cold(self, n: int) -> dict[str, float]:
        """Seconds from spawning the daemon with N tunnels in OVSDB until charon and the kernel
        hold them all, and the CPU both used meanwhile."""
        self.ours_reset(workload.tunnels(n))
        h = self.ours
        errors: list[BaseException] = []

        def start() -> None:
            try:
                h.start_daemon()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        assert h.charon_pid is not None
        charon_before = proc_sample(h.charon_pid).cpu
        vici = Vici(h.vici_path)
        try:

            def alive() -> None:
                if errors:
                    raise errors[0]

            thread = threading.Thread(target=start, daemon=True)
            t0 = time.monotonic()
            thread.start()
            seconds = converge(self.spd[h.ns], h.ns, n, t0, self.args.timeout, vici, alive)
            thread.join(60)
        finally:
            vici.close()
        if errors:
            raise errors[0]
        return {
            "cold_s": seconds,
            **{f"cold_{k}": v for k, v in self._cpu_split(charon_before).items()},
        }

    def ours_bulk(self, n: int) -> dict[str, float]:
        self.ours_reset([])
        h = self.ours
        h.start_daemon()
        time.sleep(0.2)
        wait_quiet(h.daemon_pid, quiet=0.3)
        assert h.daemon_pid is not None and h.charon_pid is not None
        daemon_before = proc_sample(h.daemon_pid).cpu
        charon_before = proc_sample(h.charon_pid).cpu
        vici = Vici(h.vici_path)
        try:
            sent = self.db_ours.add(workload.tunnels(n))
            seconds = converge(
                self.spd[h.ns], h.ns, n, sent.mono, self.args.timeout, vici, self.ours_alive
            )
        finally:
            vici.close()
        split = self._cpu_split(charon_before)
        if "daemon_cpu_s" in split:
            split["daemon_cpu_s"] -= daemon_before
        return {"bulk_s": seconds, **{f"bulk_{k}": v for k, v in split.items()}}

    def ours_changes(self, n: int) -> dict[str, Any]:
        """remote_ip changes on the running daemon (the one the bulk add converged)."""
        h = self.ours
        wait_quiet(h.daemon_pid, quiet=0.3)
        log_offset = len(h.daemon_log())
        current = {i: workload.peer(i) for i in range(n)}
        records = []
        vici = Vici(h.vici_path)
        try:
            for i in range(self.args.changes):
                k = (i * n) // self.args.changes
                old, new = current[k], self.next_change_ip()
                old_conn, new_conn = naming.conn_name(old), naming.conn_name(new)
                sent = self.db_ours.change(
                    workload.name(k), {"remote_ip": new, "psk": workload.psk(k)}
                )
                seen = wait_until(
                    lambda c=new_conn, r=new: vici.has_conn(c, r), 10, f"{new_conn} in charon"
                )
                records.append(ChangeRecord(new_conn, sent, seen - sent.mono))
                wait_until(lambda c=old_conn: not vici.has_conn(c), 10, f"{old_conn} unloaded")
                current[k] = new
                wait_quiet(h.daemon_pid)
                time.sleep(SETTLE)
        finally:
            vici.close()
        time.sleep(0.2)  # let the last log lines reach the file
        return {**change_stats(records), **daemon_internal(h.daemon_log()[log_offset:], records)}

    def ours_restart(self, n: int) -> dict[str, Any]:
        """Restart the daemon that has just converged n tunnels, with charon and the kernel
        keeping everything: seconds from spawning it to READY=1 (and to its --detach parent's
        exit, i.e. the first pass done), and the writes to charon and to the kernel from the
        spawn until the daemon is quiet after READY (restart.py says how they are counted)."""
        h = self.ours
        wait_quiet(h.daemon_pid, quiet=0.3)
        h.stop_daemon()  # SIGTERM: exits without cleaning up (only `exit` cleans up)
        held = policy_census(h.ns).trap
        if held < 2 * n:
            raise BenchError(f"restart: only {held} of {2 * n} trap policies left after stopping")
        monitor = XfrmMonitor(h.ns)
        try:
            charon_offset = len(h.charon_log())
            ready_at, exited = self._restart_daemon()
            wait_quiet(h.daemon_pid, quiet=0.3)
            kernel = monitor.stop()
        finally:
            monitor.close()
        time.sleep(0.1)  # charon flushes each line; let the last ones land
        writes, reads = charon_requests(h.charon_log()[charon_offset:])
        if not writes and not reads:
            # A restart asks charon at least for its version and connections: no request
            # logged at all means charon's log level hides them, not that nothing was written.
            raise BenchError("restart: charon's log shows no VICI request (cfg log level < 2?)")
        out: dict[str, Any] = {
            "restart_charon_writes": sum(writes.values()),
            "restart_kernel_writes": sum(kernel.values()),
            "restart_detail": {
                "charon_writes": dict(writes),
                "charon_reads": dict(reads),
                "kernel": dict(kernel),
            },
        }
        if ready_at is not None:
            out["restart_ready_s"] = ready_at
        if exited is not None:
            out["restart_parent_s"] = exited
        return out

    def _restart_daemon(self) -> tuple[float | None, float | None]:
        """Start our daemon with a notify socket: seconds from the spawn to READY=1 and to its
        --detach parent's exit (None: not seen)."""
        h = self.ours
        ready = Readiness()
        errors: list[BaseException] = []
        exited: list[float] = []

        def start() -> None:
            try:
                h.start_daemon()
                exited.append(time.monotonic())
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        os.environ["NOTIFY_SOCKET"] = ready.path  # inherited by the daemon only
        try:
            thread = threading.Thread(target=start, daemon=True)
            t0 = time.monotonic()
            thread.start()
            ready_at = ready.wait_ready(self.args.timeout)
            thread.join(60)
        finally:
            os.environ.pop("NOTIFY_SOCKET", None)
            ready.close()
        if errors:
            raise errors[0]
        return (
            None if ready_at is None else ready_at - t0,
            exited[0] - t0 if exited else None,
        )

    def vsctl_breakdown(self, n: int) -> dict[str, Any]:
        """One ovs-vsctl adding n ports: on ovsdb-server alone (no daemon), then with our daemon
        attached (holding no tunnels before), until converged."""
        h = self.ours
        self.ours_reset([])
        wait_quiet(h.ovsdb_pid, quiet=0.3)
        alone = add_ports(h.ns, h.db, n, {"ovsdb-server": h.ovsdb_pid})
        log(f"N={n}: ovs-vsctl alone {alone.wall_s:.2f} s ({alone.vsctl_cpu_s:.2f} CPU-s own)")
        self.ours_reset([])
        h.start_daemon()
        time.sleep(0.2)
        wait_quiet(h.daemon_pid, quiet=0.3)
        roles = {"ovsdb-server": h.ovsdb_pid, "ours": h.daemon_pid, "charon": h.charon_pid}
        attached = add_ports(h.ns, h.db, n, roles)
        pids = {"ours": h.daemon_pid, "charon": h.charon_pid}
        before = {role: proc_sample(pid).cpu for role, pid in pids.items() if pid}
        vici = Vici(h.vici_path)
        try:
            converged = converge(
                self.spd[h.ns], h.ns, n, attached.started, self.args.timeout, vici,
                self.ours_alive,
            )  # fmt: skip
        finally:
            vici.close()
        after = {role: proc_sample(pid).cpu for role, pid in pids.items() if pid}
        log(
            f"N={n}: ovs-vsctl with our daemon {attached.wall_s:.2f} s, converged after "
            f"{converged:.2f} s"
        )

        def row(run: Any) -> dict[str, float]:
            return {
                "wall_s": run.wall_s,
                "vsctl_cpu_s": run.vsctl_cpu_s,
                **{f"{role}_cpu_s": cpu for role, cpu in run.cpu_s.items()},
            }

        with_daemon = row(attached) | {"converged_s": converged}
        for role in before.keys() & after.keys():
            with_daemon[f"{role}_after_cpu_s"] = after[role] - before[role]
        return {"alone": row(alone), "with_daemon": with_daemon}

    # -- the floor ----------------------------------------------------------------------------

    def floor_fresh(self) -> None:
        h = self.floor_host
        self.stop_floor()
        h.stop_charon()
        flush_xfrm(h.ns)
        h.start_charon()

    def spawn_floor(self, n: int, wait: bool) -> subprocess.Popen[str]:
        python = SNAPSHOT.python if SNAPSHOT else sys.executable
        argv = [python, os.path.join(HERE, "floor.py"), self.floor_host.vici_path, str(n)]
        if wait:
            argv.append("--wait")
        self.floor_proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        return self.floor_proc

    def stop_floor(self) -> None:
        proc, self.floor_proc = self.floor_proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write("quit\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _floor_line(self, expect: str) -> str:
        assert self.floor_proc is not None and self.floor_proc.stdout is not None
        line = self.floor_proc.stdout.readline().strip()
        if not line.startswith(expect):
            raise BenchError(f"floor.py said {line!r}, expected {expect!r}")
        return line

    def floor_cold(self, n: int) -> float:
        self.floor_fresh()
        h = self.floor_host
        vici = Vici(h.vici_path)
        try:
            t0 = time.monotonic()
            self.spawn_floor(n, wait=False)
            seconds = converge(self.spd[h.ns], h.ns, n, t0, self.args.timeout, vici)
            self._floor_line("loaded")
        finally:
            vici.close()
            self.stop_floor()
        return seconds

    def floor_bulk(self, n: int) -> float:
        """Leaves the floor process running for floor_changes()."""
        self.floor_fresh()
        h = self.floor_host
        proc = self.spawn_floor(n, wait=True)
        self._floor_line("ready")
        vici = Vici(h.vici_path)
        try:
            t0 = time.monotonic()
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            seconds = converge(self.spd[h.ns], h.ns, n, t0, self.args.timeout, vici)
            self._floor_line("loaded")
        finally:
            vici.close()
        return seconds

    def floor_changes(self, n: int) -> dict[str, Any]:
        proc = self.floor_proc
        assert proc is not None and proc.stdin is not None
        vici = Vici(self.floor_host.vici_path)
        records = []
        try:
            for i in range(self.args.changes):
                k = (i * n) // self.args.changes
                new = self.next_change_ip()
                conn = naming.conn_name(new)
                t0 = time.monotonic()
                proc.stdin.write(f"change {workload.name(k)} {new}\n")
                proc.stdin.flush()
                seen = wait_until(lambda c=conn, r=new: vici.has_conn(c, r), 10, f"{conn}")
                self._floor_line("done")
                records.append(ChangeRecord(conn, Sent(t0, 0.0), seen - t0))
                time.sleep(SETTLE)
        finally:
            vici.close()
            self.stop_floor()
        return change_stats(records)

    # -- upstream -----------------------------------------------------------------------------

    def upstream_cold(self, n: int, restart: bool) -> float:
        up, h = self.upstream, self.up_host
        up.stop()
        self.db_up.reset(workload.tunnels(n))
        up.prepare()
        if not restart:
            up.start_ike()
        t0 = time.monotonic()
        up.spawn_monitor(restart)
        seconds = converge(self.spd[h.ns], h.ns, n, t0, self.args.upstream_timeout)
        up.finish_start()
        return seconds

    def upstream_bulk(self, n: int) -> float:
        """Leaves upstream running for upstream_changes() and the idle phase."""
        up, h = self.upstream, self.up_host
        up.stop()
        self.db_up.clear()
        up.prepare()
        up.spawn_monitor(restart=True)
        up.finish_start()
        time.sleep(0.2)
        wait_quiet(up.monitor_pid, quiet=0.3)
        sent = self.db_up.add(workload.tunnels(n))
        return converge(self.spd[h.ns], h.ns, n, sent.mono, self.args.upstream_timeout)

    def upstream_changes(self, n: int) -> dict[str, Any]:
        """Upstream names a tunnel's connection <iface>-<version>; a change bumps the version."""
        wait_quiet(self.upstream.monitor_pid, quiet=0.3)
        version = dict.fromkeys(range(n), 1)
        vici = Vici(self.upstream.vici_path)
        records = []
        try:
            for i in range(self.args.changes):
                k = (i * n) // self.args.changes
                new = self.next_change_ip()
                old_conn = f"{workload.name(k)}-{version[k]}"
                new_conn = f"{workload.name(k)}-{version[k] + 1}"
                sent = self.db_up.change(
                    workload.name(k), {"remote_ip": new, "psk": workload.psk(k)}
                )
                seen = wait_until(
                    lambda c=new_conn, r=new: vici.has_conn(c, r), 30, f"upstream {new_conn}"
                )
                records.append(ChangeRecord(new_conn, sent, seen - sent.mono))
                wait_until(lambda c=old_conn: not vici.has_conn(c), 30, f"{old_conn} gone")
                version[k] += 1
                wait_quiet(self.upstream.monitor_pid)
                time.sleep(SETTLE)
        finally:
            vici.close()
        return change_stats(records)

    # -- one N ----------------------------------------------------------------------------------

    def run_n(self, n: int) -> dict[str, Any]:
        res: dict[str, dict[str, list[Any]]] = {
            s: {} for s in ("ours", "floor", "upstream", "upstream_norestart")
        }
        notes: list[str] = []

        def add(system: str, metrics: dict[str, Any]) -> None:
            for key, value in metrics.items():
                res[system].setdefault(key, []).append(value)

        def attempt(system: str, what: str, fn: Callable[[], dict[str, Any]]) -> bool:
            """Run one upstream measurement; a failure becomes an n/a with the reason."""
            try:
                add(system, fn())
                return True
            except (TimeoutError, UpstreamError, OSError, subprocess.SubprocessError) as e:
                notes.append(f"upstream {what} at N={n}: {e}")
                log(f"  upstream {what} failed: {e}")
                with contextlib.suppress(Exception):
                    self.upstream.stop()
                return False

        up_ok = {"cold": True, "norestart": True, "bulk": True}
        idle: list[dict[str, Any]] = []
        for r in range(1, self.args.repeat + 1):
            tag = f"N={n} repeat {r}/{self.args.repeat}"
            cold = self.ours_cold(n)
            seconds = cold["cold_s"]
            add("ours", cold)
            log(f"{tag}: ours cold start {seconds:.3f} s")
            if self.args.restart:
                restart = self.ours_restart(n)
                add("ours", restart)
                log(
                    f"{tag}: ours restart READY after "
                    f"{restart.get('restart_ready_s', float('nan')):.3f} s, "
                    f"{restart['restart_charon_writes']} writes to charon, "
                    f"{restart['restart_kernel_writes']} to the kernel"
                )
                if "restart_ready_s" not in restart:
                    notes.append(
                        f"ours restart at N={n}: no READY=1 within {self.args.timeout:g} s"
                    )
            if self.args.floor:
                seconds = self.floor_cold(n)
                add("floor", {"cold_s": seconds})
                log(f"{tag}: floor cold start {seconds:.3f} s")
            if self.args.upstream and up_ok["cold"]:
                up_ok["cold"] = attempt(
                    "upstream",
                    "cold start",
                    lambda: {"cold_s": self.upstream_cold(n, restart=True)},
                )
                if up_ok["cold"]:
                    log(f"{tag}: upstream cold start {res['upstream']['cold_s'][-1]:.3f} s")
            if self.args.upstream and up_ok["norestart"]:
                up_ok["norestart"] = attempt(
                    "upstream_norestart",
                    "cold start --no-restart",
                    lambda: {"cold_s": self.upstream_cold(n, False)},
                )
                if up_ok["norestart"]:
                    log(
                        f"{tag}: upstream cold start (--no-restart-ike-daemon) "
                        f"{res['upstream_norestart']['cold_s'][-1]:.3f} s"
                    )

            bulk = self.ours_bulk(n)
            seconds = bulk["bulk_s"]
            add("ours", bulk)
            log(f"{tag}: ours bulk add {seconds:.3f} s")
            stats = self.ours_changes(n)
            add("ours", stats)
            log(
                f"{tag}: ours one change median {stats['change_med_ms']:.1f} ms, "
                f"p95 {stats['change_p95_ms']:.1f} ms; in daemon median "
                f"{stats.get('internal_med_ms', float('nan')):.1f} ms"
            )
            add("ours", self.memory(self.ours.daemon_pid))
            if self.args.floor:
                seconds = self.floor_bulk(n)
                add("floor", {"bulk_s": seconds})
                log(f"{tag}: floor bulk add {seconds:.3f} s")
                stats = self.floor_changes(n)
                add("floor", stats)
                log(f"{tag}: floor one change median {stats['change_med_ms']:.1f} ms")
            if self.args.upstream and up_ok["bulk"]:
                up_ok["bulk"] = attempt(
                    "upstream", "bulk add", lambda: {"bulk_s": self.upstream_bulk(n)}
                )
                if up_ok["bulk"]:
                    log(f"{tag}: upstream bulk add {res['upstream']['bulk_s'][-1]:.3f} s")
                    ok = attempt("upstream", "one change", lambda: self.upstream_changes(n))
                    if ok:
                        log(
                            f"{tag}: upstream one change median "
                            f"{res['upstream']['change_med_ms'][-1]:.1f} ms"
                        )
                        add("upstream", self.memory(self.upstream.monitor_pid))
            idle.append(self.idle(n))

        vsctl = []
        if n in self.args.vsctl_n:
            for r in range(1, self.args.vsctl_repeat + 1):
                log(f"N={n}: one ovs-vsctl adding {n} ports ({r}/{self.args.vsctl_repeat})")
                vsctl.append(self.vsctl_breakdown(n))
        return {"systems": res, "idle": idle, "vsctl": vsctl, "notes": notes}

    def memory(self, pid: int | None) -> dict[str, float]:
        if pid is None:
            return {}
        s = proc_sample(pid)
        return {"rss_mib": s.rss_kib / 1024, "hwm_mib": s.hwm_kib / 1024}

    def idle(self, n: int) -> dict[str, Any]:
        """Ours and upstream, each holding n tunnels, sampled side by side while nothing
        changes. Ours runs with the default 15 s periodic check."""
        pids = {"ours": self.ours.daemon_pid, "ours_charon": self.ours.charon_pid}
        if self.args.upstream:
            pids["upstream"] = self.upstream.monitor_pid
            pids["upstream_charon"] = self.upstream.charon_pid
        pids = {k: v for k, v in pids.items() if v is not None}
        log(f"N={n}: idle for {self.args.idle_seconds:g} s ({', '.join(pids)})")
        time.sleep(2.0)
        samples: dict[str, list[ProcSample]] = {k: [] for k in pids}
        end = time.monotonic() + self.args.idle_seconds
        while True:
            for key, pid in pids.items():
                with contextlib.suppress(OSError):
                    samples[key].append(proc_sample(pid))
            if time.monotonic() >= end:
                break
            time.sleep(SAMPLE)
        out = {key: analyse_idle(s) for key, s in samples.items() if len(s) > 1}
        for key in ("ours", "upstream"):
            if key in samples and samples[key]:
                out[key]["rss_mib"] = samples[key][-1].rss_kib / 1024
                out[key]["hwm_mib"] = samples[key][-1].hwm_kib / 1024
        if "ours" in out:
            o = out["ours"]
            log(
                f"N={n}: ours idle {o['cpu_s']:.3f} CPU-s (checks {o['check_cpu_s']:.3f}), "
                f"{o['wakeups']} wake-ups ({o['check_wakeups']} checks at {o['check_times']}, "
                f"{o['other_wakeups']} other)"
            )
        return out


# -- the header -----------------------------------------------------------------------------------


def machine_header(lab: Lab, args: argparse.Namespace) -> list[str]:
    def run(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=30, cwd=REPO
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    v = Vici(lab[1].vici_path)
    try:
        version = v.session.version()
        swan = f"strongSwan {version['version'].decode()} ({version['daemon'].decode()})"
    finally:
        v.close()
    ovs = run(["ovsdb-server", "--version"]).splitlines()[0].split()[-1]
    debian_ovs = run(["/usr/bin/python3", "-c", "import ovs.version; print(ovs.version.VERSION)"])
    if SNAPSHOT and SNAPSHOT.commit:
        commit, dirty_note = SNAPSHOT.commit[:10], " (snapshot of the commit, --commit)"
    else:
        commit = run(["git", "rev-parse", "--short=10", "HEAD"])
        dirty = run(["git", "status", "--porcelain", "--", "ovs_ipsec"])
        dirty_note = (
            f" + uncommitted changes in {len(dirty.splitlines())} file(s) of "
            "ovs_ipsec/ (working tree)"
            if dirty
            else " (working tree)"
        )
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return [
        f"ovs-ipsec benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit}{dirty_note}",
        f"machine: {os.cpu_count()} CPUs, kernel {platform.release()}, {swan}, OVS {ovs} "
        f"(ovsdb-server; Debian python3-openvswitch {debian_ovs} for upstream), "
        f"our daemon on Python {platform.python_version()} with PyPI ovs "
        f"{importlib.metadata.version('ovs')}, run as installed (byte-compiled, no "
        f"editable-install hook; bench/snapshot.py)",
        f"N PSK/GRE tunnels to N distinct peers; one change = one remote_ip; "
        f"{args.changes} changes per repeat; idle window {args.idle_seconds:g} s; "
        f"load average at the start {load} (other jobs may share the machine)",
    ]


def upstream_unavailable() -> str | None:
    """Why upstream's monitor cannot run here, or None when it can."""
    if os.path.exists(UPSTREAM_SCRIPT):
        return None
    release = "this system"
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        release = fields.get("PRETTY_NAME", release).strip('"')
    return (
        f"upstream's monitor is not installed on {release} ({UPSTREAM_SCRIPT} missing); on "
        "Debian 13 (trixie) openvswitch-ipsec is not installable beside charon-systemd, so "
        "ratios to upstream are measured on Debian 12 (bookworm) only"
    )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--n", "--sizes", dest="n", type=int, nargs="+", default=[100, 1000],
        help="tunnel counts (default 100 1000; issue 14's bars are for 1000 and 5000)",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="repeats per N (default 3)")
    p.add_argument(
        "--vsctl-n", type=int, nargs="*", default=None,
        help="N at which to break down one ovs-vsctl adding N ports (default: the largest N; "
        "none: --vsctl-n with no value)",
    )  # fmt: skip
    p.add_argument(
        "--vsctl-repeat", type=int, default=None, help="runs of that breakdown (default --repeat)"
    )
    p.add_argument(
        "--no-restart", dest="restart", action="store_false",
        help="skip the restart figure (READY and writes after a restart on a converged state)",
    )  # fmt: skip
    p.add_argument(
        "--compare", metavar="REV", nargs="+",
        help="run the whole benchmark once per revision (REV or 'tree' for the working tree), "
        "one after the other, and print a before/after summary",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N=100, 1 repeat, 10 changes, 20 s idle"
    )
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--changes", type=int, default=50, help="changes per repeat (default 50)")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    p.add_argument("--no-floor", dest="floor", action="store_false")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="convergence timeout for ours and the floor (s)",
    )
    p.add_argument(
        "--upstream-timeout",
        type=float,
        default=120.0,
        help="per-measurement limit for upstream; beyond it the figure is n/a",
    )
    p.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the lab's workdir (logs)")
    p.add_argument(
        "--commit",
        metavar="REV",
        help="measure this commit (git archive snapshot) instead of the working tree",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeat, args.changes = [100], 1, 10
        if args.idle_seconds == 60.0:
            args.idle_seconds = 20.0
    if args.vsctl_n is None:
        args.vsctl_n = [max(args.n)]
    if args.vsctl_repeat is None:
        args.vsctl_repeat = args.repeat
    return args


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv without these options and their values."""
    out, skipping = [], False
    for arg in argv:
        if arg.split("=", 1)[0] in options:
            skipping = "=" not in arg
            continue
        if skipping and not arg.startswith("-"):
            continue
        skipping = False
        out.append(arg)
    return out


def compare(revisions: list[str], argv: list[str]) -> int:
    """The whole benchmark once per revision, one after the other (never concurrently), each
    table printed as it is, then the key medians side by side."""
    base = _without(argv, ("--compare", "--commit", "--json"))
    json_out = next(
        (argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--json"),
        next((a.split("=", 1)[1] for a in argv if a.startswith("--json=")), None),
    )
    runs: list[tuple[str, dict[str, Any]]] = []
    for rev in revisions:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            child = [sys.executable, os.path.abspath(__file__), *base, "--json", tmp.name]
            if rev != "tree":
                child += ["--commit", rev]
            log(f"--compare: measuring {rev}")
            done = subprocess.run(child, stdout=subprocess.PIPE, text=True)
            print(f"=== {rev} ===\n{done.stdout}", flush=True)
            if done.returncode != 0:
                log(f"--compare: the run of {rev} failed (exit code {done.returncode})")
                return done.returncode
            with open(tmp.name) as f:
                runs.append((rev, json.load(f)))
    print(compare_table(runs))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({rev: data for rev, data in runs}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, XFRM)", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if args.compare:
        return compare(args.compare, argv if argv is not None else sys.argv[1:])
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    unavailable = upstream_unavailable()
    if unavailable:
        args.upstream = False
        log(unavailable)
    upstream_why = unavailable or (
        "--no-upstream" if not args.upstream else "upstream failed: see the n/a notes"
    )
    results: dict[int, dict[str, Any]] = {}
    lab = Lab(3, daemon=False, keep=args.keep, python=SNAPSHOT.python if SNAPSHOT else None)
    bench: Bench | None = None
    try:
        log("starting the lab (h1 ours, h2 floor, h3 upstream)")
        lab.start()
        for h in lab.hosts:
            h.run(["ip", "route", "add", workload.PEER_ROUTE, "dev", "eth0"])
        header = machine_header(lab, args)
        lab[3].stop_charon()  # upstream brings its own charon
        bench = Bench(lab, args)
        for n in args.n:
            results[n] = bench.run_n(n)
        if unavailable:
            header.append(f"upstream: n/a: {unavailable}")
        table = render(results, header, args.repeat, args.idle_seconds, upstream_why)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if bench is not None:
            bench.close()
        lab.stop()
        log("lab stopped")
    with open("/proc/loadavg") as f:
        table += f"\nload average at the end: {' '.join(f.read().split()[:3])}"
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
