"""The namespace lab itself: topology, per-host services, daemon handling and cleanup."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import vici

from ovs_ipsec.core.capabilities import charon_release
from ovs_ipsec.tools import lab as labmod
from ovs_ipsec.tools.lab import (
    NETNS_DIR,
    Host,
    Lab,
    LabCommandError,
    LabError,
    charon_conf,
    wait_for,
)

MakeLab = Callable[..., Lab]


def netns_names(prefix: str) -> list[str]:
    return [n for n in os.listdir(NETNS_DIR) if n.startswith(f"{prefix}-")]


def netns_inode(ns: str) -> int:
    return os.stat(os.path.join(NETNS_DIR, ns)).st_ino


def peer_pid(session: vici.Session) -> int:
    creds = session.transport.socket.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    return struct.unpack("3i", creds)[0]


# -- no root needed ----------------------------------------------------------------------------


def test_wait_for_returns_the_value_and_names_what_timed_out() -> None:
    assert wait_for(lambda: 42, 1) == 42
    with pytest.raises(TimeoutError, match="waiting for the moon"):
        wait_for(lambda: False, 0.1, what="the moon")


def test_charon_conf_keeps_the_recipe_and_puts_extra_settings_inside_charon() -> None:
    conf = charon_conf("/tmp/oi-x/h1", "plugins {\n  kernel-netlink {\n    mtu = 1400\n  }\n}")
    load = next(line for line in conf.splitlines() if line.strip().startswith("load ="))
    assert " kdf " in load and "kernel-libipsec" not in load
    assert "set_proto_port_transport_sa = yes" in conf
    assert "socket = unix:///tmp/oi-x/h1/charon.vici" in conf
    assert "path = /tmp/oi-x/h1/charon.log" in conf
    charon_block = conf[: conf.index("\n}\n")]  # the first top-level closing brace
    assert "mtu = 1400" in charon_block


def test_command_errors_carry_argv_rc_and_output() -> None:
    with pytest.raises(LabCommandError) as info:
        labmod._run(["sh", "-c", "echo out; echo err >&2; exit 4"])
    e = info.value
    assert (e.returncode, e.stdout, e.stderr) == (4, "out\n", "err\n")
    assert "sh -c" in str(e) and "exit code 4" in str(e) and "err" in str(e)


# -- lab ---------------------------------------------------------------------------------------


@pytest.mark.lab
def test_hosts_reach_each_other_over_ipv4_and_ipv6(lab2: Lab) -> None:
    h1, h2 = lab2.hosts
    assert (h1.ipv4, h2.ipv6) == ("10.77.0.1", "fd77::2")
    for src, dst in ((h1, h2), (h2, h1)):
        src.run(["ping", "-c1", "-W2", dst.ipv4])
        src.run(["ping", "-6", "-c1", "-W2", dst.ipv6])
    # The hosts are really separate: the root namespace has no 10.77.0.0/24.
    root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.77.0." not in root_addrs


@pytest.mark.lab
def test_each_charon_answers_over_its_own_vici_socket(lab2: Lab) -> None:
    pids = set()
    for host in lab2.hosts:
        with host.vici() as v:
            version = v.version()
            assert version["daemon"] == b"charon-systemd"
            plugins = v.stats()["plugins"]
            # The socket's peer is this host's charon, running in this host's namespace.
            pid = peer_pid(v)
        assert pid == host.charon_pid
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(host.ns)
        assert b"kernel-libipsec" not in plugins
        # 5.9.8 derives IKEv2 keys with kdf; 6.0's openssl plugin does it (kdf moved to
        # libstrongswan-extra-plugins, which setup.sh does not install on trixie).
        if charon_release(version["version"].decode()) < (6,):
            assert b"kdf" in plugins
        else:
            assert b"openssl" in plugins
        # swanctl is the same strongSwan as charon (5.9.8 on bookworm, 6.0.1 on trixie).
        assert host.swanctl("--version").split()[-1] == version["version"].decode()
        pids.add(pid)
    assert len(pids) == 2


@pytest.mark.lab
def test_charon_restarts_and_logs_to_the_host_dir(lab2: Lab) -> None:
    h1 = lab2[1]
    old = h1.charon_pid
    h1.stop_charon()
    assert h1.charon_pid is None
    with pytest.raises(OSError):
        h1.vici()
    h1.start_charon()
    assert h1.charon_pid not in (None, old)
    with h1.vici() as v:
        v.version()
    assert "SIGTERM received, shutting down" in h1.charon_log()


@pytest.mark.lab
def test_vsctl_per_host_and_databases_are_independent(lab2: Lab) -> None:
    h1, h2 = lab2.hosts
    assert h1.vsctl("list-br") == h2.vsctl("list-br") == "br0"
    h1.vsctl(
        "add-port", "br0", "gre0", "--", "set", "interface", "gre0", "type=gre",
        f"options:remote_ip={h2.ipv4}", "options:psk=swordfish",
    )  # fmt: skip
    assert h1.vsctl("list-ports", "br0") == "gre0"
    assert h1.vsctl("get", "interface", "gre0", "options:remote_ip") == '"10.77.0.2"'
    assert h2.vsctl("list-ports", "br0") == ""
    with pytest.raises(LabCommandError, match="no row"):
        h2.vsctl("get", "interface", "gre0", "type")


@pytest.mark.lab
def test_stop_leaves_nothing_behind(make_lab: MakeLab) -> None:
    lab = make_lab(3, daemon=False)
    prefix, workdir, processes = lab.prefix, lab.workdir, lab.processes
    assert len(netns_names(prefix)) == 4  # hub + 3 hosts
    assert len(processes) == 6 and all(p.alive() for p in processes)
    # A process a test started in a host and forgot: stop() finds it in the namespace.
    stray = subprocess.Popen(["ip", "netns", "exec", lab[2].ns, "sleep", "300"])
    wait_for(lambda: lab[2].run(["pgrep", "-x", "sleep"], check=False).returncode == 0, 5)

    t0 = time.monotonic()
    lab.stop()
    elapsed = time.monotonic() - t0

    assert stray.wait(5) != 0
    assert netns_names(prefix) == [] and lab.namespaces == ()
    assert not [p for p in lab.processes if p.alive()]
    assert not os.path.exists(workdir)
    assert elapsed < 5, f"stop took {elapsed:.1f} s"
    lab.stop()  # idempotent


def fail_daemon(host: Host, *extra: str) -> list[str]:
    return ["ip", "netns", "exec", host.ns, "sh", "-c", "echo boom >&2; exit 3"]


@pytest.mark.lab
@pytest.mark.parametrize(
    ("target", "name", "value", "message"),
    [
        (labmod, "CHARON", "/bin/false", "h1: charon exited during start-up"),
        (
            Host,
            "daemon_argv",
            fail_daemon,
            r"(?s)h1: the daemon failed to start \(exit code 3\).*boom",
        ),
    ],
    ids=["charon-fails", "daemon-fails"],
)
def test_stop_cleans_up_after_a_failed_start(
    make_lab: MakeLab,
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    name: str,
    value: object,
    message: str,
) -> None:
    monkeypatch.setattr(target, name, value)
    lab = make_lab(2, daemon=True, start=False)
    with pytest.raises(LabError, match=message):
        lab.start()
    assert lab.processes, "start() got as far as starting ovsdb-server"
    assert not [p for p in lab.processes if p.alive()]
    assert netns_names(lab.prefix) == []
    assert not os.path.exists(lab.workdir)


FAKE_DAEMON = """\
import argparse
import ovs.daemon, ovs.poller, ovs.unixctl, ovs.unixctl.server, ovs.vlog

vlog = ovs.vlog.Vlog("fake")  # before vlog is initialised, or Vlog() asserts
parser = argparse.ArgumentParser()
parser.add_argument("database")
parser.add_argument("--ike-daemon")
parser.add_argument("--vici")
parser.add_argument("--unixctl")
ovs.vlog.add_args(parser)
ovs.daemon.add_args(parser)
args = parser.parse_args()
ovs.vlog.handle_args(args)
ovs.daemon.handle_args(args)
ovs.daemon.daemonize_start()
exiting = []

def do_exit(conn, argv, aux):
    exiting.append(True)
    conn.reply(None)

ovs.unixctl.command_register("exit", "", 0, 0, do_exit, None)
error, server = ovs.unixctl.server.UnixctlServer.create(args.unixctl, version="9.9.9")
vlog.info(f"ready db={args.database} vici={args.vici}")
ovs.daemon.daemonize_complete()
while not exiting:
    server.run()
    poller = ovs.poller.Poller()
    server.wait(poller)
    poller.block()
"""


@pytest.mark.lab
def test_daemon_start_stop_and_kill_with_a_stand_in(
    make_lab: MakeLab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The lab's side of the daemon contract, with a minimal OVS-style daemon in its place."""
    script = tmp_path / "fake_daemon.py"
    script.write_text(textwrap.dedent(FAKE_DAEMON))
    real_argv = Host.daemon_argv

    def fake_argv(host: Host, *extra: str) -> list[str]:
        argv = real_argv(host, *extra)
        i = argv.index(sys.executable)
        assert argv[i + 1].endswith("/bin/ovs-monitor-ipsec")
        return [*argv[: i + 1], str(script), *argv[i + 2 :]]

    monkeypatch.setattr(Host, "daemon_argv", fake_argv)
    lab = make_lab(1, daemon=True)
    h1 = lab[1]
    pid = h1.daemon_pid
    assert pid is not None and Path(h1.daemon_pidfile).read_text().strip() == str(pid)
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(h1.ns)
    assert "9.9.9" in h1.appctl("version")
    assert f"ready db={h1.db} vici={h1.vici_uri}" in h1.daemon_log()

    h1.kill_daemon()
    assert h1.daemon_pid is None
    h1.start_daemon("-vconsole:off")  # extra args reach the command line
    assert h1.daemon_pid not in (None, pid)
    h1.stop_daemon()
    assert h1.daemon_pid is None
    h1.start_daemon()
    lab.stop()
    assert not [p for p in lab.processes if p.alive()]


def initiate(v: vici.Session, name: str) -> str:
    try:
        for _ in v.initiate({"child": name, "ike": name, "timeout": 10000, "loglevel": 1}):
            pass
        return "ok"
    except vici.exception.CommandException as e:
        return str(e)


def ike_states(host: Host, name: str) -> list[bytes]:
    with host.vici() as v:
        return [sa[name]["state"] for sa in v.list_sas() if name in sa]


@pytest.mark.keeps_ike_sa
@pytest.mark.lab
def test_ike_sa_establishes_with_psk_over_vici(make_lab: MakeLab) -> None:
    """The recipe of test-machine.md sections 6 and 7: IKE_SA up, CHILD_SA refused by the kernel."""
    settings = "plugins {\n  kernel-netlink {\n    xfrm_acq_expires = 17\n  }\n}\n"
    lab = make_lab(2, daemon=False, charon_settings=settings)
    h1, h2 = lab.hosts
    # charon_settings reached charon (it writes this value into its own namespace).
    assert h1.run(["cat", "/proc/sys/net/core/xfrm_acq_expires"]).stdout.strip() == "17"
    for local, remote in ((h1, h2), (h2, h1)):
        with local.vici() as v:
            v.load_shared(
                {"id": "psk-gre0", "type": "IKE", "data": "swordfish", "owners": [remote.ipv4]}
            )
            v.load_conn({"gre0": {
                "version": 2, "local_addrs": [local.ipv4], "remote_addrs": [remote.ipv4],
                "proposals": ["aes256gcm16-prfsha256-modp2048"], "rekey_time": 0, "dpd_delay": 0,
                "local": {"auth": "psk", "id": local.ipv4},
                "remote": {"auth": "psk", "id": remote.ipv4},
                "children": {"gre0": {
                    "mode": "transport", "local_ts": ["dynamic[47]"],
                    "remote_ts": ["dynamic[47]"], "esp_proposals": ["aes256gcm16"],
                }},
            }})  # fmt: skip
    with h1.vici() as v:
        result = initiate(v, "gre0")
    # No ESP/AEAD in this kernel: the CHILD_SA fails, the IKE_SA stays.
    assert result in ("ok", "Command failed: establishing CHILD_SA 'gre0' failed")
    assert ike_states(h1, "gre0") == [b"ESTABLISHED"]
    wait_for(lambda: ike_states(h2, "gre0") == [b"ESTABLISHED"], 5, what="h2's IKE_SA")
    assert "IKE_SA gre0[1] established" in h1.charon_log()
