"""Drop-in details (issue 16, sections 2 and 5) on the daemon over fakes: upstream's log lines,
words and levels, for the same events, beside ours; `exit` with an unknown argument. The same
lines against the real daemon and charon: tests/integration/test_upstream_dropin.py."""

from __future__ import annotations

import types
from typing import Any

import pytest
from fakes import World

from ovs_ipsec.core import naming
from ovs_ipsec.daemon import health
from ovs_ipsec.daemon.control import Control

PSK = "Zq9-dropin-psk"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every line the daemon's parts log, as (level, text)."""
    lines: list[tuple[str, str]] = []
    for level in ("dbg", "info", "warn", "err"):
        monkeypatch.setattr(
            health.vlog, level, lambda text, level=level: lines.append((level.upper(), text))
        )
    return lines


def test_upstream_lines_for_a_tunnel_that_appears_changes_goes_bad_and_disappears(
    logged: list[tuple[str, str]],
) -> None:
    world = World()
    world.ovsdb.set_row("u1", "t1", "gre", remote_ip="10.0.0.2", psk=PSK)
    world.settle()
    assert ("INFO", "Tunnel t1 appeared in OVSDB") in logged
    assert ("INFO", "Refreshing is done.") in logged

    del logged[:]
    world.ovsdb.set_row("u1", "t1", "gre", remote_ip="10.0.0.3", psk=PSK)
    world.settle()
    assert ("INFO", "Tunnel's 't1' configuration changed in OVSDB to 2") in logged
    assert world.daemon.config.versions == {"t1": 2}

    # A global change is a change of every tunnel's configuration, as upstream counts it.
    del logged[:]
    world.ovsdb.set_other_config(ipsec_skb_mark="1/1")
    world.settle()
    assert ("INFO", "Tunnel's 't1' configuration changed in OVSDB to 3") in logged

    del logged[:]
    world.ovsdb.set_row("u1", "t1", "gre", psk=PSK)  # no remote_ip
    world.settle()
    ours = [text for level, text in logged if "invalid IPsec configuration" in text]
    upstream = [(level, text) for level, text in logged if "contains invalid" in text]
    assert ours and upstream == [
        ("WARN", "t1 contains invalid configuration: remote_ip: is not set")
    ]

    del logged[:]
    world.ovsdb.delete_row("u1")
    world.settle()
    assert ("INFO", "Tunnel t1 disappeared from OVSDB") in logged
    assert world.daemon.config.versions == {}


def test_a_check_with_nothing_changed_is_not_a_refresh_the_command_is(
    logged: list[tuple[str, str]],
) -> None:
    """Upstream logs `Refreshing is done.` after a refresh, which runs on a change or on the
    `refresh` command; ours does too, and not at each periodic check."""
    world = World()
    world.ovsdb.set_row("u1", "t1", "gre", remote_ip="10.0.0.2", psk=PSK)
    world.settle()
    del logged[:]
    world.run_for(world.reconcile_interval * 3)
    assert ("INFO", "Refreshing is done.") not in logged
    # The `refresh` command is upstream's refresh(): it says so when done.
    world.daemon.request_refresh()
    world.settle()
    assert logged.count(("INFO", "Refreshing is done.")) == 1


def test_all_up_once_every_tunnel_is_up(logged: list[tuple[str, str]]) -> None:
    world = World()
    world.ovsdb.set_row("u1", "t1", "gre", remote_ip="10.0.0.2", psk=PSK)
    world.ovsdb.set_row("u2", "t2", "gre", remote_ip="10.0.0.3", psk=PSK)
    world.settle()
    assert world.events is not None
    world.events.emit("ike-updown", world.charon.establish(naming.conn_name("10.0.0.2"), 1))
    world.settle()
    assert not any("configured tunnels are Up" in text for _, text in logged)
    world.events.emit("ike-updown", world.charon.establish(naming.conn_name("10.0.0.3"), 2))
    world.settle()
    assert world.states() == {"t1": "up", "t2": "up"}
    assert logged.count(("INFO", "Connections for all(2) configured tunnels are Up.")) == 1


def test_upstreams_pki_warning_for_upstreams_invalid_combination(
    logged: list[tuple[str, str]],
) -> None:
    world = World()
    world.ovsdb.set_row("u1", "t1", "gre", remote_ip="10.0.0.2", psk=PSK)
    world.ovsdb.set_other_config(certificate="/etc/ovs/cert.pem")  # no private_key
    world.settle()
    warning = [text for level, text in logged if level == "WARN" and "cert and key" in text]
    assert warning == [
        "The cert and key configuration is not valid. The valid configuations are 1): "
        "certificate, private_key and ca_cert are not set; or 2): certificate and private_key "
        "are all set."
    ]


class Conn:
    def __init__(self) -> None:
        self.replies: list[tuple[str, Any]] = []

    def reply(self, text: Any) -> None:
        self.replies.append(("reply", text))

    def reply_error(self, text: Any) -> None:
        self.replies.append(("error", text))


def test_exit_with_an_unknown_argument_replies_as_upstream_and_keeps_running() -> None:
    daemon = types.SimpleNamespace(exiting=False, cleanup_on_exit=False)
    control = types.SimpleNamespace(daemon=daemon)
    conn = Conn()
    Control._exit(control, conn, ["--bogus"], None)  # type: ignore[arg-type]
    assert conn.replies == [("reply", "unrecognized parameter: --bogus")]
    assert daemon.exiting is False
    Control._exit(control, conn, ["--no-cleanup"], None)  # type: ignore[arg-type]
    assert daemon.exiting is True and daemon.cleanup_on_exit is False
