"""Libreswan's pluto in a lab host: one pluto per namespace, with its own config, secrets file, NSS
database, run directory (control socket) and log, started and stopped by PID like charon.

Where pluto comes from: Debian's libreswan conflicts with strongSwan as a package, so
`scripts/setup.sh test` unpacks it into LIBRESWAN_ROOT (/opt/ovs-ipsec-test/libreswan; the
environment variable OVS_IPSEC_LIBRESWAN_ROOT moves it, "/" means an installed libreswan). Two
paths in it are compiled in, not configurable: pluto runs `/usr/libexec/ipsec/addconn` at start
and its updown is `ipsec _updown` from PATH (on a machine with strongSwan's starter that is
strongSwan's `ipsec`, which fails every route with "unknown interface version"). So pluto runs in a
mount namespace of its own in which read-only overlays put the unpacked `usr/libexec` and
`usr/sbin` over the host's: inside it the machine looks like one with libreswan installed, and
nothing outside changes. whack and addconn need no such thing and run from LIBRESWAN_ROOT directly.

A lab host runs either charon or pluto: both bind UDP 500 and 4500. `Lab(n, libreswan_hosts=...)`
picks which ones run pluto (lab.py); `Pluto(host)` does the rest.

Files of host hN, under `<workdir>/hN/pluto/`:
  ipsec.conf      `config setup` only (logfile, dumpdir); conns go in files of their own and are
                  loaded with `addconn --config FILE NAME`
  ipsec.secrets   pluto's --secretsfile: `include <dir>/ovs.secrets` (the file the daemon owns;
                  a missing include is no error), 0600
  nss/            the NSS database (certutil -N --empty-password), pluto's --nssdir
  run/pluto.ctl   the control socket (pluto's --rundir; whack/addconn --ctlsocket)
  pluto.log       pluto's log

`conn_section()` spells a conn for a test's own file; `load_daemon_conn()` loads into a lab
charon exactly the connection our daemon plans for a tunnel (core/connections.py), so pluto can be
tried against our strongSwan side without a daemon.

About 400 lines: one pluto's whole life in a lab host (start, stop, control socket, secrets, NSS)
and the two helpers that pit it against charon belong together.

May import: lab, connections, credentials, model, cryptography, stdlib.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping

from ovs_ipsec.core import connections
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.model import Tunnel
from ovs_ipsec.tools.lab import (
    Host,
    LabError,
    LabProcess,
    _read,
    _run,
    await_socket,
    terminate,
)

LIBRESWAN_ROOT_ENV = "OVS_IPSEC_LIBRESWAN_ROOT"
DEFAULT_LIBRESWAN_ROOT = "/opt/ovs-ipsec-test/libreswan"
PLUTO_START_TIMEOUT = 10.0
# pluto deletes its IKE SAs (sending notifies) and its policies: 1.6 s measured; 5 s is a hang.
PLUTO_STOP_GRACE = 5.0
# whack and addconn answer in milliseconds; a hung pluto should not hang a test for long.
WHACK_TIMEOUT = 10.0


def libreswan_root() -> str:
    return os.environ.get(LIBRESWAN_ROOT_ENV, DEFAULT_LIBRESWAN_ROOT)


def libreswan_tool(name: str) -> str:
    """Path of one of Libreswan's programs (pluto, whack, addconn, ...)."""
    return os.path.join(libreswan_root(), "usr/libexec/ipsec", name)


def libreswan_missing() -> str | None:
    """Why pluto cannot run here (for a skip), or None if it can."""
    for name in ("pluto", "whack", "addconn"):
        if not os.access(libreswan_tool(name), os.X_OK):
            return f"{libreswan_tool(name)} missing (scripts/setup.sh test unpacks libreswan)"
    for tool in ("certutil", "pk12util"):
        if not any(
            os.access(os.path.join(d, tool), os.X_OK)
            for d in os.environ.get("PATH", "/usr/bin").split(":")
        ):
            return f"{tool} missing (libnss3-tools)"
    return None


def libreswan_version() -> tuple[int, ...]:
    """pluto's version: (4, 10)."""
    out = _run([libreswan_tool("pluto"), "--version"]).stdout.split()
    # "Libreswan 4.10 IKEv2 IKEv1 XFRM ..."
    text = out[1] if len(out) > 1 else ""
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def pluto_config(directory: str) -> str:
    """The `config setup` section of one host's pluto (conns are loaded from files of their own).

    dumpdir: pluto chdir()s there (default /run/pluto, absent here). DNSSEC is off on the command
    line (--no-dnssec): there is no resolver in a namespace."""
    return (
        "# Written by the ovs-ipsec lab. Conns are loaded with addconn --config FILE NAME.\n"
        "config setup\n"
        f"\tlogfile={directory}/pluto.log\n"
        f"\tdumpdir={directory}/run\n"
        "\tplutodebug=none\n"
    )


class Pluto:
    """The pluto of one lab host (the host must not run charon: both bind UDP 500/4500)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = os.path.join(host.dir, "pluto")
        self.conf_path = os.path.join(self.dir, "ipsec.conf")
        self.secrets_path = os.path.join(self.dir, "ipsec.secrets")
        # What ipsec.secrets includes: the daemon's own secrets file (or a test's).
        self.ovs_secrets_path = os.path.join(self.dir, "ovs.secrets")
        self.nss_dir = os.path.join(self.dir, "nss")
        self.run_dir = os.path.join(self.dir, "run")
        self.ctl_path = os.path.join(self.run_dir, "pluto.ctl")
        self.log_path = os.path.join(self.dir, "pluto.log")
        self.stdout_path = os.path.join(self.dir, "pluto.stdout")
        self._proc: LabProcess | None = None

    def __repr__(self) -> str:
        return f"<Pluto {self.host.name} ctl={self.ctl_path}>"

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        """Start pluto and wait until its control socket answers."""
        self.spawn()
        self.await_ready(PLUTO_START_TIMEOUT)

    def spawn(self) -> None:
        """Start pluto without waiting (Lab.start starts all, then waits for all)."""
        if self._proc is not None and self._proc.alive():
            raise LabError(f"{self.host.name}: pluto is already running")
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.nss_dir, exist_ok=True)
        if not os.path.exists(os.path.join(self.nss_dir, "cert9.db")):
            _run(["certutil", "-N", "-d", f"sql:{self.nss_dir}", "--empty-password"])
        with open(self.conf_path, "w") as f:
            f.write(pluto_config(self.dir))
        if not os.path.exists(self.secrets_path):
            self._write_private(self.secrets_path, f"include {self.ovs_secrets_path}\n")
        # A socket or pidfile left by a killed pluto: the first would look ready before the new
        # one listens, the second makes pluto refuse to start.
        for leftover in (self.ctl_path, os.path.join(self.run_dir, "pluto.pid")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        root = libreswan_root()
        overlays = ""
        if os.path.realpath(root) != "/":
            overlays = "".join(
                f"mount -t overlay ovs-ipsec-libreswan -o lowerdir={root}{d}:{d} {d} && "
                for d in ("/usr/libexec", "/usr/sbin")
            )
        argv = [
            libreswan_tool("pluto"), "--nofork", "--config", self.conf_path,
            "--rundir", self.run_dir, "--nssdir", self.nss_dir,
            "--secretsfile", self.secrets_path, "--ipsecdir", self.dir, "--no-dnssec",
        ]  # fmt: skip
        script = overlays + "exec " + " ".join(argv)
        with open(self.stdout_path, "ab") as out:
            # `ip netns exec` runs us in a mount namespace of our own (slave to the host's), so
            # the overlays stay inside it; sh and ip both exec, so the PID is pluto's own.
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._proc = self.host.lab._track(popen.pid, f"{self.host.name} pluto", popen)

    def await_ready(self, timeout: float) -> None:
        await_socket(
            self._proc, self.ctl_path, timeout,
            what=f"{self.host.name}: pluto's control socket",
            dead=f"{self.host.name}: pluto exited during start-up",
            logs=(self.log_path, self.stdout_path),
        )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop pluto and wait for it to exit (SIGKILL after 5 s). On SIGTERM it deletes its IKE
        SAs (notifying the peers) and its kernel policies, except the ICMPv6 neighbour-discovery
        bypass policies (priority 1), which outlive it."""
        if self._proc is not None:
            survivors = terminate([self._proc], sig, PLUTO_STOP_GRACE)
            if survivors:
                raise LabError(f"{self.host.name}: pluto still running after SIGKILL")
            self._proc = None

    @property
    def process(self) -> LabProcess | None:
        return self._proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.alive() else None

    # -- control socket ------------------------------------------------------------------------

    def whack_command(self) -> str:
        """The shell command a person types to talk to this pluto."""
        return f"ip netns exec {self.host.ns} {libreswan_tool('whack')} --ctlsocket {self.ctl_path}"

    def whack(self, *args: str, check: bool = True, timeout: float = WHACK_TIMEOUT) -> str:
        """`whack --ctlsocket CTL ARGS` in this host; its output (pluto's lines, `000 ...`).

        whack exits non-zero when pluto reports a failure (e.g. 25 for "could not route", 1 for
        an unknown connection); LabCommandError then, if `check`."""
        argv = [libreswan_tool("whack"), "--ctlsocket", self.ctl_path, *args]
        return self.host.run(argv, check=check, timeout=timeout).stdout

    def addconn(self, config_file: str, *names: str, check: bool = True) -> str:
        """Load (add, or replace if the name exists) conns from `config_file` by name.

        Only adds: `auto=` in the file is ignored for named conns, so route with `route()`."""
        argv = [
            libreswan_tool("addconn"), "--ctlsocket", self.ctl_path,
            "--config", config_file, *names,
        ]  # fmt: skip
        return self.host.run(argv, check=check, timeout=WHACK_TIMEOUT).stdout

    def route(self, name: str) -> str:
        """Install the conn's trap policy (`auto=route`)."""
        return self.whack("--route", "--name", name)

    def delete(self, name: str, check: bool = True) -> str:
        """Delete the conn: its SAs (with a Delete notify), its policies, the conn itself."""
        return self.whack("--delete", "--name", name, check=check)

    def initiate(self, name: str) -> str:
        """Start negotiating now, without waiting for the outcome (read states or the log)."""
        return self.whack("--initiate", "--name", name, "--asynchronous")

    def reread_secrets(self) -> str:
        return self.whack("--rereadsecrets")

    def show_states(self) -> str:
        return self.whack("--showstates")

    def status(self) -> str:
        return self.whack("--status")

    def log(self) -> str:
        return _read(self.log_path)

    # -- secrets and NSS -----------------------------------------------------------------------

    def write_secrets(self, text: str) -> None:
        """Replace the included secrets file (0600, atomically); pluto reads it on
        `reread_secrets()`."""
        self._write_private(self.ovs_secrets_path, text)

    @staticmethod
    def _write_private(path: str, text: str) -> None:
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def certutil(self, *args: str, check: bool = True) -> str:
        """certutil on this host's NSS database."""
        return _run(["certutil", "-d", f"sql:{self.nss_dir}", *args], check=check).stdout

    def import_ca(self, nickname: str, pem_path: str) -> None:
        """Trust a CA certificate (PEM) for peer authentication: trust flags CT,,."""
        self.certutil("-A", "-n", nickname, "-t", "CT,,", "-a", "-i", pem_path)

    def import_peer_cert(self, nickname: str, pem_path: str) -> None:
        """Add a peer's (self-signed) certificate without CA trust: trust flags P,, (a trusted
        peer), which is what a pinned self-signed certificate needs."""
        self.certutil("-A", "-n", nickname, "-t", "P,,", "-a", "-i", pem_path)

    def import_cert_and_key(self, nickname: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Import our certificate and its key as the NSS user certificate `nickname` (through a
        PKCS#12 file without a password, as an operator would with pk12util). NSS keys
        certificates by subject: a second one with the same subject keeps the first's nickname."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import (
            NoEncryption,
            load_pem_private_key,
            pkcs12,
        )

        key = load_pem_private_key(key_pem, None)
        data = pkcs12.serialize_key_and_certificates(
            nickname.encode(),
            key,  # type: ignore[arg-type]
            x509.load_pem_x509_certificate(cert_pem),
            None,
            NoEncryption(),
        )
        path = os.path.join(self.dir, f"{nickname}.p12")
        self._write_private(path, "")
        with open(path, "wb") as f:
            f.write(data)
        self.import_pkcs12(path)

    def import_pkcs12(self, p12_path: str, password: str = "") -> None:
        """Import our certificate and key (PKCS#12) with pk12util; its nickname is the one the
        file carries (its friendly name)."""
        _run(["pk12util", "-d", f"sql:{self.nss_dir}", "-i", p12_path, "-W", password])

    def daemon_env(self) -> list[str]:
        """`NAME=value` words for `env` that make `ipsec` (as upstream's monitor calls it: `ipsec
        auto --ctlsocket C --config F --add NAME`, `ipsec whack ...`) run the unpacked Libreswan:
        its `ipsec` first on PATH, and the directories its scripts exec from (IPSEC_SBINDIR
        matters: `ipsec auto` calls `ipsec addconn` and `ipsec whack`, and `ipsec` puts
        IPSEC_SBINDIR first on its PATH, where strongSwan's `ipsec` would answer
        `unknown command`)."""
        root = libreswan_root()
        if os.path.realpath(root) == "/":
            return []
        sbin = os.path.join(root, "usr/sbin")
        return [
            f"PATH={sbin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            f"IPSEC_SBINDIR={sbin}",
            f"IPSEC_EXECDIR={os.path.join(root, 'usr/libexec/ipsec')}",
        ]

    def daemon_args(self) -> list[str]:
        """Upstream's Libreswan flags pointing at this pluto (a proposal for the adapter:
        --ipsec-conf is the conn file the daemon writes, --ipsec-secrets the secrets file
        pluto's own includes, --ipsec-d the NSS database, --ipsec-ctl the control socket)."""
        return [
            "--ike-daemon=libreswan", "--no-restart-ike-daemon",
            f"--ipsec-conf={os.path.join(self.dir, 'ovs.conf')}",
            f"--ipsec-secrets={self.ovs_secrets_path}",
            f"--ipsec-d={self.nss_dir}", f"--ipsec-ctl={self.ctl_path}",
        ]  # fmt: skip


# The keywords with which a pluto conn interoperates with the connection our daemon loads into
# charon for a PSK tunnel (docs/libreswan-notes.md): IKEv2 only, transport mode, upstream's
# Libreswan crypto (pluto adds its DH list to `ike=`, charon picks MODP2048 from it; `esp=` without
# a group matches charon's aes256gcm16-modp2048 in IKE_AUTH, and its rekeys use the IKE group).
INTEROP_PSK_KEYWORDS: Mapping[str, str] = {
    "authby": "secret",
    "ikev2": "insist",
    "type": "transport",
    "ike": "aes_gcm256-sha2_256",
    "esp": "aes_gcm256",
}


def interop_conn(
    name: str, local_ip: str, remote_ip: str, local_ports: str, remote_ports: str, **extra: str
) -> str:
    """A pluto conn for one of our tunnels' selectors: `local_ports`/`remote_ports` are
    left/rightprotoport values, `PROTO/PORT` (`47/0`, `17/6081`, `17/0`; names such as `gre` need
    /etc/protocols, and a bare `47` is refused by 4.10)."""
    keywords = {
        "left": local_ip,
        "right": remote_ip,
        "leftprotoport": local_ports,
        "rightprotoport": remote_ports,
        **INTEROP_PSK_KEYWORDS,
        **extra,
    }
    return conn_section(name, keywords)


def conn_section(name: str, keywords: Mapping[str, str]) -> str:
    """`conn NAME` with one `key=value` line per keyword (ipsec.conf syntax); a value with a
    space or comma (a DN) is double-quoted."""
    lines = (
        f'\t{k}="{v}"\n' if any(c in v for c in " ,") else f"\t{k}={v}\n"
        for k, v in keywords.items()
    )
    return f"conn {name}\n" + "".join(lines)


def load_daemon_conn(
    host: Host, tunnel: Tunnel, credentials: Credentials | None = None
) -> connections.ConnSpec:
    """Load into `host`'s charon the connection (and PSK, or private key) our daemon plans for
    `tunnel`; returns the plan. Its children trap from the moment it is loaded, as the daemon's."""
    credentials = credentials or Credentials()
    conn = connections.plan_conn(tunnel.remote_ip, [tunnel], credentials)
    with host.vici() as v:
        shared = connections.plan_shared(conn, tunnel)
        if shared is not None:
            v.load_shared({
                "id": shared.id, "type": "IKE", "data": shared.secret.reveal(),
                "owners": list(shared.owners),
            })  # fmt: skip
        for key in connections.plan_keys(credentials, tunnel.psk is None).values():
            v.load_key({"type": "any", "data": key.secret.reveal()})
        v.load_conn({conn.name: conn.body})
    return conn
