"""What the daemon logs, against the real daemon, a real ovsdb-server and the real ovs-appctl
in a namespace host: no secret whatever `vlog/set` asks and a log file others cannot read
(issue 15, item 1); names and keys that can neither forge nor flood a line (item 18)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ovs_ipsec.tools import pki_builders
from ovs_ipsec.tools.lab import Lab, wait_for

pytestmark = pytest.mark.lab

# Every way to lift a level, the library's own modules named one by one.
LEVEL_CHANGES = ("dbg", "jsonrpc:file:dbg", "any:any:dbg", "idl:dbg", "reconnect:dbg",
                 "jsonrpc:dbg", "stream:dbg", "poller:info")  # fmt: skip


def others_may_read(path: str) -> bool:
    return bool(stat.S_IMODE(os.stat(path).st_mode) & 0o007)


def test_no_secret_in_the_log_at_debug_level_and_the_file_is_private(
    make_lab: Callable[..., Lab],
) -> None:
    (host,) = make_lab(1).hosts
    log_path = host.daemon_log_path
    assert not others_may_read(log_path), oct(os.stat(log_path).st_mode)
    # Its memory holds the secrets: no core file either (issue 15, item 16).
    limits = Path(f"/proc/{host.daemon_pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.MULTILINE), limits
    for spec in LEVEL_CHANGES:
        assert host.appctl("vlog/set", spec) == ""
    levels = {line.split()[0]: line.split()[1:] for line in host.appctl("vlog/list").splitlines()}
    assert levels["jsonrpc"] == ["dbg", "dbg", "dbg"]

    psk, changed_psk = "swordfish-Zq9-log", "Marlin-Zq9-changed"
    key = pki_builders.make_self_signed("h1").key_pem.decode()
    key_lines = [line for line in key.splitlines() if len(line) >= 16 and "-----" not in line]
    host.vsctl(
        "add-port", "br0", "p0", "--", "set", "interface", "p0", "type=gre",
        "options:remote_ip=10.77.0.9", f"options:psk={psk}",
    )  # fmt: skip
    host.vsctl("set", "interface", "p0", f"options:psk={changed_psk}")  # a modify: a diff
    # An operator pasting the key itself instead of its path: a warning quotes the value.
    escaped = key.replace("\n", "\\n")
    host.vsctl("set", "Open_vSwitch", ".", f'other_config:private_key="{escaped}"')
    wait_for(
        lambda: "must be an absolute path" in host.daemon_log(),
        10,
        what="the warning about the pasted key",
    )

    log = host.daemon_log()
    # The library did log the OVSDB updates whole, psk and all, with the value redacted.
    assert "received notification" in log
    assert '["psk","<redacted>"]' in log
    texts = [log, Path(host.dir, "ovs-monitor-ipsec.stdout").read_text(errors="replace")]
    for secret in (psk, changed_psk, *key_lines):
        assert not [t for t in texts if secret in t], secret

    # A rotated log: vlog/reopen creates the new file, not for others either.
    os.rename(log_path, log_path + ".1")
    assert host.appctl("vlog/reopen") == ""
    host.appctl("refresh")
    wait_for(lambda: os.path.exists(log_path), 5, what="the reopened log")
    assert not others_may_read(log_path), oct(os.stat(log_path).st_mode)

    # A log file an older version left readable by all is tightened at the next start.
    host.stop_daemon()
    os.chmod(log_path, 0o644)
    host.start_daemon()
    assert not others_may_read(log_path), oct(os.stat(log_path).st_mode)


def test_names_and_keys_can_neither_forge_nor_flood_log_lines(make_lab: Callable[..., Lab]) -> None:
    """Interface names and option keys are the OVSDB writer's choice: a newline in one would
    start a line of its own, and a huge one would fill the log (issue 15, item 18)."""
    (host,) = make_lab(1).hosts
    forged = "2026-01-01T00:00:00.000Z|00001|ovs-monitor-ipsec|ERR|FORGED-NAME"
    for name, option in (
        (f"p0\n{forged}", r'options:"ipsec_ikev2\nFORGED-KEY"=yes'),
        ("L" * 5000, f'options:"ipsec_{"K" * 5000}"=yes'),
    ):
        host.vsctl(
            "add-port", "br0", name, "--", "set", "interface", name, "type=gre",
            "options:remote_ip=10.77.0.9", "options:psk=swordfish", option,
        )  # fmt: skip
    wait_for(
        lambda: host.daemon_log().count("invalid IPsec configuration") >= 2,
        10,
        what="both ports reported invalid",
    )
    lines = host.daemon_log().splitlines()
    assert not [line for line in lines if line.startswith(("2026-01-01", "FORGED"))]
    warnings = [line for line in lines if "invalid IPsec configuration" in line]
    assert any("p0\\x0a2026-01-01" in line and "ipsec_ikev2\\x0aFORGED-KEY" in line
               for line in warnings)  # fmt: skip
    assert not [line for line in lines if "L" * 65 in line or "K" * 65 in line]
    assert max(len(line) for line in warnings) < 1000
