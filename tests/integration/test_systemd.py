"""The systemd service: the unit verifies, and readiness (Type=notify) is reported on a real
NOTIFY_SOCKET datagram socket only after the first full reconcile."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ovs_ipsec.adapters.sdnotify import notify
from ovs_ipsec.tools.lab import Lab, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "ovs-monitor-ipsec.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with ExecStart pointing at this checkout's
    launcher, since verify checks that the binary exists)."""
    text = UNIT.read_text().replace(
        "/usr/local/bin/ovs-monitor-ipsec", str(ROOT / "bin" / "ovs-monitor-ipsec")
    )
    unit = tmp_path / "ovs-monitor-ipsec.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [line for line in result.stderr.splitlines() if "ovs-monitor-ipsec" in line]
    assert result.returncode == 0 and not problems, result.stderr
    assert "Type=notify" in text and "Restart=on-failure" in text


def test_notify_without_socket_is_a_no_op() -> None:
    """Outside systemd there is nobody to tell and nothing fails."""
    assert notify("READY=1", environ={}) is False


def test_notify_reaches_abstract_and_path_sockets(tmp_path: Path) -> None:
    """Both forms of NOTIFY_SOCKET systemd uses get the datagram."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1"
    name = f"ovs-ipsec-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("STATUS=x", environ={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"STATUS=x"


@pytest.mark.lab
def test_ready_only_after_first_full_reconcile(make_lab: Callable[..., Lab]) -> None:
    """Started in the foreground as systemd would, the daemon sends READY=1 once, after the
    tunnel already in OVSDB is loaded into charon, with a STATUS line; STOPPING=1 on exit."""
    lab = make_lab(2, daemon=False)
    a, b = lab.hosts
    a.vsctl(
        "add-port",
        "br0",
        "t0",
        "--",
        "set",
        "interface",
        "t0",
        "type=gre",
        f"options:remote_ip={b.ipv4}",
        "options:psk=swordfish",
    )
    path = os.path.join(a.dir, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(15)
        argv = [arg for arg in a.daemon_argv() if arg != "--detach"]
        env_index = argv.index("env") + 1
        argv.insert(env_index, f"NOTIFY_SOCKET={path}")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            message = server.recv(4096).decode()
            with a.vici() as v:
                loaded = [c.decode() for c in v.get_conns()["conns"]]
            assert message.startswith("READY=1\nSTATUS=")
            assert "1 configured" in message and "charon reachable" in message
            assert f"ovs-{b.ipv4}" in loaded
            wait_for(lambda: os.path.exists(a.ctl_path), 10, what="control socket")
            a.appctl("exit", "--no-cleanup")
            assert server.recv(4096) == b"STOPPING=1"
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
