"""Guest-side lab helpers: nodes (network + private mount namespaces, each with its own
ovsdb-server, ovs-vswitchd on the kernel datapath, charon and an IPsec monitor), an underlay
bridge, captures and their analysis, XFRM state parsing.

Runs inside the e2e guest (PID 1 is stage2.sh), as root, with the host's /usr and /etc. Stdlib only.
Everything a node writes lives under /tmp/e2e/<scenario>/<node>/ and is copied to the run
directory (/share) when the scenario ends.

Over 400 lines because the guest has one module of helpers (it runs with the host's userland and
this checkout only, beside scenarios.py); its parts are the node, the underlay, captures and XFRM
state parsing, in that order.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

T0 = time.monotonic()
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
CHARON_SYSTEMD = "/usr/sbin/charon-systemd"
UPSTREAM_MONITOR = "/usr/share/openvswitch/scripts/ovs-monitor-ipsec"
WORK = "/tmp/e2e"
# Libreswan unpacked by scripts/setup.sh (it conflicts with strongSwan as a package); run.py
# exports it at this path when it exists, scenarios.py --libreswan may name another.
LIBRESWAN_ROOT = "/opt/ovs-ipsec-test/libreswan"
PLUTO_RUN = "/run/pluto"  # in the node's own /run: pluto's --rundir, its pluto.ctl
UNDERLAY_BRIDGE = "ul0"
UNDERLAY4 = "10.1.1.{}"
UNDERLAY6 = "fd01::{}"
# charon-systemd: explicit plugin list (the compiled-in default would load kernel-libipsec, which
# replaces the kernel data plane), kdf for IKEv2 key derivation in 5.9.8.
CHARON_PLUGINS = (
    "random nonce aes sha1 sha2 hmac kdf gcm gmp curve25519 pem pkcs1 pkcs8 x509 pubkey "
    "revocation constraints openssl kernel-netlink socket-default vici"
)
# strongSwan 6.0 (Debian 13) ships no aes, sha1, sha2, hmac, kdf, gmp or curve25519 plugin: the
# openssl plugin provides ciphers, hashes, PRFs, the IKEv2 KDF and the DH groups (x25519, MODP),
# aesni the AES-NI ciphers. Naming the absent ones would only log "failed to load" for each.
CHARON_PLUGINS_6 = (
    "random nonce drbg aesni openssl gcm pem pkcs1 pkcs8 x509 pubkey revocation constraints "
    "kernel-netlink socket-default vici"
)
# The stroke/starter flavour (upstream's monitor) loads modularly; only these plugins.
STROKE_PLUGINS = (
    "random nonce aes sha1 sha2 hmac kdf gcm gmp curve25519 pem pkcs1 pkcs8 x509 pubkey "
    "revocation constraints openssl kernel-netlink socket-default stroke vici"
)


class Fail(Exception):
    """A check failed; the message says what was expected and what was seen."""


class ScenarioTimeout(Exception):
    pass


_print_lock = threading.Lock()


def log(msg: str) -> None:
    with _print_lock:
        sys.stdout.write(f"E2E [{time.monotonic() - T0:7.2f}s] {msg}\n")
        sys.stdout.flush()


def raw(msg: str) -> None:
    with _print_lock:
        sys.stdout.write(msg if msg.endswith("\n") else msg + "\n")
        sys.stdout.flush()


def run(
    argv: list[str] | str,
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    if isinstance(argv, str):
        argv = ["sh", "-c", argv]
    try:
        p = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise Fail(f"timed out after {timeout:g}s: {shlex.join(argv)}") from None
    if check and p.returncode != 0:
        last = (p.stderr.strip() or p.stdout.strip() or "-").splitlines()[-1]
        raise Fail(
            f"{last} (exit {p.returncode} of {shlex.join(argv)[-200:]})\n"
            f"{p.stdout[-1500:]}{p.stderr[-1500:]}"
        )
    return p


def wait_for(
    pred: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@functools.cache
def strongswan_version() -> tuple[int, int]:
    """(major, minor) of the guest's strongSwan, from `swanctl --version` (its first line is
    "strongSwan 6.0.1 swanctl" even though it then fails to reach a daemon)."""
    p = run(["swanctl", "--version"], check=False)
    m = re.search(r"strongSwan (\d+)\.(\d+)", p.stdout + p.stderr)
    if not m:
        raise Fail(f"cannot tell the strongSwan version from swanctl --version: {p.stdout[:200]}")
    return int(m.group(1)), int(m.group(2))


def charon_plugins() -> str:
    return CHARON_PLUGINS_6 if strongswan_version() >= (6, 0) else CHARON_PLUGINS


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def tail(path: str, n: int = 25) -> str:
    return "\n".join(read(path).splitlines()[-n:])


# ---------------------------------------------------------------------------------------------
# kernel and underlay


MODULES = [
    "openvswitch",
    "esp4",
    "esp6",
    "xfrm_user",
    "ip_gre",
    "ip6_gre",
    "gre",
    "geneve",
    "vxlan",
    "veth",
    "bridge",
    "aesni_intel",
    "gcm",
    "authenc",
    "seqiv",
    "echainiv",
    "af_packet",
]


def kernel_setup() -> None:
    for m in MODULES:
        p = run(["modprobe", m], check=False)
        if p.returncode != 0 and m not in ("af_packet",):
            raise Fail(f"modprobe {m}: {p.stderr.strip()}")
    # Raw XFRM check in a scratch namespace: the host kernel fails exactly here.
    run(["ip", "netns", "add", "xfrmcheck"])
    try:
        run(
            [
                "ip",
                "-n",
                "xfrmcheck",
                "xfrm",
                "state",
                "add",
                "src",
                "10.9.0.1",
                "dst",
                "10.9.0.2",
                "proto",
                "esp",
                "spi",
                "0x100",
                "mode",
                "transport",
                "aead",
                "rfc4106(gcm(aes))",
                "0x" + "11" * 36,
                "128",
            ]
        )
    finally:
        run(["ip", "netns", "del", "xfrmcheck"], check=False)
    run(["ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])
    run(["ip", "link", "set", UNDERLAY_BRIDGE, "up"])


def warm_up(python: str, source: str) -> threading.Thread:
    """Read what the nodes will run once, in the background: the first start of each program
    otherwise pays for cold 9p reads (the first daemon start took 15 s instead of 5 s)."""

    def work() -> None:
        for prog in (
            "/usr/sbin/ovs-vswitchd",
            "/usr/sbin/ovsdb-server",
            CHARON_SYSTEMD,
            "/usr/lib/ipsec/libcharon.so.0",
            "/usr/lib/ipsec/libstrongswan.so.0",
        ):
            with contextlib.suppress(OSError), open(prog, "rb") as f:
                while f.read(1 << 20):
                    pass
        code = (
            f"import sys; sys.path.insert(0, {source!r}); import ovs_ipsec.cli, "
            "ovs_ipsec.daemon.loop, ovs_ipsec.tools.pki_tool"
        )
        subprocess.run(
            [python, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def wait_ovs_safe_uptime() -> None:
    """OVS 3.1.0 reads the CPU count as 0 during the first 10 s of uptime (fixed in 3.1.1); a
    datapath opened then gets no upcall handlers and loses every upcall."""
    left = 11.0 - uptime()
    if left > 0:
        log(f"waiting {left:.1f}s: OVS 3.1.0 must not start before uptime 11s")
        time.sleep(left)


# ---------------------------------------------------------------------------------------------
# nodes


@dataclass
class Node:
    name: str
    index: int  # underlay host number
    scenario_dir: str
    monitor: str = "ours"  # "ours" (over charon) | "pluto" (ours over pluto) | "upstream" | "none"
    python: str = sys.executable
    repo: str = ""
    holder: subprocess.Popen | None = None
    charon: subprocess.Popen | None = None
    pluto: subprocess.Popen | None = None
    extra_monitor_args: tuple[str, ...] = ()
    dir: str = field(init=False)

    def __post_init__(self) -> None:
        self.dir = os.path.join(self.scenario_dir, self.name)
        os.makedirs(self.dir, exist_ok=True)

    # -- addressing
    @property
    def ip4(self) -> str:
        return UNDERLAY4.format(self.index)

    @property
    def ip6(self) -> str:
        return UNDERLAY6.format(self.index)

    def ip(self, family: int) -> str:
        return self.ip4 if family == 4 else self.ip6

    @property
    def ul_port(self) -> str:
        return f"ul-{self.name}"[:15]

    # -- running things in the node
    def prefix(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n"]

    def x(self, argv: list[str] | str, **kw) -> subprocess.CompletedProcess[str]:
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        return run(self.prefix() + argv, **kw)

    def spawn(
        self, argv: list[str], logname: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        with open(os.path.join(self.dir, logname), "ab") as out:
            return subprocess.Popen(
                self.prefix() + argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )

    def path(self, p: str) -> str:
        """A path inside the node's mount namespace, as seen from the root namespace."""
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/root{p}"

    def vsctl(self, *args: str, timeout: float = 30) -> str:
        return self.x(["ovs-vsctl", "--timeout=25", *args], timeout=timeout).stdout

    # -- lifecycle
    def start_namespaces(self) -> None:
        run(["ip", "netns", "add", self.name])
        self.holder = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.name}",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "1000000",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        mine = os.readlink("/proc/self/ns/mnt")

        def ready() -> bool:
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != mine
            return False

        wait_for(ready, 10, f"{self.name}: mount namespace")
        self.x(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/openvswitch /run/lock &&"
            " mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/openvswitch &&"
            " mount -t tmpfs tmpfs /var/log && mkdir -p /var/log/openvswitch"
        )
        # underlay: eth0 in the node, ul-<name> on the underlay bridge
        run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                self.name,
                "type",
                "veth",
                "peer",
                "name",
                self.ul_port,
            ]
        )
        run(["ip", "link", "set", self.ul_port, "master", UNDERLAY_BRIDGE, "up"])
        self.x(
            f"ip link set lo up && ip addr add {self.ip4}/24 dev eth0 &&"
            f" ip addr add {self.ip6}/64 dev eth0 nodad && ip link set eth0 up"
        )

    def start_ovs(self) -> None:
        self.x(["ovsdb-tool", "create", "/var/lib/openvswitch/conf.db", SCHEMA])
        self.x(
            [
                "ovsdb-server",
                "/var/lib/openvswitch/conf.db",
                "--remote=punix:/run/openvswitch/db.sock",
                "--pidfile",
                "--detach",
                f"--log-file={self.dir}/ovsdb-server.log",
            ]
        )
        self.x(["ovs-vsctl", "--no-wait", "init"])
        self.x(
            ["ovs-vswitchd", "--pidfile", "--detach", f"--log-file={self.dir}/ovs-vswitchd.log"],
            timeout=60,
        )
        vlog = os.path.join(self.dir, "ovs-vswitchd.log")
        if re.search(r"Overriding n-handler-threads to 0", read(vlog)):
            raise Fail(f"{self.name}: ovs-vswitchd started with 0 upcall handlers (OVS 3.1.0 bug)")

    def charon_conf(self, path: str, flavour: str) -> None:
        logcfg = (
            f"  filelog {{\n    e2e {{\n      path = {self.dir}/charon.log\n"
            "      time_format = %T\n"
            "      default = 1\n      ike = 2\n      cfg = 2\n      knl = 2\n"
            "      flush_line = yes\n    }\n  }\n"
        )
        common = "  install_routes = no\n  retransmit_tries = 2\n  retransmit_timeout = 1.0\n"
        if flavour == "vici":
            text = (
                "charon {\n  load_modular = no\n"
                f"  load = {charon_plugins()}\n{common}{logcfg}}}\n"
                "charon-systemd {\n  journal {\n    default = -1\n  }\n}\n"
            )
        else:  # stroke: the starter's charon, upstream's ovs.conf is included after this
            plugins = "".join(
                f"    {p} {{\n      load = yes\n    }}\n" for p in STROKE_PLUGINS.split()
            )
            text = (
                "charon {\n  load_modular = yes\n"
                f"  plugins {{\n{plugins}  }}\n{common}{logcfg}"
                "  syslog {\n    daemon {\n      default = -1\n    }\n  }\n}\n"
                "include /etc/strongswan.d/*.conf\n"
            )
        with open(path, "w") as f:
            f.write(text)

    def start_charon(self) -> None:
        conf = os.path.join(self.dir, "strongswan.conf")
        self.charon_conf(conf, "vici")
        env = dict(os.environ, STRONGSWAN_CONF=conf)
        self.charon = self.spawn([CHARON_SYSTEMD], "charon.stdout", env=env)
        wait_for(
            lambda: os.path.exists(self.path("/run/charon.vici")),
            20,
            f"{self.name}: charon VICI socket",
        )

    def stop_charon(self) -> None:
        if self.charon is None:
            return
        self.charon.terminate()
        try:
            self.charon.wait(10)
        except subprocess.TimeoutExpired:
            self.charon.kill()
            self.charon.wait(5)
        self.charon = None

    # -- Libreswan's pluto (docs/libreswan-notes.md section 1), for the "pluto" flavour
    @property
    def pluto_dir(self) -> str:
        return os.path.join(self.dir, "pluto")

    def start_pluto(self) -> None:
        """pluto with its own config, NSS database and secrets file (which includes the one our
        daemon owns), its control socket in the node's /run. pluto execs the hard-coded
        /usr/libexec/ipsec/addconn at start: the unpacked Libreswan is bind-mounted there in the
        node's own mount namespace (the directory is made in the guest's writable /usr)."""
        d = self.pluto_dir
        nss = os.path.join(d, "nss")
        os.makedirs(nss, exist_ok=True)
        run(["certutil", "-N", "-d", f"sql:{nss}", "--empty-password"])
        with open(os.path.join(d, "ipsec.conf"), "w") as f:
            f.write(
                f"config setup\n\tlogfile={d}/pluto.log\n\tdumpdir={PLUTO_RUN}\n\tplutodebug=none\n"
            )
        fd = os.open(os.path.join(d, "ipsec.secrets"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"include {d}/ovs.secrets\n")
        root = LIBRESWAN_ROOT
        # Default routes as upstream's system tests give their nodes: a tunnel without local_ip
        # is `left=%defaultroute` for pluto, which without one refuses to route the conn ("we
        # cannot identify ourselves with either end of this connection"); charon's %any needs
        # none. The gateways need not exist.
        self.x(
            f"mkdir -p /usr/libexec/ipsec {PLUTO_RUN} && rm -f {PLUTO_RUN}/pluto.ctl"
            f" {PLUTO_RUN}/pluto.pid && mount --bind {root}/usr/libexec/ipsec /usr/libexec/ipsec"
            f" && ip route replace default via {UNDERLAY4.format(254)} dev eth0"
            f" && ip -6 route replace default via {UNDERLAY6.format('fe')} dev eth0"
        )
        env = dict(os.environ, PATH=f"{root}/usr/sbin:{os.environ.get('PATH', '/usr/bin')}")
        argv = [
            "/usr/libexec/ipsec/pluto", "--nofork", "--config", f"{d}/ipsec.conf",
            "--rundir", PLUTO_RUN, "--nssdir", nss, "--secretsfile", f"{d}/ipsec.secrets",
            "--ipsecdir", d, "--no-dnssec",
        ]  # fmt: skip
        self.pluto = self.spawn(argv, "pluto.stdout", env=env)
        wait_for(
            lambda: (
                os.path.exists(self.path(f"{PLUTO_RUN}/pluto.ctl")) or self.pluto.poll() is not None
            ),
            30,
            f"{self.name}: pluto's control socket",
        )
        if self.pluto.poll() is not None:
            raise Fail(
                f"{self.name}: pluto exited {self.pluto.returncode}: "
                f"{tail(os.path.join(d, 'pluto.log'), 5)}"
                f" {tail(os.path.join(self.dir, 'pluto.stdout'), 5)}"
            )

    def whack(self, *args: str) -> str:
        return self.x(
            ["/usr/libexec/ipsec/whack", "--ctlsocket", f"{PLUTO_RUN}/pluto.ctl", *args]
        ).stdout

    def pluto_totals(self) -> tuple[int, int]:
        """(loaded, active) from `whack --status`: upstream's test counts ("Total IPsec
        connections: loaded 2, active 2")."""
        m = re.search(
            r"Total IPsec connections: loaded (\d+), active (\d+)", self.whack("--status")
        )
        if not m:
            raise Fail(f"{self.name}: no 'Total IPsec connections' in whack --status")
        return int(m.group(1)), int(m.group(2))

    def pluto_monitor_args(self) -> list[str]:
        """Upstream's Libreswan flags as its system tests give them (their own paths,
        --no-restart-ike-daemon: pluto is started here)."""
        d = self.pluto_dir
        return [
            "--ike-daemon=libreswan", "--no-restart-ike-daemon", f"--ipsec-conf={d}/ovs.conf",
            f"--ipsec-secrets={d}/ovs.secrets", f"--ipsec-d={d}/nss",
            f"--ipsec-ctl={PLUTO_RUN}/pluto.ctl",
        ]  # fmt: skip

    def stop_ike(self) -> None:
        """Stop whichever IKE daemon runs (charon or pluto)."""
        self.stop_charon()
        if self.pluto is not None:
            self.pluto.terminate()
            try:
                self.pluto.wait(10)
            except subprocess.TimeoutExpired:
                self.pluto.kill()
                self.pluto.wait(5)
            self.pluto = None

    def switch(self, monitor: str) -> None:
        """Our daemon stopped (cleanup: its conns and policies go), the IKE daemon replaced
        (charon by pluto or back), our daemon started again on the new one."""
        t = time.monotonic()
        pid = self.monitor_pid()
        self.appctl_monitor("exit")
        if pid is not None:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, f"{self.name}: daemon exit")
        self.stop_ike()
        self.monitor = monitor
        (self.start_pluto if monitor == "pluto" else self.start_charon)()
        t_ike = time.monotonic() - t
        self.start_monitor()
        log(
            f"{self.name}: now {monitor} (IKE daemon {t_ike:.1f}s, all {time.monotonic() - t:.1f}s)"
        )

    # -- our daemon
    @property
    def monitor_pidfile(self) -> str:
        return "/run/openvswitch/ovs-monitor-ipsec.pid"

    @property
    def monitor_ctl(self) -> str:
        return "/run/openvswitch/ovs-monitor-ipsec.ctl"

    def start_monitor(self) -> None:
        argv = [
            self.python,
            os.path.join(self.repo, "bin", "ovs-monitor-ipsec"),
            "unix:/run/openvswitch/db.sock",
            *(
                self.pluto_monitor_args()
                if self.monitor == "pluto"
                else ["--vici=unix:///run/charon.vici"]
            ),
            *self.extra_monitor_args,
            f"--pidfile={self.monitor_pidfile}",
            f"--log-file={self.dir}/ovs-monitor-ipsec.log",
            f"--unixctl={self.monitor_ctl}",
            "--detach",
            # Shorter than the default 30 s, so that a scenario's cleanup check (which waits 30 s
            # for every policy to go) passes, yet longer than scenario 5's 3 s port re-add.
            "--protection-linger=10",
        ]
        out = os.path.join(self.dir, "ovs-monitor-ipsec.stdout")
        with open(out, "ab") as f:
            p = subprocess.run(
                self.prefix() + argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=90
            )
        if p.returncode != 0:
            raise Fail(
                f"{self.name}: ovs-monitor-ipsec --detach exited {p.returncode}:\n"
                f"{tail(out)}\n{tail(os.path.join(self.dir, 'ovs-monitor-ipsec.log'))}"
            )

    def monitor_pid(self) -> int | None:
        text = read(self.path(self.monitor_pidfile)).strip()
        return int(text) if text.isdigit() else None

    def kill_monitor(self, sig: int = signal.SIGKILL) -> None:
        pid = self.monitor_pid()
        if pid is None:
            raise Fail(f"{self.name}: no pid in {self.monitor_pidfile}")
        os.kill(pid, sig)
        wait_for(
            lambda: (
                not os.path.exists(f"/proc/{pid}")
                or read(f"/proc/{pid}/stat").split(")")[-1].split()[0] in "ZX"
            ),
            10,
            f"{self.name}: monitor pid {pid} to exit",
        )

    def appctl_monitor(self, *args: str) -> str:
        return self.x(["ovs-appctl", "-t", self.monitor_ctl, *args], timeout=20).stdout

    # -- upstream's monitor (stroke + starter), test-machine.md section 12
    def start_upstream_monitor(self) -> None:
        conf = os.path.join(self.dir, "strongswan.conf")
        self.charon_conf(conf, "stroke")
        for f in ("ipsec.conf", "ipsec.secrets", "ovs.conf"):
            open(os.path.join(self.dir, f), "a").close()
        # bind-mount targets must exist; the guest's /etc is a writable overlay
        open("/etc/strongswan.d/ovs.conf", "a").close()
        self.x(
            f"mount --bind {conf} /etc/strongswan.conf &&"
            f" mount --bind {self.dir}/ipsec.conf /etc/ipsec.conf &&"
            f" mount --bind {self.dir}/ipsec.secrets /etc/ipsec.secrets &&"
            f" mount --bind {self.dir}/ovs.conf /etc/strongswan.d/ovs.conf"
        )
        self.x(
            [
                "/usr/bin/python3",
                UPSTREAM_MONITOR,
                "unix:/run/openvswitch/db.sock",
                "--ike-daemon=strongswan",
                f"--pidfile={self.monitor_pidfile}",
                f"--log-file={self.dir}/ovs-monitor-ipsec.log",
                "--detach",
            ],
            timeout=60,
        )
        wait_for(
            lambda: os.path.exists(self.path("/run/charon.ctl")),
            40,
            f"{self.name}: starter's charon (stroke socket)",
        )

    def start(self) -> None:
        steps = [("ovs", self.start_ovs)]
        if self.monitor == "ours":
            steps += [("charon", self.start_charon), ("daemon", self.start_monitor)]
        elif self.monitor == "pluto":
            steps += [("pluto", self.start_pluto), ("daemon", self.start_monitor)]
        elif self.monitor == "upstream":
            steps += [("upstream monitor+starter+charon", self.start_upstream_monitor)]
        took = []
        for name, fn in steps:
            t = time.monotonic()
            fn()
            took.append(f"{name} {time.monotonic() - t:.1f}s")
        log(f"{self.name} started: {', '.join(took)}")

    def stop(self) -> None:
        """Kill everything in the node's network namespace, then the namespaces."""
        if self.holder is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [
                int(p)
                for p in run(["ip", "netns", "pids", self.name], check=False).stdout.split()
                if p.isdigit() and int(p) != self.holder.pid
            ]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (5 if sig == signal.SIGTERM else 2)
            while pids and time.monotonic() < deadline:
                pids = [
                    p
                    for p in pids
                    if os.path.exists(f"/proc/{p}")
                    and read(f"/proc/{p}/stat").split(")")[-1].split()[:1] != ["Z"]
                ]
                time.sleep(0.1)
        for p in (self.charon, self.pluto):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.wait(1)
        self.holder.kill()
        self.holder.wait()
        self.holder = None
        run(["ip", "netns", "del", self.name], check=False)
        run(["ip", "link", "del", self.ul_port], check=False)

    # -- inspection
    def xfrm_states(self) -> list[XfrmState]:
        return parse_xfrm_states(self.x(["ip", "xfrm", "state"]).stdout)

    def xfrm_policies(self) -> str:
        return self.x(["ip", "xfrm", "policy"]).stdout

    def dump(self) -> None:
        """Diagnostics for a failed check, into the node's directory (copied to the run dir)."""
        cmds = {
            "xfrm-state.txt": "ip xfrm state | sed -E 's/0x[0-9a-f]{16,}/<key>/'",
            "xfrm-policy.txt": "ip -s xfrm policy",
            "xfrm-stat.txt": "cat /proc/net/xfrm_stat",
            "swanctl.txt": "swanctl --list-sas; swanctl --list-conns; swanctl --list-pols",
            "ovs.txt": "ovs-vsctl show; ovs-appctl dpctl/show; ovs-appctl dpctl/dump-flows",
            "ip.txt": "ip -d link; ip addr",
        }
        if self.pluto is not None:
            cmds["pluto.txt"] = (
                f"for c in --status --showstates --trafficstatus; do /usr/libexec/ipsec/whack"
                f" --ctlsocket {PLUTO_RUN}/pluto.ctl $c; done"
            )
        for name, cmd in cmds.items():
            p = self.x(cmd + " 2>&1", check=False, timeout=20)
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(p.stdout)


def start_nodes(nodes: Iterable[Node]) -> None:
    """Namespaces one after the other (cheap), daemons in parallel (the slow part under TCG)."""
    nodes = list(nodes)
    for n in nodes:
        n.start_namespaces()
    wait_ovs_safe_uptime()
    parallel([n.start for n in nodes])


def parallel(fns: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------
# tunnels


@dataclass(frozen=True)
class Tunnel:
    """One IPsec tunnel between `a` and `b`: a bridge per side with one tunnel port and an overlay
    address on the bridge's internal interface (one bridge per tunnel: no L2 loops)."""

    tag: str  # short, unique: names the bridge and port
    type: str  # gre | ip6gre | geneve | vxlan (stt: no kernel has the device)
    family: int  # underlay family: 4 | 6
    subnet: int  # overlay 192.0.<subnet>.0/24
    dst_port: int | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def bridge(self) -> str:
        return f"br-{self.tag}"

    @property
    def port(self) -> str:
        return f"tun-{self.tag}"

    def overlay(self, side: int) -> str:
        return f"192.0.{self.subnet}.{side}"

    @property
    def udp_port(self) -> int | None:
        """The UDP destination port (None for GRE, ip6gre and STT, whose port is TCP)."""
        if self.type not in ("geneve", "vxlan"):
            return None
        return self.dst_port or {"geneve": 6081, "vxlan": 4789}[self.type]

    @property
    def protocol(self) -> str:
        """The protocol of its packets as `ip xfrm policy` prints it."""
        return {"gre": "gre", "ip6gre": "gre", "stt": "tcp"}.get(self.type, "udp")

    def iface_args(
        self, local: Node, remote: Node, extra: dict[str, str] | None = None
    ) -> list[str]:
        opts = {"remote_ip": remote.ip(self.family), **dict(self.options), **(extra or {})}
        if self.dst_port:
            opts["dst_port"] = str(self.dst_port)
        return [f"type={self.type}"] + [f"options:{k}={v}" for k, v in opts.items()]

    def add(self, a: Node, b: Node, **extra: str) -> None:
        parallel([lambda: self.add_port(a, b, 1, **extra), lambda: self.add_port(b, a, 2, **extra)])

    def add_port(self, local: Node, remote: Node, side: int, **extra: str) -> None:
        """Bridge, port and overlay address on `local`; `extra` overrides options (psk=...)."""
        local.vsctl(
            "--may-exist",
            "add-br",
            self.bridge,
            "--",
            "add-port",
            self.bridge,
            self.port,
            "--",
            "set",
            "interface",
            self.port,
            *self.iface_args(local, remote, extra),
        )
        local.x(
            f"ip addr replace {self.overlay(side)}/24 dev {self.bridge} &&"
            f" ip link set {self.bridge} up"
        )

    @staticmethod
    def add_many(tunnels: Iterable[Tunnel], local: Node, remote: Node, side: int) -> None:
        """Several tunnels on `local` with one ovs-vsctl transaction and one shell: the daemon
        sees them in one OVSDB update (as add_port, otherwise)."""
        tunnels = list(tunnels)
        args: list[str] = []
        for t in tunnels:
            args += ["--", "--may-exist", "add-br", t.bridge, "--", "add-port", t.bridge, t.port]
            args += ["--", "set", "interface", t.port, *t.iface_args(local, remote)]
        local.vsctl(*args[1:], timeout=60)
        local.x(
            " && ".join(
                f"ip addr replace {t.overlay(side)}/24 dev {t.bridge} && ip link set {t.bridge} up"
                for t in tunnels
            )
        )

    def delete(self, *nodes: Node) -> None:
        parallel([lambda n=n: n.vsctl("--if-exists", "del-br", self.bridge) for n in nodes])

    def selector(self, local: Node, remote: Node) -> str:
        plen = 32 if self.family == 4 else 128
        sel = f"src {local.ip(self.family)}/{plen} dst {remote.ip(self.family)}/{plen} proto "
        return sel + self.protocol

    def wait_policies(self, a: Node, b: Node, timeout: float = 40) -> None:
        """Until charon's per-peer transport policies (trap or installed) exist on both sides:
        the tunnel is loaded. Our block policies always have a /0 side, so they do not match."""
        for local, remote in ((a, b), (b, a)):
            sel = self.selector(local, remote)
            wait_for(
                lambda local=local, sel=sel: sel in local.xfrm_policies(),
                timeout,
                f"{local.name}: charon policy '{sel}'",
            )


# ---------------------------------------------------------------------------------------------
# ping


def ping_until(node: Node, dst: str, timeout: float) -> float:
    """Ping every 0.2 s until the first reply (the first packets trigger IKE); seconds taken.
    ping gives up early on an ICMP error (host unreachable after failed ARP), so loop."""
    t = time.monotonic()
    deadline = t + timeout
    while (left := deadline - time.monotonic()) > 0:
        p = node.x(
            ["ping", "-c1", "-i0.2", f"-w{max(1, round(left))}", dst],
            check=False,
            timeout=left + 15,
        )
        if p.returncode == 0:
            return time.monotonic() - t
    raise Fail(f"{node.name}: no reply from {dst} within {timeout:g}s")


def ping_count(node: Node, dst: str, count: int = 3) -> int:
    p = node.x(["ping", "-c", str(count), "-i", "0.3", "-W", "2", dst], check=False, timeout=30)
    m = re.search(r"(\d+) received", p.stdout)
    got = int(m.group(1)) if m else 0
    if got < count:
        raise Fail(f"{node.name}: ping {dst}: {got}/{count} replies\n{p.stdout[-400:]}")
    return got


class BackgroundPing:
    """`ping -i INTERVAL` running in a node; counts replies as they come."""

    def __init__(self, node: Node, dst: str, interval: float = 0.2) -> None:
        self.node = node
        self.dst = dst
        self.path = os.path.join(node.dir, f"ping-{dst}.log")
        self.proc = node.spawn(
            ["ping", "-n", "-O", "-i", str(interval), "-W", "1", dst], os.path.basename(self.path)
        )

    def replies(self) -> list[int]:
        return [int(m) for m in re.findall(r"bytes from .* icmp_seq=(\d+)", read(self.path))]

    def sent(self) -> int:
        seqs = re.findall(r"icmp_seq=(\d+)", read(self.path))
        return max((int(s) for s in seqs), default=0)

    def wait_replies(self, more: int, timeout: float, what: str) -> float:
        """Until `more` new replies arrive; returns seconds waited."""
        base = len(self.replies())
        t = time.monotonic()
        wait_for(
            lambda: len(self.replies()) >= base + more,
            timeout,
            f"{more} new ping replies {what} ({self.node.name} -> {self.dst})",
        )
        return time.monotonic() - t

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# capture


class Capture:
    """tcpdump on the root-namespace side of a node's underlay veth: everything that node sends
    or receives on the wire."""

    def __init__(self, node: Node, out: str) -> None:
        self.node = node
        self.pcap = out
        self.err = out + ".stderr"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["tcpdump", "-U", "-nn", "-i", node.ul_port, "-w", out, "not arp"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        wait_for(
            lambda: "listening on" in read(self.err) or self.proc.poll() is not None,
            20,
            "tcpdump to listen",
        )
        if self.proc.poll() is not None:
            raise Fail(f"tcpdump exited: {read(self.err)}")

    def window(self, since: float) -> Traffic:
        """What the wire carried from `since` (time.time()) until now; the capture goes on."""
        time.sleep(0.5)  # packets still in flight or being written
        return Traffic([p for p in analyze(self.pcap).packets if p.ts >= since])

    def stop(self) -> Traffic:
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return analyze(self.pcap)


@dataclass
class Packet:
    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0
    spi: str = ""
    summary: str = ""
    ts: float = 0.0


@dataclass
class Traffic:
    packets: list[Packet]

    def esp_spis(self) -> set[str]:
        return {p.spi for p in self.packets if p.proto == 50}

    def esp(self, src: str | None = None, dst: str | None = None) -> int:
        return sum(
            1
            for p in self.packets
            if p.proto == 50 and (src is None or p.src == src) and (dst is None or p.dst == dst)
        )

    def plaintext(self, udp_ports: Iterable[int] = (6081, 4789)) -> list[Packet]:
        """Tunnel packets in clear: GRE, or UDP from or to a tunnel port."""
        ports = set(udp_ports)
        return [
            p
            for p in self.packets
            if p.proto == 47 or (p.proto == 17 and (p.dport in ports or p.sport in ports))
        ]

    def describe(self, udp_ports: Iterable[int] = (6081, 4789)) -> str:
        plain = self.plaintext(udp_ports)
        s = f"{len(self.packets)} packets, ESP {self.esp()}, plaintext tunnel {len(plain)}"
        if plain:
            s += "; first plaintext: " + plain[0].summary
        return s


def analyze(path: str) -> Traffic:
    """A classic pcap (Ethernet) -> packets with addresses, protocol and ports."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return Traffic([])
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != 1:
        raise Fail(f"{path}: link type {linktype}, expected Ethernet")
    off = 24
    packets = []
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        if off + 16 + caplen > len(data):  # still being written
            break
        frame = data[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        p = parse_frame(frame)
        if p is not None:
            p.ts = sec + frac / (1e9 if nanos else 1e6)
            packets.append(p)
    return Traffic(packets)


def parse_frame(frame: bytes) -> Packet | None:
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    pos = 14
    while ethertype == 0x8100 and len(frame) >= pos + 4:
        ethertype = struct.unpack_from("!H", frame, pos + 2)[0]
        pos += 4
    if ethertype == 0x0800 and len(frame) >= pos + 20:
        ihl = (frame[pos] & 0x0F) * 4
        proto = frame[pos + 9]
        src = str(ipaddress.IPv4Address(frame[pos + 12 : pos + 16]))
        dst = str(ipaddress.IPv4Address(frame[pos + 16 : pos + 20]))
        l4 = pos + ihl
    elif ethertype == 0x86DD and len(frame) >= pos + 40:
        proto = frame[pos + 6]
        src = str(ipaddress.IPv6Address(frame[pos + 8 : pos + 24]))
        dst = str(ipaddress.IPv6Address(frame[pos + 24 : pos + 40]))
        l4 = pos + 40
        while proto in (0, 43, 60, 44) and len(frame) >= l4 + 8:  # extension headers
            nxt = frame[l4]
            l4 += 8 if proto == 44 else (frame[l4 + 1] + 1) * 8
            proto = nxt
    else:
        return None
    sport = dport = 0
    spi = ""
    if proto in (6, 17) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
    if proto == 50 and len(frame) >= l4 + 4:
        spi = f"0x{struct.unpack_from('!I', frame, l4)[0]:08x}"
    names = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 58: "ICMPv6"}
    summary = f"{src} > {dst} {names.get(proto, f'proto {proto}')}"
    if proto == 47 and len(frame) >= l4 + 4:
        inner = struct.unpack_from("!H", frame, l4 + 2)[0]
        summary += f" (inner ethertype 0x{inner:04x})"
    if proto in (6, 17):
        summary += f" {sport} > {dport}"
    if spi:
        summary += f" spi {spi}"
    return Packet(src, dst, proto, sport, dport, spi, summary)


# ---------------------------------------------------------------------------------------------
# XFRM states


@dataclass
class XfrmState:
    src: str
    dst: str
    proto: str
    spi: str
    mode: str
    aead: str = ""
    aead_key_bits: int = 0
    icv_bits: int = 0
    sel: str = ""


def parse_xfrm_states(text: str) -> list[XfrmState]:
    states: list[XfrmState] = []
    cur: XfrmState | None = None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if line.startswith("src "):
            cur = XfrmState(src=words[1], dst=words[3], proto="", spi="", mode="")
            states.append(cur)
        elif cur is None:
            continue
        elif words[0] == "proto":
            cur.proto = words[1]
            if "spi" in words:
                cur.spi = words[words.index("spi") + 1]
            if "mode" in words:
                cur.mode = words[words.index("mode") + 1]
        elif words[0] == "aead" and len(words) >= 4:
            cur.aead = words[1]
            cur.aead_key_bits = (len(words[2]) - 2) * 4
            cur.icv_bits = int(words[3])
        elif words[0] == "sel":
            cur.sel = " ".join(words[1:])
    return states


def check_sa(
    node: Node, local: str, remote: str, seen: set[str] | None = None, *, key_bits: int = 256
) -> str:
    """An ESP SA local->remote in transport mode with AES-GCM-16 (rfc4106) of key_bits; with
    `seen`, only SAs whose SPI was seen on the wire count."""
    states = [
        s
        for s in node.xfrm_states()
        if s.src == local
        and s.dst == remote
        and s.proto == "esp"
        and s.spi not in ("", "0x00000000")
    ]
    if seen is not None:
        states = [s for s in states if s.spi in seen]
    if not states:
        raise Fail(
            f"{node.name}: no ESP SA {local} -> {remote}"
            + (
                f" among the SPIs seen on the wire ({', '.join(sorted(seen))})"
                if seen is not None
                else ""
            )
        )
    good = [
        s
        for s in states
        if s.mode == "transport"
        and s.aead == "rfc4106(gcm(aes))"
        and s.aead_key_bits == key_bits + 32
        and s.icv_bits == 128
    ]
    if not good:
        got = ", ".join(
            f"mode={s.mode} aead={s.aead or '-'} keybits={s.aead_key_bits}" for s in states
        )
        raise Fail(
            f"{node.name}: SA {local} -> {remote} is not transport/rfc4106(gcm(aes)) "
            f"aes{key_bits} icv128: {got}"
        )
    s = good[0]
    return f"SA {s.spi} {s.mode} {s.aead} {s.aead_key_bits - 32}-bit icv{s.icv_bits}"


def spis(node: Node) -> set[str]:
    return {
        s.spi for s in node.xfrm_states() if s.proto == "esp" and s.spi not in ("", "0x00000000")
    }
