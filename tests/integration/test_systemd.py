"""The systemd service: the unit verifies (with its watchdog, restart limits, reload and umask),
readiness (Type=notify) is reported on a real NOTIFY_SOCKET datagram socket only after the
first full reconcile, the watchdog is fed from the loop at the interval systemd gives, and
SIGHUP reloads instead of ending the daemon.

systemd is not PID 1 on the test machines (no systemd-run): the daemon runs as systemd would
start it, with NOTIFY_SOCKET and WATCHDOG_USEC in its environment, and the unit file is checked
with systemd-analyze."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ovs_ipsec.adapters.sdnotify import Watchdog, notify, watchdog_interval
from ovs_ipsec.tools.lab import Host, Lab, wait_for

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


def unit_settings() -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )  # fmt: skip


def test_unit_watchdog_restart_limits_reload_and_umask() -> None:
    """The unit has a watchdog; a crash loop never becomes a permanent stop (no start limit,
    a few seconds between starts); `systemctl reload` sends SIGHUP; files and the control
    socket are created under umask 0077 (the Debian unit is this one, with its paths)."""
    unit = unit_settings()
    assert int(unit["WatchdogSec"]) >= 10
    assert unit["StartLimitIntervalSec"] == "0"
    assert 1 <= int(unit["RestartSec"]) <= 10
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["UMask"] == "0077"
    rules = (ROOT / "debian" / "rules").read_text()
    assert "systemd/ovs-monitor-ipsec.service > $(PKG)/lib/systemd/system/" in rules
    assert "grep -q '^UMask=0077$$'" in rules


def test_watchdog_interval_is_half_of_systemds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC gives the interval; WATCHDOG_PID naming another process, or no value,
    means no watchdog; the pings go out at that interval on a real socket."""
    now = [0.0]
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.setblocking(False)
        watchdog = Watchdog(15.0, clock=lambda: now[0])
        for step in range(0, 61, 5):
            now[0] = float(step)
            watchdog.run()
        sent = []
        while True:
            try:
                sent.append(server.recv(100))
            except BlockingIOError:
                break
        assert sent == [b"WATCHDOG=1"] * 5  # at 0, 15, 30, 45, 60
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def start_as_systemd_would(host: Host, environment: list[str]) -> subprocess.Popen[bytes]:
    """The daemon in the foreground (no --detach), with systemd's variables."""
    argv = [arg for arg in host.daemon_argv() if arg != "--detach"]
    env_index = argv.index("env") + 1
    argv[env_index:env_index] = environment
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def datagrams(server: socket.socket, seconds: float) -> list[bytes]:
    got, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        server.settimeout(left)
        try:
            got.append(server.recv(4096))
        except TimeoutError:
            break
    return got


@pytest.mark.lab
def test_watchdog_is_fed_from_the_loop(make_lab: Callable[..., Lab]) -> None:
    """With WATCHDOG_USEC=1 s the daemon sends WATCHDOG=1 about every half second, although
    its loop has nothing else to do for 15 s (before: never); a stopped loop sends none, so
    systemd would restart it."""
    lab = make_lab(1, daemon=False)
    host = lab.hosts[0]
    path = os.path.join(host.dir, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        proc = start_as_systemd_would(host, [f"NOTIFY_SOCKET={path}", "WATCHDOG_USEC=1000000"])
        try:
            got = datagrams(server, 3.0)
            pings = got.count(b"WATCHDOG=1")
            assert any(d.startswith(b"READY=1") for d in got), got
            assert 4 <= pings <= 8, got
            proc.send_signal(signal.SIGSTOP)  # a loop stuck in a call
            datagrams(server, 0.2)  # one may have been in flight
            assert datagrams(server, 1.5) == []
            proc.send_signal(signal.SIGCONT)
            assert b"WATCHDOG=1" in datagrams(server, 1.5)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


@pytest.mark.lab
def test_sighup_reloads_and_the_daemon_runs_on(make_lab: Callable[..., Lab]) -> None:
    """SIGHUP (what `systemctl reload` and logrotate send) reopens the log file and re-reads
    the certificate files and charon; the daemon keeps running and serving (before: SIGHUP
    ended it with a status systemd counts as clean, so it stayed down). A log directory that
    went away costs a warning, not the daemon."""
    lab = make_lab(1)
    host = lab.hosts[0]
    pid = host.daemon_pid
    assert pid is not None
    rotated = host.daemon_log_path + ".1"
    os.rename(host.daemon_log_path, rotated)
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "SIGHUP: log file reopened" in host.daemon_log(), 5, what="new log")
    assert "SIGHUP" not in Path(rotated).read_text()
    assert host.daemon_pid == pid and host.appctl("ipsec/status") == "{}"

    os.kill(pid, signal.SIGHUP)
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)
    assert host.daemon_pid == pid and host.appctl("ipsec/status") == "{}"
    host.appctl("exit", "--no-cleanup")
    wait_for(lambda: host.daemon_pid is None, 5, what="the daemon to exit")


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
