"""The control socket with the real ovs-appctl (openvswitch-common) against the daemon in
namespace hosts: every command in text and JSON, tunnel states driven by real IKE outcomes and
by charon going away and coming back, the command line upstream's units use, and no secret in
any output, log or file the daemon writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ovs.unixctl.client
import pytest

from ovs_ipsec.tools import pki_builders, pki_tool
from ovs_ipsec.tools.lab import Host, Lab, LabCommandError, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
# Short retransmits: an absent peer is "unreachable" after about 1.4 s instead of 6 s.
FAST_RETRANSMIT = "retransmit_tries = 1\nretransmit_timeout = 0.5"
COMMANDS = ("tunnels/show", "ipsec/status", "xfrm/policies", "xfrm/state", "memory/show",
            "refresh", "exit",
            "version", "list-commands", "help", "vlog/list", "vlog/set", "vlog/reopen",
            "vlog/close")  # fmt: skip
STATUS_COMMANDS = ("tunnels/show", "ipsec/status", "xfrm/policies", "xfrm/state")


def add_tunnel(host: Host, name: str, kind: str, remote: str, **options: str) -> None:
    opts = [f"options:{k}={v}" for k, v in {"remote_ip": remote, **options}.items()]
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, f"type={kind}", *opts)


def status(host: Host) -> dict[str, dict[str, str]]:
    return json.loads(host.appctl("ipsec/status"))


def wait_state(
    host: Host, name: str, state: str, reason: str = "", timeout: float = 10
) -> dict[str, str]:
    def reached() -> dict[str, str] | None:
        found = status(host).get(name)
        if found and found["state"] == state and reason in found["reason"]:
            return found
        return None

    return wait_for(reached, timeout, what=f"{host.name}: {name} {state} ({reason!r}): "
                    f"{status(host).get(name)}")  # fmt: skip


def json_client(host: Host, command: str, *args: str) -> Any:
    """The reply of a client that asked `set-options --format json` first, as newer
    ovs-appctl does with --format json (Debian's 3.1 ovs-appctl cannot)."""
    error, client = ovs.unixctl.client.UnixctlClient.create(host.ctl_path)
    assert not error, error
    try:
        error, err_text, result = client.transact("set-options", ["--format", "json"])
        assert not error and err_text is None, err_text
        error, err_text, result = client.transact(command, list(args))
        assert not error and err_text is None, err_text
        return result
    finally:
        client.close()


def appctl_fails(host: Host, *args: str) -> str:
    with pytest.raises(LabCommandError) as failed:
        host.appctl(*args)
    return failed.value.stderr


# -- the commands --------------------------------------------------------------------------------


def test_every_command_without_tunnels(make_lab: Callable[..., Lab]) -> None:
    """No tunnels: `ipsec/status` is exactly `{}` in every form; every command answers in text
    and JSON; help and list-commands list them all; vlog/reopen reopens a rotated log; bad
    arguments are errors and leave the daemon running."""
    h1 = make_lab(1)[1]
    assert h1.appctl("ipsec/status") == "{}"
    assert h1.appctl("ipsec/status", "--json") == "{}"
    assert json_client(h1, "ipsec/status") == {}
    assert h1.appctl("tunnels/show") == "No tunnels configured with IPsec"
    assert json.loads(h1.appctl("tunnels/show", "--json")) == {}
    assert json_client(h1, "tunnels/show") == {}
    policies = json.loads(h1.appctl("xfrm/policies", "--json"))
    assert policies["protection"] == [] and json_client(h1, "xfrm/policies") == policies
    assert "Protection policies (ovs-monitor-ipsec's own blocks):\n  none" in h1.appctl(
        "xfrm/policies")  # fmt: skip
    assert h1.appctl("xfrm/state") == "No XFRM states"
    assert json.loads(h1.appctl("xfrm/state", "--json")) == {"states": []}
    memory = h1.appctl("memory/show")
    assert memory.startswith("ports:") and "conns:" in memory and "VmRSS:" in memory, memory

    listing = h1.appctl("list-commands")
    assert listing == h1.appctl("help")
    assert listing.startswith("The available commands are:")
    listed = {line.split()[0] for line in listing.splitlines()[1:]}
    assert set(COMMANDS) <= listed
    assert re.fullmatch(r"ovs-monitor-ipsec \(Open vSwitch\) \d+\.\d+\.\d+\novs-ipsec \S+",
                        h1.appctl("version"))  # fmt: skip

    assert "ovs-monitor-ipsec" in h1.appctl("vlog/list")
    h1.appctl("vlog/set", "ANY:file:dbg")
    rotated = h1.daemon_log_path + ".1"
    os.rename(h1.daemon_log_path, rotated)
    assert h1.appctl("vlog/reopen") == ""
    h1.appctl("refresh")
    wait_for(lambda: "refresh requested" in h1.daemon_log(), 5, what="a line in the new log")
    assert "refresh requested" not in Path(rotated).read_text()

    # Upstream's reply to an unknown argument: a normal reply, and the daemon keeps running.
    assert h1.appctl("exit", "--bogus") == "unrecognized parameter: --bogus"
    for command in STATUS_COMMANDS:
        assert "unrecognized parameter: -x" in appctl_fails(h1, command, "-x")
    assert h1.appctl("version")  # still running
    h1.appctl("exit", "--no-cleanup")
    wait_for(lambda: h1.daemon_pid is None, 5, what="the daemon to exit")


@pytest.mark.keeps_ike_sa
def test_states_follow_real_ike_outcomes_and_charon_restarts(
    make_lab: Callable[..., Lab],
) -> None:
    """One host, four tunnels: a good PSK tunnel (IKE up, the kernel here refuses the ESP SA),
    a wrong PSK, an absent peer and an invalid port, each with its state and reason; the text
    and JSON views of the same; then charon stops (noticed at once through the event session)
    and comes back (everything reloaded, and events again)."""
    a, b = make_lab(2, charon_settings=FAST_RETRANSMIT).hosts
    add_tunnel(a, "t0", "gre", b.ipv4, psk="swordfish")
    add_tunnel(b, "t0", "gre", a.ipv4, psk="swordfish")
    add_tunnel(a, "t1", "gre", b.ipv6, psk="swordfish")
    add_tunnel(b, "t1", "gre", a.ipv6, psk="not-swordfish")
    add_tunnel(a, "t2", "vxlan", "10.77.0.99", psk="swordfish")
    add_tunnel(a, "t3", "gre", "not-an-address", psk="swordfish")
    for name in ("t0", "t1", "t2"):
        wait_state(a, name, "configured", "trap policies in place")
    for name in ("t0", "t1"):  # the responder too: a probe before its load fails otherwise
        wait_state(b, name, "configured", "trap policies in place")
    assert status(a)["t3"]["state"] == "invalid" and "remote_ip" in status(a)["t3"]["reason"]

    a.send_probe(b.ipv4, "gre")
    a.send_probe(b.ipv6, "gre")
    a.send_probe("10.77.0.99", "udp", 4789)
    wait_state(b, "t0", "ike-up", "kernel refused the SA: unable to install")
    wait_state(a, "t0", "ike-up", "refused the CHILD_SA (NO_PROPOSAL_CHOSEN)")
    wait_state(a, "t1", "failed", f"authentication failed: peer {b.ipv6} rejected us as "
               f"'{a.ipv6}'")  # fmt: skip
    wait_state(b, "t1", "failed", f"peer '{a.ipv6}' did not prove our pre-shared key")
    wait_state(a, "t2", "failed", "peer 10.77.0.99 unreachable")

    shown = json.loads(a.appctl("tunnels/show", "--json"))
    assert json_client(a, "tunnels/show").keys() == shown.keys()
    t0 = shown["t0"]
    assert (t0["state"], t0["cause"]) == ("ike-up", "negotiation")
    assert t0["ike_sa"]["state"] == "ESTABLISHED" and t0["ike_sa"]["initiator"] is True
    assert t0["ike_sa"]["remote"] == {"host": b.ipv4, "port": 500, "id": b.ipv4}
    assert t0["auth"] == {"mode": "psk", "local_id": None, "remote_id": b.ipv4}
    assert [s["text"] for s in t0["selectors"]] == ["gre === gre"]
    assert t0["protection"]["active"] is True
    assert (shown["t1"]["cause"], shown["t2"]["cause"], shown["t3"]["cause"]) == (
        "authentication", "unreachable", "config")  # fmt: skip
    assert shown["t2"]["ike_sa"]["state"] == "CONNECTING"
    text = a.appctl("tunnels/show")
    assert "Interface name: t0 v1 (IKE-UP)" in text and "Interface name: t3 v1 (INVALID)" in text
    assert re.search(rf"ovs-{re.escape(b.ipv4)}\[\d+\]: ESTABLISHED \d+ seconds ago", text)
    assert "  PSK:            <redacted>" in text and "swordfish" not in text
    assert text.count("Protection:     active") == 3
    assert "Protection:     none (nothing known to block: no usable remote_ip)" in text

    policies = json.loads(a.appctl("xfrm/policies", "--json"))
    ours = [p for p in policies["protection"] if p["reasons"] == ["tunnel t0"]]
    assert {(p["direction"], p["installed"], p["purpose"]) for p in ours} == {
        ("out", True, "fail-closed"), ("in", True, "fail-closed")}  # fmt: skip
    traps = [p for p in policies["other"] if p["peer"] == b.ipv4]
    assert sorted(p["direction"] for p in traps) == ["in", "out"]
    text = a.appctl("xfrm/policies")
    assert text.count(f"{b.ipv4}/32 -> {a.ipv4}/32 gre") == 1
    assert f"  {b.ipv4}:\n" in text
    states = json.loads(a.appctl("xfrm/state", "--json"))["states"]
    assert all(s["spi"] for s in states)

    # charon goes away: the event session sees EOF, the daemon says so within a second.
    a.stop_charon()
    stopped = time.monotonic()
    wait_state(a, "t0", "failed", "charon unreachable", timeout=3)
    assert time.monotonic() - stopped < 1.5
    assert status(a)["t3"]["state"] == "invalid"
    a.start_charon()
    for name in ("t0", "t1", "t2"):
        wait_state(a, name, "configured", timeout=8)
    a.send_probe(b.ipv4, "gre")  # the new charon's events are listened to again
    wait_state(a, "t0", "ike-up", "NO_PROPOSAL_CHOSEN")
    log = a.daemon_log()
    # The event session saw it first (EOF or a reset, by timing), and the new charon was reloaded
    # (noticed by its start time or, when it came back within a second, by our objects missing).
    assert "charon unreachable (events: " in log
    assert "reloading everything" in log or "vanished from charon; restoring" in log


@pytest.mark.keeps_ike_sa
def test_no_secret_in_any_output_log_or_file(make_lab: Callable[..., Lab]) -> None:
    """The PSK and the private key's base64 appear in no reply of any command (text, --json
    and JSON-format clients), nor in the daemon's log (at debug level), its output or pidfile,
    before and after `exit` cleans up."""
    psk = "Zq9-appctl-psk-4b1d"
    a, b = make_lab(2).hosts
    ours = pki_builders.make_self_signed("h1")
    peer = pki_builders.make_self_signed("h9")
    for name, data, mode in (("cert.pem", ours.cert_pem, 0o644), ("key.pem", ours.key_pem, 0o600),
                             ("peer.pem", peer.cert_pem, 0o644)):  # fmt: skip
        pki_tool.write_atomic(Path(a.dir, name), data, mode)
    a.vsctl(
        "set",
        "Open_vSwitch",
        ".",
        f"other_config:certificate={a.dir}/cert.pem",
        f"other_config:private_key={a.dir}/key.pem",
        "other_config:ipsec_skb_mark=1/1",
    )
    add_tunnel(a, "p0", "gre", b.ipv4, psk=psk)
    add_tunnel(b, "p0", "gre", a.ipv4, psk=psk)
    add_tunnel(a, "c0", "geneve", "10.77.0.98", remote_cert=f"{a.dir}/peer.pem")
    wait_state(a, "p0", "configured")
    wait_state(b, "p0", "configured")  # the responder too
    wait_state(a, "c0", "configured")
    a.send_probe(b.ipv4, "gre")
    wait_state(a, "p0", "ike-up")

    body = b"".join(line for line in ours.key_pem.splitlines() if not line.startswith(b"-----"))
    secrets = [psk, body.decode()] + [
        line.decode() for line in ours.key_pem.splitlines() if len(line) >= 16
        and not line.startswith(b"-----")]  # fmt: skip
    assert len(secrets) >= 3

    outputs = []
    for command in STATUS_COMMANDS:
        outputs += [a.appctl(command), a.appctl(command, "--json"),
                    json.dumps(json_client(a, command))]  # fmt: skip
    for command in ("version", "list-commands", "vlog/list", "refresh", "memory/show"):
        outputs.append(a.appctl(command))
    assert "<redacted>" in outputs[0] and "key.pem" in outputs[0]

    def files(running: bool = True) -> list[str]:
        """Everything the daemon writes: its log, the launcher's output, the pidfile (removed
        at exit)."""
        names = [p for p in (*Path(a.dir).iterdir(), *Path(a.run_dir).iterdir())
                 if p.name.startswith("ovs-monitor-ipsec") and p.is_file()]  # fmt: skip
        expected = {"ovs-monitor-ipsec.log", "ovs-monitor-ipsec.stdout"}
        assert {p.name for p in names} >= expected | ({"ovs-monitor-ipsec.pid"} if running
                                                      else set())  # fmt: skip
        return [p.read_text(errors="replace") for p in names]

    def leaks(texts: list[str]) -> list[str]:
        return [s for s in secrets for t in texts if s in t]

    assert leaks(outputs) == []
    assert leaks(files()) == []
    a.appctl("exit")
    wait_for(lambda: a.daemon_pid is None, 5, what="the daemon to exit")
    assert "cleanup: unloaded" in a.daemon_log()
    assert leaks(files(running=False)) == []


# -- the command line ----------------------------------------------------------------------------

UPSTREAM_FLAGS = (
    "--ike-daemon=strongswan", "--no-restart-ike-daemon", "--root-prefix=/nonexistent",
    "--ipsec-conf=/etc/ipsec.d/openshift.conf", "--root-ipsec-conf=/etc/ipsec.conf",
    "--ipsec-d=/var/lib/ipsec/nss", "--ipsec-secrets=/etc/ipsec.secrets",
    "--ipsec-ctl=/run/pluto/pluto.ctl", "--command-timeout=5", "--use-default-crypto",
)  # fmt: skip


def test_upstream_command_line_default_pidfile_and_monitor(make_lab: Callable[..., Lab]) -> None:
    """The daemon started the way ovs-ctl and integrators start upstream's (every upstream
    flag, --monitor, --overwrite-pidfile, syslog, no --pidfile): each ignored flag gets one
    notice; `ovs-appctl -t ovs-monitor-ipsec` finds it through the default pidfile; the
    command line stays recognisable; the monitor restarts a crashed daemon."""
    h1 = make_lab(1, daemon=False)[1]
    env = ["env", f"OVS_RUNDIR={h1.run_dir}", f"OVS_LOGDIR={h1.dir}", "OVS_SYSLOG_METHOD=null",
           f"PYTHONPATH={ROOT}"]  # fmt: skip
    h1.run([*env, sys.executable, str(ROOT / "bin" / "ovs-monitor-ipsec"), h1.db,
            f"--vici={h1.vici_uri}", *UPSTREAM_FLAGS, "--log-file", "--detach", "--monitor",
            "--overwrite-pidfile", "--no-chdir", "-vsyslog:info", "-vfile:info"])  # fmt: skip

    def appctl(*args: str) -> str:
        return h1.run([*env, "ovs-appctl", "--timeout=5", "-t", "ovs-monitor-ipsec", *args])\
            .stdout.strip()  # fmt: skip

    pidfile = Path(h1.run_dir, "ovs-monitor-ipsec.pid")
    pid = int(pidfile.read_text())
    assert appctl("ipsec/status") == "{}"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1].endswith(b"ovs-monitor-ipsec")
    log = Path(h1.dir, "ovs-monitor-ipsec.log").read_text()
    for flag in ("--no-restart-ike-daemon", "--root-prefix", "--ipsec-conf", "--root-ipsec-conf",
                 "--ipsec-d", "--ipsec-secrets", "--ipsec-ctl"):  # fmt: skip
        assert len(re.findall(rf"ignoring {flag}:", log)) == 1, flag
    assert "--use-default-crypto" not in log

    os.kill(pid, signal.SIGABRT)  # a crash: the monitor starts a new daemon
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() not in ("", str(pid)),
             10, what="a new daemon")  # fmt: skip
    wait_for(lambda: appctl("ipsec/status") == "{}", 10, what="the new daemon to answer")
    appctl("exit", "--no-cleanup")  # the monitor ends with a daemon that exits on purpose
    wait_for(lambda: not ours_running(h1), 10, what="monitor and daemon gone")


def ours_running(host: Host) -> list[str]:
    """PIDs in the host's namespace whose command line names ovs-monitor-ipsec."""
    found = []
    for pid in host.run(["ip", "netns", "pids", host.ns]).stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if b"ovs-monitor-ipsec" in cmdline:
            found.append(pid)
    return found


def test_an_unknown_ike_daemon_is_refused_clearly() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "ovs-monitor-ipsec"), "--ike-daemon=racoon"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--ike-daemon=racoon is not supported" in result.stderr
    assert "strongswan" in result.stderr and "libreswan" in result.stderr
