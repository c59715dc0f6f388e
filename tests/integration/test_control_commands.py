"""Every control command of the real daemon, its own and the ovs library's (as `list-commands`
reports them), driven with malformed arguments over its real control socket: each answers an
error, and the daemon keeps running and serving. Also against the real daemon: the socket is
root's alone, a failed `vlog/reopen` is an error, and a request without end or a flood of
connections costs a bounded amount of memory and descriptors."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovs_ipsec.adapters.control_socket import MAX_CONNECTIONS
from ovs_ipsec.tools.lab import Host, Lab

pytestmark = pytest.mark.lab

MALFORMED: list[list[Any]] = [
    ["--bogus"],
    ["--help"],
    ["-h"],
    ["x" * 10_000],
    ["\x01\n\u2028\x7f"],
    ["a"] * 20,
    [1],
    [None],
    [["nested"]],
]
# Arguments that are malformed for one command only (its own parser or grammar).
MALFORMED_FOR = {
    "set-options": [["--format", "xml"], ["--format"], ["--format", "json", "x"]],
    "vlog/set": [["FACILITY"], ["FACILITY:nosuch"], ["pattern"], ["pattern:nosuch"],
                 ["nosuchmodule:dbg"], ["file:file"], ["dbg:info"]],
    "exit": [["--cleanup"], ["--no-cleanup", "x"]],
    "tunnels/show": [["--json", "--json"], ["--JSON"]],
}  # fmt: skip


def request(host: Host, method: str, params: Any, timeout: float = 5) -> dict[str, Any]:
    """One raw JSON-RPC request on its own connection (params may be anything JSON allows,
    which ovs-appctl never sends); the reply, or AssertionError when none comes in time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(host.ctl_path)
        client.sendall(json.dumps({"method": method, "params": params, "id": 1}).encode())
        reply = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                raise AssertionError(f"{method} {params!r}: connection closed: {reply!r}")
            reply += chunk
            try:
                return dict(json.loads(reply))
            except ValueError:
                continue


def serving(host: Host, pid: int) -> bool:
    return host.daemon_pid == pid and "Open vSwitch" in request(host, "version", [])["result"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_every_command_answers_malformed_arguments_with_an_error(
    make_lab: Callable[..., Lab],
) -> None:
    """For each command list-commands names, and each malformed argument list (unknown flags,
    --help, long, control characters, too many, not strings, and each command's own bad
    values: `set-options --format xml`, `vlog/set FACILITY`, ...): an error reply (`exit` with
    one string it does not know: upstream's normal reply), and the same daemon still answers.
    Before: `set-options --help` ended the daemon with status 0, `--format xml` with status 2,
    `vlog/set FACILITY` crashed it."""
    host = make_lab(1)[1]
    pid = host.daemon_pid
    assert pid is not None
    listing = request(host, "list-commands", [])["result"]
    commands = sorted(line.split()[0] for line in listing.splitlines()[1:])
    library = {"help", "version", "set-options", "vlog/set", "vlog/list", "vlog/reopen",
               "vlog/close"}  # fmt: skip
    assert library | {"exit", "refresh", "tunnels/show", "memory/show"} <= set(commands)
    answered = 0
    for command in commands:
        for params in MALFORMED + MALFORMED_FOR.get(command, []):
            reply = request(host, command, params)
            if command == "exit" and reply["result"] is not None:
                # Upstream's reply to an argument it does not know: a normal one (issue 16).
                assert reply["result"].startswith("unrecognized parameter: "), (params, reply)
            else:
                assert reply["error"] and reply["result"] is None, (command, params, reply)
            answered += 1
        assert serving(host, pid), command
    assert answered >= len(commands) * len(MALFORMED)
    # A NUL or a lone surrogate the library's JSON parser refuses: that connection is closed,
    # nothing else.
    for refused in ("\x00", "\ud800"):
        with pytest.raises(AssertionError, match="connection closed"):
            request(host, "exit", [refused])
        assert serving(host, pid)
    assert "Traceback" not in host.daemon_log()
    request(host, "exit", ["--no-cleanup"])


def test_socket_mode_and_a_failed_vlog_reopen(make_lab: Callable[..., Lab]) -> None:
    """The control socket is 0600 (it was 0755 under the usual umask 022); `vlog/reopen` with
    the log directory gone answers an error naming the cause (before: FileNotFoundError
    ended the daemon), and works again once the directory is back."""
    lab = make_lab(1, daemon=False)
    host = lab.hosts[0]
    logs = Path(host.dir, "logs")
    logs.mkdir()
    previous = os.umask(0o022)
    try:
        host.start_daemon(f"--log-file={logs}/ovs-monitor-ipsec.log")
    finally:
        os.umask(previous)
    pid = host.daemon_pid
    assert pid is not None
    assert stat.S_IMODE(os.stat(host.ctl_path).st_mode) == 0o600
    moved = Path(host.dir, "logs.moved")
    logs.rename(moved)
    reply = request(host, "vlog/reopen", [])
    assert "No such file or directory" in reply["error"], reply
    assert serving(host, pid)
    moved.rename(logs)
    assert request(host, "vlog/reopen", []) == {"error": None, "id": 1, "result": ""}
    assert serving(host, pid)


def test_a_request_without_end_and_a_connection_flood_are_bounded(
    make_lab: Callable[..., Lab],
) -> None:
    """A client streaming 16 MiB of a request that never ends is cut off and the daemon's
    memory barely moves (before: it kept all of it); 200 connections at once leave at most
    MAX_CONNECTIONS open in the daemon (before: all 200), and once they close, commands are
    served again."""
    host = make_lab(1)[1]
    pid = host.daemon_pid
    assert pid is not None
    before = rss_kib(pid)
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(host.ctl_path)
        client.sendall(b'{"method":"version","params":["')
        chunk = b"a" * 65536
        try:
            while sent < 16 * 1024 * 1024:
                sent += client.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    grown = rss_kib(pid) - before
    print(f"unterminated request: {sent} bytes accepted, RSS +{grown} KiB")
    assert sent < 4 * 1024 * 1024 and grown < 4096, (sent, grown)
    assert serving(host, pid)

    fds = len(os.listdir(f"/proc/{pid}/fd"))
    flood = []
    try:
        for _ in range(200):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            flood.append(client)
            client.settimeout(5)
            for _ in range(100):  # the listen backlog fills faster than the daemon accepts
                try:
                    client.connect(host.ctl_path)
                    break
                except BlockingIOError:
                    time.sleep(0.01)
        time.sleep(0.5)
        opened = len(os.listdir(f"/proc/{pid}/fd")) - fds
        print(f"200 connections: {opened} descriptors more in the daemon")
        assert opened <= MAX_CONNECTIONS, opened
    finally:
        for client in flood:
            client.close()
    time.sleep(0.5)
    assert serving(host, pid)


SEED = int(os.environ.get("OVS_IPSEC_FUZZ_SEED", "6"))
WORDS = ["--json", "--help", "-h", "--format", "json", "text", "xml", "--no-cleanup", "", "any",
         "dbg", "file", "FACILITY", "pattern", "jsonrpc", "x" * 3000, "\x01\x7f", "é\u2028",
         "-", "--", "=", ":"]  # fmt: skip


def random_argument(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(WORDS)
    if roll < 0.8:
        return ":".join(rng.choice(WORDS[:15]) for _ in range(rng.randint(1, 3)))
    return rng.choice([0, -1, 2**70, 1.5, True, None, [], {}, ["x"], {"a": "b"}])


def test_fuzz_the_real_daemons_commands(make_lab: Callable[..., Lab]) -> None:
    """Seeded (OVS_IPSEC_FUZZ_SEED): 400 requests to the real daemon, each a command from its
    table (or an unknown one) with random arguments, vlog/set's and set-options' grammar
    included; `exit` and `vlog/close` only with arguments (so never valid): every request gets
    a reply, and the same daemon serves on, with no traceback in its log."""
    host = make_lab(1)[1]
    pid = host.daemon_pid
    assert pid is not None
    listing = request(host, "list-commands", [])["result"]
    commands = [line.split()[0] for line in listing.splitlines()[1:]] + ["no/such"]
    rng = random.Random(SEED)
    for round_ in range(400):
        command = rng.choice(commands)
        params = [random_argument(rng) for _ in range(rng.randint(0, 4))]
        if command in ("exit", "vlog/close", "vlog/reopen", "refresh") and not params:
            params = ["--bogus"]
        reply = request(host, command, params)
        assert reply["error"] is not None or reply["result"] is not None, (command, params)
        if round_ % 50 == 0:
            assert serving(host, pid), (round_, command, params)
    assert serving(host, pid)
    assert "Traceback" not in host.daemon_log()
    request(host, "vlog/set", ["ANY:ANY:info"])
    request(host, "exit", ["--no-cleanup"])
