#!/usr/bin/env python3
"""Profile our daemon with py-spy while it does what the benchmark measures, and print the hot
spots (cumulative and self share of the samples, per function).

    bench/hotspots.py [--n 1000] [--changes 20] [--rate 200] [--out DIR] [--commit REV]

Phases, each recorded separately on one lab host with N tunnels: the bulk add of N tunnels in
one transaction, `--changes` remote_ip changes (one at a time), and one periodic check (forced
with `ovs-appctl refresh`). py-spy samples with --idle, so time spent waiting for charon, for
`ip` or for ovsdb-server counts too: the shares are of wall-clock time while the daemon was
busy with the phase, which is what its latency is made of. Frames that are waits (socket recv,
poll, a child's output) are marked.

py-spy is not a dependency of the project: `.venv/bin/pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import snapshot  # noqa: E402

SNAPSHOT = snapshot.select(sys.argv[1:]) if __name__ == "__main__" else None

import workload  # noqa: E402
from probes import SpdCounter, Vici  # noqa: E402
from run import Db, converge, wait_quiet, wait_until  # noqa: E402

from ovs_ipsec.core import naming  # noqa: E402
from ovs_ipsec.tools.lab import Lab  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")
WAITS = (
    "recv",
    "recv_into",
    "poll",
    "select",
    "block",
    "_communicate",
    "read",
    "wait",
    "_wait",
    "communicate",
    "_try_wait",
    "waitpid",
    "readinto",
    "sleep",
    "connect",
)


def pyspy() -> str:
    for candidate in (
        os.path.join(os.path.dirname(sys.executable), "py-spy"),
        shutil.which("py-spy"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("py-spy not found: .venv/bin/pip install py-spy")


class Recording:
    def __init__(self, pid: int, path: str, rate: int) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                pyspy(),
                "record",
                "--idle",
                "--nonblocking",
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                path,
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # py-spy needs a moment to attach

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("/ovs_ipsec/", "/site-packages/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/ovs_ipsec/":
                path = "ovs_ipsec/" + path
            break
    return f"{m['func']} ({path})"


def summarise(path: str, top: int) -> str:
    """Cumulative and self shares per function from py-spy's raw (collapsed) output, counting
    only samples taken while the daemon was not sitting in its main loop's poll."""
    stacks: list[tuple[list[str], int]] = []
    with open(path) as f:
        text = f.read()
    for line in text.splitlines():
        if not line:
            continue
        stack_text, _, count = line.rpartition(" ")
        frames = [short(f) for f in stack_text.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        stacks.append((frames, int(count)))
    busy = [(f, c) for f, c in stacks if not _in_main_poll(f)]
    total = sum(c for _, c in busy)
    if not total:
        return "  (no samples)"
    cumulative: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, count in busy:
        for name in set(frames):
            cumulative[name] += count
        own[frames[-1]] += count
    lines = [f"  {total} busy samples; cumulative% self%  function"]
    for name, count in cumulative.most_common(top):
        wait = "  [wait]" if name.split(" ")[0].rpartition(".")[2] in WAITS else ""
        lines.append(f"  {100 * count / total:6.1f} {100 * own[name] / total:6.1f}  {name}{wait}")
    return "\n".join(lines)


def _in_main_poll(frames: list[str]) -> bool:
    """Idle in the daemon's main loop: Poller.block() called straight from run_loop()."""
    names = [f.split(" ")[0] for f in frames]
    return any(
        a == "run_loop" and b == "Poller.block" for a, b in zip(names, names[1:], strict=False)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default="/tmp/ovs-ipsec-profile", help="where the raw files go")
    p.add_argument("--commit", metavar="REV", help="profile this commit (snapshot)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    n = args.n
    recording = None
    with Lab(1, daemon=False, python=SNAPSHOT.python if SNAPSHOT else None) as lab:
        h = lab[1]
        h.run(["ip", "route", "add", workload.PEER_ROUTE, "dev", "eth0"])
        db = Db(h)
        spd = SpdCounter(h.ns)
        vici = Vici(h.vici_path)
        try:
            h.start_daemon()
            wait_quiet(h.daemon_pid, quiet=0.3)
            pid = h.daemon_pid
            assert pid is not None
            results = []

            bulk = os.path.join(args.out, "bulk.txt")
            recording = Recording(pid, bulk, args.rate)
            sent = db.add(workload.tunnels(n))
            seconds = converge(spd, h.ns, n, sent.mono, 300, vici)
            wait_quiet(pid, quiet=0.2)
            recording.stop()
            recording = None
            results.append((f"bulk add of {n} tunnels ({seconds:.2f} s)", bulk))

            changes = os.path.join(args.out, "changes.txt")
            recording = Recording(pid, changes, args.rate)
            latencies = []
            for i in range(args.changes):
                k = (i * n) // args.changes
                new = workload.changed_peer(i)
                conn = naming.conn_name(new)
                sent = db.change(workload.name(k), {"remote_ip": new, "psk": workload.psk(k)})
                seen = wait_until(lambda c=conn: vici.has_conn(c), 10, conn)
                latencies.append((seen - sent.mono) * 1000)
                wait_quiet(pid)
            recording.stop()
            recording = None
            latencies.sort()
            results.append(
                (
                    f"{args.changes} remote_ip changes at N={n} (median "
                    f"{latencies[len(latencies) // 2]:.0f} ms)",
                    changes,
                )
            )

            check = os.path.join(args.out, "check.txt")
            recording = Recording(pid, check, args.rate)
            h.appctl("refresh")
            time.sleep(0.2)
            wait_quiet(pid, quiet=0.3)
            recording.stop()
            recording = None
            results.append(("one periodic check (ovs-appctl refresh)", check))
        finally:
            if recording is not None:
                recording.stop()
            vici.close()
            spd.close()
            db.close()
    for title, path in results:
        print(f"\n== {title}; raw stacks in {path}")
        print(summarise(path, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
