"""The control socket with the ovs library's real unixctl server, driven the way the daemon's
loop drives it (`Control.run()`), and real unix-socket clients speaking its JSON-RPC: the socket
is root's alone whatever the umask; every command in the table, the library's included, answers
a bad argument or its own failure with an error and the server serves on; requests and
connections are bounded. The real daemon's side is tests/integration/test_control_commands.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import ovs.unixctl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovs_ipsec.adapters import control_socket
from ovs_ipsec.adapters.control_socket import MAX_CONNECTIONS, MAX_REQUEST_BYTES
from ovs_ipsec.daemon.control import Control


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A Control on a socket in tmp_path, without a daemon (the commands used here need none);
    the library's process-wide command table is restored afterwards."""
    commands = dict(ovs.unixctl.commands)
    made = Control(cast(Any, None), str(tmp_path / "ctl"))
    made.register_commands()
    try:
        yield made
    finally:
        made.close()
        ovs.unixctl.commands.clear()
        ovs.unixctl.commands.update(commands)


def connect(control: Control) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(control.server._listener.bind_path)
    client.setblocking(False)
    return client


def ask(control: Control, method: str, params: list[Any]) -> dict[str, Any]:
    """One JSON-RPC request on a new connection, the server run until the reply is whole."""
    client = connect(control)
    try:
        client.sendall(json.dumps({"method": method, "params": params, "id": 7}).encode())
        reply = b""
        for _ in range(500):
            control.run()
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if not chunk:
                break
            reply += chunk
            try:
                return cast(dict[str, Any], json.loads(reply))
            except ValueError:
                continue
        raise AssertionError(f"no reply to {method} {params}: {reply!r}")
    finally:
        client.close()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_socket_is_root_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The socket's mode is 0600 (it followed the umask: 0777 under 000, 0755 under 022), and
    the process umask is left as it was."""
    previous = os.umask(umask)
    try:
        server = control_socket.create_server(str(tmp_path / "ctl"))
        assert os.umask(umask) == umask
    finally:
        os.umask(previous)
    try:
        mode = os.stat(tmp_path / "ctl").st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        server.close()


def test_every_command_is_guarded(control: Control) -> None:
    """After registration every command in the library's table, ours and the library's
    (help, version, set-options, vlog/*), is wrapped."""
    assert {"help", "version", "set-options", "exit", "vlog/set"} <= set(ovs.unixctl.commands)
    unguarded = [name for name, command in ovs.unixctl.commands.items()
                 if not getattr(command.callback, "guarded", False)]  # fmt: skip
    assert unguarded == []


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        # argparse: SystemExit(0) after printing its help, SystemExit(2) on a bad value.
        ("set-options", ["--help"], "usage:"),
        ("set-options", ["--format", "xml"], "invalid choice: 'xml'"),
        ("set-options", ["--bogus"], "unrecognized arguments: --bogus"),
        # The library's vlog/set raised IndexError here, and answered "success" to a bad spec.
        ("vlog/set", ["FACILITY"], "incomplete specification: FACILITY"),
        ("vlog/set", ["pattern"], "valid pattern"),
        ("vlog/set", ["nosuchmodule:dbg"], 'no destination, level, or module "nosuchmodule"'),
        ("vlog/set", ["FACILITY:nosuchfacility"], "Facility nosuchfacility is invalid"),
        ("version", ["x"], "takes at most 0 arguments"),
        ("nosuch/command", [], "is not a valid command"),
        ("help", [1], "takes at most 0 arguments"),
    ],
)
def test_bad_arguments_answer_an_error_and_the_server_serves_on(
    control: Control, method: str, params: list[Any], error: str
) -> None:
    reply = ask(control, method, params)
    assert reply["result"] is None and error in reply["error"], reply
    assert "Open vSwitch" in ask(control, "version", [])["result"]


def test_exit_with_an_unknown_argument_answers_as_upstream_and_serves_on(
    control: Control,
) -> None:
    """Upstream's reply, a normal one (issue 16), and the server serves on."""
    reply = ask(control, "exit", ["--bogus"])
    assert reply["error"] is None and reply["result"] == "unrecognized parameter: --bogus"
    assert "Open vSwitch" in ask(control, "version", [])["result"]


def test_a_raising_command_answers_an_error(control: Control) -> None:
    """Whatever a handler raises (here a bug, and an OSError like a failed vlog/reopen's),
    the client gets an error reply and the server serves on."""

    def broken(conn: Any, argv: list[str], aux: Any) -> None:
        raise KeyError("a bug")

    def no_file(conn: Any, argv: list[str], aux: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/gone/x.log")

    ovs.unixctl.command_register("test/broken", "", 0, 0, broken, None)
    ovs.unixctl.command_register("test/no-file", "", 0, 0, no_file, None)
    from ovs_ipsec.daemon.control import guard_every_command

    guard_every_command()
    assert ask(control, "test/broken", [])["error"] == "internal error: KeyError"
    assert ask(control, "test/no-file", [])["error"] == (
        "test/no-file failed: No such file or directory: /gone/x.log")  # fmt: skip
    assert "Open vSwitch" in ask(control, "version", [])["result"]


def test_a_request_without_end_is_cut_at_the_bound(control: Control) -> None:
    """A client streaming a request that never ends (an unterminated JSON string) is
    disconnected once it sent MAX_REQUEST_BYTES; what the server holds for it stays below that
    (before: it kept everything, 8 MiB here, and more for as long as the client sent)."""
    client = connect(control)
    client.sendall(b'{"method":"version","params":["')
    sent, closed = 0, False
    chunk = b"a" * 65536
    deadline = time.monotonic() + 10
    try:
        while sent < 8 * 1024 * 1024 and not closed and time.monotonic() < deadline:
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            control.run()
            held = [len(conn._rpc.input) for conn in control.server._conns]
            assert all(size <= MAX_REQUEST_BYTES for size in held), held
        assert closed and sent < 2 * MAX_REQUEST_BYTES + 2 * 1024 * 1024, sent
    finally:
        client.close()
    assert "Open vSwitch" in ask(control, "version", [])["result"]


def test_connections_are_bounded_and_idle_ones_time_out(
    control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_CONNECTIONS are open (before: every one was kept); one more is closed at
    once; a connection that sends no request within REQUEST_TIMEOUT loses its slot, so a
    command gets through again."""
    now = [1000.0]
    monkeypatch.setattr(control.server._listener, "_clock", lambda: now[0], raising=False)
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 8):
            idle.append(connect(control))
            control.run()
        assert len(control.server._conns) == MAX_CONNECTIONS
        assert control.server._listener.refused == 8
        # The refused ones see the end of the connection.
        for client in idle[MAX_CONNECTIONS:]:
            client.setblocking(True)
            client.settimeout(2)
            assert client.recv(10) == b""
        now[0] += control_socket.REQUEST_TIMEOUT + 1
        control.run()
        assert control.server._conns == []
        assert "Open vSwitch" in ask(control, "version", [])["result"]
    finally:
        for client in idle:
            client.close()


# No NUL and no lone surrogate: the library's JSON parser refuses them and closes the
# connection before any command (tests/integration/test_control_commands.py checks that the
# daemon serves on).
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
ARGUMENTS = st.lists(
    st.sampled_from(["--json", "--help", "-h", "--format", "json", "xml", "--no-cleanup", ""])
    | TEXT
    | JSON_VALUES,
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_fuzz_any_command_any_arguments_get_a_reply(control: Control, data: st.DataObject) -> None:
    """Any command in the table (vlog/set aside: its specs change this process's logging) or
    an unknown one, with any JSON arguments: a reply always comes (here without a daemon behind
    the Control, commands that need one answer "internal error"), and the server serves on."""
    names = sorted(name for name in ovs.unixctl.commands if name != "vlog/set")
    method = data.draw(st.sampled_from([*names, "no/such", ""]))
    params = data.draw(ARGUMENTS)
    reply = ask(control, method, params)
    assert reply["error"] is not None or reply["result"] is not None, reply
    assert "Open vSwitch" in ask(control, "version", [])["result"]
