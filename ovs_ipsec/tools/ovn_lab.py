"""OVN on a lab (tools/lab.py): real OVN creates the tunnels, as on an OVN node.

`OvnCentral(lab).start()` runs OVN's northbound and southbound ovsdb-servers and ovn-northd in the
lab's hub namespace; the southbound database listens on TCP at `CENTRAL_IP`, on the hosts'
segment, as a real central node's does. `Chassis(host, central).start()` makes a lab host an OVN
chassis the way an operator does: `external_ids` system-id (the host's name), ovn-encap-type
geneve, ovn-encap-ip and ovn-remote, then ovn-controller against the host's own ovsdb-server.
ovn-controller registers the chassis in the southbound database and creates br-int with one tunnel
port per other chassis, carrying the options it writes itself (`remote_name`, `local_ip` and the
`ipsec_*` it copies from NB_Global when `ipsec=true`).

No ovs-vswitchd: ovn-controller creates br-int and its tunnel ports through OVSDB alone (0.1 s
after start). It also connects to br-int's OpenFlow socket for its flows and keeps retrying that in
the background; the tunnels do not wait for it.

Every process starts through Lab.start_detached, so Lab.stop() ends it with the rest of the lab.

May import: lab, stdlib.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

from ovs_ipsec.tools.lab import Host, Lab, LabError, LabProcess, terminate, wait_for

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
PROGRAMS = ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl")
# On the hosts' /24, above every address a lab host can have (lab.MAX_HOSTS).
CENTRAL_IP = "10.77.0.254"
NB_PORT = 6641
SB_PORT = 6642
EXIT_TIMEOUT = 10.0


def missing() -> list[str]:
    """What this machine lacks to run OVN in a lab (Debian's ovn-central and ovn-host)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    absent = [p for p in PROGRAMS if shutil.which(p, path=search) is None]
    return absent + [s for s in (NB_SCHEMA, SB_SCHEMA) if not os.path.exists(s)]


class OvnCentral:
    """OVN's northbound and southbound databases and ovn-northd, in the lab's hub namespace."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = os.path.join(lab.workdir, "ovn")
        self.nb_db = f"unix:{self.dir}/nb.sock"
        self.sb_db = f"unix:{self.dir}/sb.sock"
        # What each chassis's ovn-remote names: over the hosts' network, not a shared file.
        self.sb_remote = f"tcp:{CENTRAL_IP}:{SB_PORT}"

    def start(self) -> OvnCentral:
        os.makedirs(self.dir)
        self.lab.run_in_hub(["ip", "addr", "add", f"{CENTRAL_IP}/24", "dev", "br0"])
        for name, schema, port in (("nb", NB_SCHEMA, NB_PORT), ("sb", SB_SCHEMA, SB_PORT)):
            db_file = os.path.join(self.dir, f"{name}.db")
            self.lab.run_in_hub(["ovsdb-tool", "create", db_file, schema])
            self._start(f"{name}-ovsdb", [
                "ovsdb-server", db_file, f"--remote=punix:{self.dir}/{name}.sock",
                f"--remote=ptcp:{port}:{CENTRAL_IP}", f"--unixctl={self.dir}/{name}.ctl",
            ])  # fmt: skip
        self.nbctl("init")
        self._start("ovn-northd", [
            "ovn-northd", f"--ovnnb-db={self.nb_db}", f"--ovnsb-db={self.sb_db}",
            f"--unixctl={self.dir}/ovn-northd.ctl",
        ])  # fmt: skip
        return self

    def _start(self, name: str, argv: Sequence[str]) -> LabProcess:
        pidfile = os.path.join(self.dir, f"{name}.pid")
        env = [f"OVS_RUNDIR={self.dir}", f"OVN_RUNDIR={self.dir}", f"OVS_LOGDIR={self.dir}"]
        return self.lab.start_detached(
            self.lab.hub,
            ["env", *env, *argv, f"--pidfile={pidfile}",
             f"--log-file={self.dir}/{name}.log", "--detach"],
            pidfile,
            f"ovn central {name}",
        )  # fmt: skip

    def nbctl(self, *args: str) -> str:
        """ovn-nbctl against the northbound database; stdout without its final newline."""
        argv = ["ovn-nbctl", f"--db={self.nb_db}", "--timeout=10", *args]
        return self.lab.run_in_hub(argv).stdout.rstrip("\n")

    def sbctl(self, *args: str) -> str:
        """ovn-sbctl against the southbound database; stdout without its final newline."""
        argv = ["ovn-sbctl", f"--db={self.sb_db}", "--timeout=10", *args]
        return self.lab.run_in_hub(argv).stdout.rstrip("\n")

    def chassis_names(self) -> set[str]:
        """The chassis registered in the southbound database."""
        return set(self.sbctl("--bare", "--columns=name", "list", "Chassis").split())


class Chassis:
    """A lab host as an OVN chassis named after the host (h1, h2, ...), its ovn-controller
    started and stopped here."""

    def __init__(self, host: Host, central: OvnCentral) -> None:
        self.host = host
        self.central = central
        self.name = host.name
        self.pidfile = os.path.join(host.run_dir, "ovn-controller.pid")
        self.log_path = os.path.join(host.dir, "ovn-controller.log")
        self._process: LabProcess | None = None

    def start(self) -> Chassis:
        """Set the chassis's external_ids and start ovn-controller (it returns once detached)."""
        if self._process is not None and self._process.alive():
            raise LabError(f"{self.name}: ovn-controller is already running")
        self.host.vsctl(
            "set", "Open_vSwitch", ".",
            f"external_ids:system-id={self.name}",
            "external_ids:ovn-encap-type=geneve",
            f"external_ids:ovn-encap-ip={self.host.ipv4}",
            f"external_ids:ovn-remote={self.central.sb_remote}",
        )  # fmt: skip
        run_dir = self.host.run_dir
        self._process = self.host.lab.start_detached(
            self.host.ns,
            ["env", f"OVS_RUNDIR={run_dir}", f"OVN_RUNDIR={run_dir}", f"OVS_LOGDIR={self.host.dir}",
             "ovn-controller", self.host.db, f"--pidfile={self.pidfile}",
             f"--log-file={self.log_path}", "--detach"],
            self.pidfile,
            f"{self.name} ovn-controller",
        )  # fmt: skip
        return self

    def exit(self, cleanup: bool = True) -> None:
        """`ovs-appctl exit` to ovn-controller and wait until it is gone. With `cleanup` it first
        deletes its chassis from the southbound database and its tunnel ports from its own
        OVSDB, as on a node taken out of service; without (`exit --restart`) it leaves both, as
        a node that died does."""
        proc = self._process
        if proc is None or not proc.alive():
            raise LabError(f"{self.name}: ovn-controller is not running")
        ctl = os.path.join(self.host.run_dir, f"ovn-controller.{proc.pid}.ctl")
        args = ["ovs-appctl", "-t", ctl, f"--timeout={int(EXIT_TIMEOUT)}", "exit"]
        self.host.run([*args] if cleanup else [*args, "--restart"], timeout=EXIT_TIMEOUT + 5)
        try:
            wait_for(
                lambda: not proc.alive(), EXIT_TIMEOUT, what=f"{self.name}: ovn-controller exit"
            )
        finally:
            if terminate([proc]):
                raise LabError(f"{self.name}: ovn-controller still running after SIGKILL")
            self._process = None

    def tunnels(self) -> dict[str, dict[str, str]]:
        """The tunnel ports ovn-controller created in this host's OVSDB (interfaces of ports
        carrying `external_ids:ovn-chassis-id`): name -> options."""
        ports = json.loads(self.host.vsctl(
            "--format=json", "--columns=name,external_ids", "list", "Port"))  # fmt: skip
        names = {
            name for name, (_, ids) in ports["data"]
            if any(key == "ovn-chassis-id" for key, _ in ids)
        }  # fmt: skip
        interfaces = json.loads(self.host.vsctl(
            "--format=json", "--columns=name,options", "list", "Interface"))  # fmt: skip
        return {name: dict(pairs) for name, (_, pairs) in interfaces["data"] if name in names}
