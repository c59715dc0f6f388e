#!/usr/bin/env python3
"""Full-kernel e2e tier: boot a stock Debian kernel under qemu (TCG) once and run the scenarios of
e2e/guest/scenarios.py inside it, with the host's userland (/usr, /etc over 9p) and this checkout.

    e2e/run.py [-s 0,1,3] [--keep] [-v] [--run-dir DIR] [--list] [--userland trixie|DIR]

Prints a results table and exits 0 only if every requested scenario ran and passed. The run
directory (default .e2e-cache/runs/<time>/) holds console.log (the guest's serial console),
results.jsonl, and per scenario the node logs, captures (*.pcap) and diagnostics; it is removed
after a fully passing run unless --keep is given, and kept otherwise.

Guards: per-scenario budgets inside the guest, a guest-wide `timeout` (stage2.sh), a host-side
timeout that kills qemu, and kernel panic detection (qemu runs with -no-reboot and panic=-1).

With --userland (E2E_USERLAND) the guest runs another Debian release's /usr and /etc instead of the
host's: `trixie` builds (or reuses) a cached mmdebstrap root (e2e/userland.py), a directory is
taken as such a root. The daemon then runs under that root's python3 with its `ovs` library and
cryptography, and only the basic scenarios run unless -s says otherwise.

Stdlib only. Needs root-free qemu-system-x86_64 and what e2e/prepare.py needs.

Over 400 lines because it is the whole host side of the tier: building the userland, booting qemu,
and reading the guest's results back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "guest"))

import prepare  # noqa: E402
import scenarios as guest_scenarios  # noqa: E402
import userland  # noqa: E402

QEMU = "qemu-system-x86_64"
BOOT_ALLOWANCE = 90  # seconds for boot + kernel setup, on top of the scenario budgets
HOST_MARGIN = 60  # host timeout = guest timeout + this
# The whole tier takes 5-6 minutes on 2 idle cores and ~12 on a loaded machine; past this the run
# is stuck, whatever the per-scenario budgets (which add up to more) still allow.
MAX_GUEST_TIMEOUT = 1200
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\r\n]*")
# Seen once (04:41 on 2026-12-07, trixie userland, host load ~11 on 2 cores): both vCPUs stuck in
# kworkers, the guest made no progress until the host timeout. Say so instead of just "timeout".
LOCKUP_RE = re.compile(
    r"(watchdog: BUG: soft lockup[^\r\n]*|rcu: INFO: rcu_\w+ self-detected stall[^\r\n]*)"
)
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
# On another release's userland: the negative control and `basics` (a PSK and a CA-signed tunnel:
# IKE + ESP with its strongSwan, OVS and Python). The rest of the tier is about the daemon, not
# the release, and all of it (-s 0,1,2,...) takes about three times as long.
USERLAND_SCENARIOS = ("0", "8")
ROOT_PYTHON = "/usr/bin/python3"  # a userland root's interpreter, at its path in the guest
# Debian's libreswan conflicts with strongSwan, so scripts/setup.sh unpacks it here; exported to
# the guest at the same path when it exists (the host userland's scenario 9 runs its pluto).
LIBRESWAN_ROOT = os.environ.get("OVS_IPSEC_LIBRESWAN_ROOT", "/opt/ovs-ipsec-test/libreswan")


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def default_python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return os.environ.get("E2E_PYTHON") or (venv if os.path.exists(venv) else sys.executable)


def python_mounts(python: str) -> list[str]:
    """Host directories the guest must see (at the same paths) for `python` to run there with its
    packages: the interpreter's installation and, for a venv, the venv."""
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.base_prefix); print(sys.prefix)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    paths = [os.path.realpath(out[0]), os.path.realpath(out[1])]
    return [p for p in paths if not p.startswith(("/usr/", "/etc/")) and p != "/usr"]


def minimal_cover(paths: list[str]) -> list[str]:
    """Drop paths that lie inside another one."""
    result: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in result):
            result.append(p)
    return result


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = os.path.abspath(
            args.run_dir or os.path.join(args.cache, "runs", time.strftime("%Y%m%d-%H%M%S"))
        )
        self.console_path = os.path.join(self.run_dir, "console.log")
        self.marks: dict[str, float] = {}
        self.root: str | None = None  # the userland root, None for the host's /usr and /etc
        self.root_seconds = 0.0  # building (cold) or finding (warm) it

    def resolve_userland(self) -> None:
        """Build or find the root --userland names; None stays the host's userland."""
        name = self.args.userland
        if name in ("", "host"):
            return
        if name in userland.PACKAGES:
            t = time.monotonic()
            self.root = userland.build(name, self.args.userland_cache)
            self.root_seconds = time.monotonic() - t
            self.say(f"userland {name}: {self.root} (ready in {self.root_seconds:.1f}s)")
        else:
            self.root = os.path.realpath(name)
        for d in ("usr", "etc"):
            if not os.path.isdir(os.path.join(self.root, d)):
                raise userland.UserlandError(f"--userland {name}: no {d}/ in {self.root}")
        if not os.path.exists(self.root + ROOT_PYTHON):
            raise userland.UserlandError(f"--userland {name}: no {ROOT_PYTHON} in {self.root}")

    def say(self, msg: str) -> None:
        print(f"e2e: {msg}", file=sys.stderr, flush=True)

    def select_scenarios(self) -> list:
        wanted = [x for x in self.args.scenarios.split(",") if x]
        if not wanted and self.args.userland not in ("", "host"):
            wanted = list(USERLAND_SCENARIOS)
        all_ = guest_scenarios.SCENARIOS
        if not wanted:
            return [s for s in all_ if s.default]
        chosen = [s for s in all_ if s.id in wanted or s.name in wanted]
        unknown = set(wanted) - {s.id for s in chosen} - {s.name for s in chosen}
        if unknown:
            raise SystemExit(
                f"e2e: unknown scenarios {sorted(unknown)}; "
                f"known: {', '.join(s.id + ':' + s.name for s in all_)}"
            )
        return chosen

    def qemu_argv(self, guest: dict[str, str], scenarios: list, guest_timeout: int) -> list[str]:
        if self.root is None:
            python = self.args.python or default_python()
            usr, etc = "/usr", "/etc"
            extra = python_mounts(python)
            if os.path.isdir(LIBRESWAN_ROOT) and os.path.realpath(LIBRESWAN_ROOT) != "/":
                extra.append(os.path.realpath(LIBRESWAN_ROOT))
        else:
            # The root's interpreter with the root's libraries: nothing of the host's Python.
            python = self.args.python or ROOT_PYTHON
            usr, etc = os.path.join(self.root, "usr"), os.path.join(self.root, "etc")
            extra = []
        mounts = minimal_cover([REPO, self.args.source, *extra])
        for p in mounts:
            if not os.path.isabs(p) or re.search(r"[\s,:]", p):
                raise SystemExit(f"e2e: cannot export {p!r} to the guest (spaces, ',' or ':')")
        virtfs = []
        mnt_spec = []
        for i, path in enumerate(mounts):
            virtfs += [
                "-virtfs",
                f"local,path={path},mount_tag=m{i},security_model=none,readonly=on,multidevs=remap",
            ]
            mnt_spec.append(f"m{i}:{path}")
        cmdline = " ".join(
            [
                "console=ttyS0",
                "panic=-1",
                "loglevel=4",
                "quiet",
                f"e2e.stage2={HERE}/guest/stage2.sh",
                f"e2e.python={python}",
                f"e2e.source={self.args.source}",
                f"e2e.timeout={guest_timeout}",
                f"e2e.scenarios={','.join(s.id for s in scenarios)}",
                f"e2e.userland={self.args.userland or 'host'}",
                f"e2e.libreswan={os.path.realpath(LIBRESWAN_ROOT)}",
                f"e2e.mnt={','.join(mnt_spec)}",
                *self.args.kernel_arg,
            ]
        )
        accel = (
            ["-accel", "kvm", "-cpu", "host"]
            if self.args.accel == "kvm"
            else ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]
        )
        return [
            QEMU,
            *accel,
            "-machine",
            "q35",
            "-m",
            str(self.args.mem),
            "-smp",
            str(self.args.smp),
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            guest["vmlinuz"],
            "-initrd",
            guest["initrd"],
            "-append",
            cmdline,
            "-virtfs",
            f"local,path={usr},mount_tag=usr,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={etc},mount_tag=etc,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={guest['modules']},mount_tag=kmods,security_model=none,readonly=on",
            "-virtfs",
            f"local,path={self.run_dir},mount_tag=share,security_model=none",
            *virtfs,
            "-serial",
            "mon:stdio",
        ]

    def boot(self, argv: list[str], host_timeout: float) -> tuple[int | None, bool]:
        """Run qemu, streaming the console to console.log (and progress lines to stderr).
        Returns (qemu exit status or None if killed, timed_out)."""
        t0 = time.monotonic()
        with open(self.console_path, "wb") as log:
            # qemu stays in our process group: whoever kills that group (pytest's entry does on
            # a timeout) takes qemu with it.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                return self._stream(proc, log, t0, host_timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _stream(
        self, proc: subprocess.Popen, log, t0: float, host_timeout: float
    ) -> tuple[int | None, bool]:
        buf = b""
        timed_out = False
        while True:
            left = host_timeout - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                break
            r, _, _ = select.select([proc.stdout], [], [], min(left, 5))
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.console_line(
                    ESCAPES.sub("", line.decode(errors="replace")).rstrip("\r"),
                    time.monotonic() - t0,
                )
        if timed_out:
            self.say(f"HOST TIMEOUT after {host_timeout:.0f}s: killing qemu")
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None, True
        return proc.wait(), False

    def console_line(self, line: str, t: float) -> None:
        for key, marker in (
            ("stage1", "e2e-stage1: done"),
            ("stage2", "e2e-stage2: start"),
            ("setup", '"kind": "setup"'),
        ):
            if marker in line and key not in self.marks:
                self.marks[key] = t
        if self.args.verbose:
            print(line, file=sys.stderr, flush=True)
        elif (
            "E2E " in line or "e2e-stage" in line or "Kernel panic" in line
        ) and "E2E-RESULT" not in line:
            print(
                f"  {t:6.1f}s | {line[line.find('E2E') if 'E2E ' in line else 0 :]}",
                file=sys.stderr,
                flush=True,
            )

    def run(self) -> int:
        scenarios = self.select_scenarios()
        t_start = time.monotonic()
        if shutil.which(QEMU) is None:
            self.say(f"{QEMU} not found (apt-get install qemu-system-x86)")
            return 3
        try:
            guest = prepare.prepare(self.args.cache, self.args.kernel_package)
        except prepare.PrepareError as e:
            self.say(f"cannot build the guest: {e}")
            return 3
        try:
            self.resolve_userland()
        except userland.UserlandError as e:
            self.say(f"cannot make the userland root: {e}")
            return 3
        t_prep = time.monotonic() - t_start
        os.makedirs(self.run_dir, exist_ok=True)
        guest_timeout = int(
            self.args.guest_timeout
            or min(BOOT_ALLOWANCE + sum(s.budget for s in scenarios), MAX_GUEST_TIMEOUT)
        )
        host_timeout = self.args.host_timeout or guest_timeout + HOST_MARGIN
        argv = self.qemu_argv(guest, scenarios, guest_timeout)
        with open(os.path.join(self.run_dir, "qemu-argv.json"), "w") as f:
            json.dump(argv, f, indent=1)
        self.say(
            f"kernel {guest['kver']} ({guest['package']}), prepared in {t_prep:.1f}s; "
            f"userland {self.root or 'host'}; scenarios {','.join(s.id for s in scenarios)}; "
            f"timeouts guest {guest_timeout}s host {host_timeout:.0f}s"
        )
        self.say(f"run directory {self.run_dir}")
        t_boot = time.monotonic()
        qrc, timed_out = self.boot(argv, host_timeout)
        wall = time.monotonic() - t_boot
        maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return self.report(scenarios, qrc, timed_out, wall, maxrss_mb)

    def report(
        self, scenarios: list, qrc: int | None, timed_out: bool, wall: float, maxrss_mb: float
    ) -> int:
        console = ESCAPES.sub("", read(self.console_path))
        rc_text = read(os.path.join(self.run_dir, "rc")).strip()
        guest_rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
        records = []
        for line in read(os.path.join(self.run_dir, "results.jsonl")).splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        problems = []
        panic = PANIC_RE.search(console)
        if panic:
            i = panic.start()
            problems.append("KERNEL PANIC in the guest: " + panic.group(0))
            print(console[max(0, i - 1500) : i + 1500], file=sys.stderr)
        if timed_out:
            problems.append(f"host timeout: qemu killed after {wall:.0f}s")
        lockups = LOCKUP_RE.findall(console)
        if lockups:
            problems.append(
                f"guest kernel stalls ({len(lockups)} lockup/RCU stall reports, first: "
                f"{lockups[0]}): a hung guest kernel, or qemu's vCPU threads starved by host load"
            )
        if guest_rc is None and not timed_out and not panic:
            problems.append(
                f"the guest never wrote its exit code (qemu exit {qrc}); see the end of console.log"
            )
        elif guest_rc == 124:
            problems.append("guest timeout: the scenario runner was killed by stage2's timeout")
        elif guest_rc not in (None, 0):
            problems.append(f"guest runner exit code {guest_rc}")

        cases = [r for r in records if r.get("kind") == "case"]
        per_scn = {r["scenario"]: r for r in records if r.get("kind") == "scenario"}
        setup = next((r for r in records if r.get("kind") == "setup"), None)
        missing = [s.id for s in scenarios if s.id not in per_scn]
        if missing:
            problems.append(f"scenarios without a result: {', '.join(missing)}")

        rows = [("scenario", "case", "result", "seconds", "detail")]
        if setup:
            rows.append(
                (
                    "-",
                    "guest kernel setup",
                    setup["result"],
                    f"{setup['seconds']:.1f}",
                    setup.get("detail", ""),
                )
            )
        for s in scenarios:
            for c in [c for c in cases if c["scenario"] == s.id]:
                rows.append(
                    (
                        f"{s.id} {s.name}",
                        c["case"],
                        c["result"],
                        f"{c['seconds']:.1f}",
                        c.get("detail", ""),
                    )
                )
            r = per_scn.get(s.id)
            rows.append(
                (
                    f"{s.id} {s.name}",
                    "= scenario total",
                    r["result"] if r else "NOT RUN",
                    f"{r['seconds']:.1f}" if r else "-",
                    "",
                )
            )
        widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
        out = []
        for r in rows:
            detail = r[4] if len(r[4]) <= 150 else r[4][:147] + "..."
            out.append("  ".join(str(r[i]).ljust(widths[i]) for i in range(4)) + "  " + detail)
        print("\n".join(out))
        boot = self.marks.get("stage2")
        if self.root is not None:
            print(
                f"\nuserland {self.args.userland}: {os.path.basename(self.root)}, root ready in "
                f"{self.root_seconds:.1f}s",
                end="",
            )
        print(
            f"\nboot to stage 2: {boot:.1f}s" if boot else "\nboot: stage 2 never started", end=""
        )
        print(
            f"; qemu wall {wall:.1f}s; qemu max RSS {maxrss_mb:.0f} MB; "
            f"run directory {self.run_dir}"
        )
        failed = [c for c in cases if c["result"] not in ("PASS", "SKIP", "XFAIL", "XPASS")]
        ok = (
            not problems
            and not failed
            and guest_rc == 0
            and all(per_scn[s.id]["result"] == "PASS" for s in scenarios)
        )
        for p in problems:
            print(f"e2e: {p}")
        n_pass = sum(1 for c in cases if c["result"] == "PASS")
        n_skip = sum(1 for c in cases if c["result"] == "SKIP")
        n_x = sum(1 for c in cases if c["result"] in ("XFAIL", "XPASS"))
        print(
            f"e2e: {n_pass} passed, {len(failed)} failed, {n_skip} skipped, "
            f"{n_x} known daemon bugs (XFAIL/XPASS)"
        )
        if ok and not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            print("e2e: all passed; run directory removed (use --keep to keep it)")
        elif not ok:
            print(f"e2e: FAILED; logs, captures and diagnostics kept in {self.run_dir}")
        label = "" if self.root is None else f"-{os.path.basename(self.args.userland)}"
        summary = os.path.join(os.path.dirname(self.run_dir), f"last-summary{label}.txt")
        with open(summary, "w") as f:
            f.write("\n".join(out) + "\n")
        return 0 if ok else 1


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)  # so that qemu is killed on the way out
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "-s",
        "--scenarios",
        default=os.environ.get("E2E_SCENARIOS", ""),
        help="comma-separated ids or names (default: all)",
    )
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--keep", action="store_true", help="keep the run directory after success")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream the whole console")
    ap.add_argument("--run-dir")
    ap.add_argument("--cache", default=os.environ.get("E2E_CACHE", prepare.DEFAULT_CACHE))
    ap.add_argument("--kernel-package", default=os.environ.get("E2E_KERNEL_PACKAGE"))
    ap.add_argument(
        "--python",
        default=os.environ.get("E2E_PYTHON"),
        help="interpreter for our daemon and the guest runner (default: the venv's, or with "
        f"--userland the root's {ROOT_PYTHON})",
    )
    ap.add_argument(
        "--userland",
        default=os.environ.get("E2E_USERLAND", "host"),
        help="host (default), a release e2e/userland.py builds (trixie), or a root directory",
    )
    ap.add_argument(
        "--userland-cache",
        default=os.environ.get("E2E_USERLAND_CACHE", userland.DEFAULT_CACHE),
        help="where e2e/userland.py keeps its roots",
    )
    ap.add_argument(
        "--source",
        default=os.environ.get("E2E_SOURCE", REPO),
        help="checkout of the daemon to test (default: this one)",
    )
    ap.add_argument("--mem", type=int, default=int(os.environ.get("E2E_MEM", "1024")))
    ap.add_argument("--smp", type=int, default=int(os.environ.get("E2E_SMP", "2")))
    ap.add_argument("--accel", choices=("tcg", "kvm"), default=os.environ.get("E2E_ACCEL", "tcg"))
    ap.add_argument(
        "--kernel-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra kernel command line word (later e2e.* words override earlier)",
    )
    ap.add_argument("--guest-timeout", type=int)
    ap.add_argument("--host-timeout", type=int)
    args = ap.parse_args()
    args.source = os.path.realpath(args.source)
    if not os.path.exists(os.path.join(args.source, "bin", "ovs-monitor-ipsec")):
        ap.error(f"--source {args.source}: no bin/ovs-monitor-ipsec there")
    if args.list:
        for s in guest_scenarios.SCENARIOS:
            extra = "" if s.default else " (only when named, or with --userland)"
            print(f"{s.id:>2}  {s.name:<10} budget {s.budget:>4.0f}s  {s.title}{extra}")
        return 0
    runner = Runner(args)
    try:
        return runner.run()
    except KeyboardInterrupt as e:
        print(
            f"e2e: interrupted ({e or 'SIGINT'}); qemu killed; run directory kept: "
            f"{runner.run_dir}",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
