"""The OVSDB adapter (adapters/ovsdb.py) against a real ovsdb-server: the first contents, row
changes and deletions one by one, other_config, a server restart read again whole, and option
values whose UTF-8 characters straddle the IDL's reads. The Daemon's unit tests use a fake of
this adapter (tests/unit/fakes.py); this is what that fake stands for."""

from __future__ import annotations

import time
from collections.abc import Callable

import ovs.poller
import pytest

from ovs_ipsec.adapters.ovsdb import Ovsdb, receive_whole_utf8_characters
from ovs_ipsec.core.model import InterfaceRow, PortStatus, Secret
from ovs_ipsec.tools.lab import Host, Lab

pytestmark = pytest.mark.lab


def turn_until(ovsdb: Ovsdb, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the IDL the way the daemon's loop does (run, wait, block) until `done()`."""
    deadline = time.monotonic() + timeout
    while True:
        ovsdb.run()
        if done():
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the IDL")
        poller = ovs.poller.Poller()
        ovsdb.wait(poller)
        poller.timer_wait(100)
        poller.block()


def turn_for(ovsdb: Ovsdb, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    turn_until(ovsdb, lambda: time.monotonic() > deadline, timeout=seconds + 5)


def add_port(host: Host, name: str, **options: str) -> None:
    settings = [f"options:{key}={value}" for key, value in options.items()]
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, "type=gre", *settings)


def by_name(rows: dict[object, InterfaceRow | None]) -> dict[str, InterfaceRow]:
    return {row.name: row for row in rows.values() if row is not None}


def test_contents_changes_and_deletions(make_lab: Callable[..., Lab]) -> None:
    host = make_lab(1, daemon=False).hosts[0]
    add_port(host, "t0", remote_ip="10.1.0.2", psk="swordfish")
    ovsdb = Ovsdb(host.db)
    try:
        assert not ovsdb.ready
        turn_until(ovsdb, lambda: ovsdb.ready)
        assert ovsdb.connected and ovsdb.needs_full_read
        rows = ovsdb.all_rows()
        assert not ovsdb.needs_full_read and not ovsdb.changed()
        first = by_name(rows)  # type: ignore[arg-type]
        # The PSK is a Secret from the adapter on: no repr of a row shows it (issue 15, 16).
        assert first["t0"] == InterfaceRow(
            "t0", "gre", {"remote_ip": "10.1.0.2", "psk": Secret("swordfish")}
        )
        assert "swordfish" not in repr(rows) and "swordfish" not in str(first)
        (t0_uuid,) = (uuid for uuid, row in rows.items() if row.name == "t0")

        # One new row: only it is reported.
        add_port(host, "t1", remote_ip="10.1.0.3")
        turn_until(ovsdb, ovsdb.changed)
        changed, other_config = ovsdb.changes()
        assert list(by_name(changed)) == ["t1"] and other_config is None
        assert not ovsdb.changed()
        (t1_uuid,) = changed
        t1 = InterfaceRow("t1", "gre", {"remote_ip": "10.1.0.3"})
        # Rows share their equal pieces (`_SharedPieces`): changing t0 must leave t1 alone.
        idl_rows = ovsdb.idl.tables["Interface"].rows
        assert idl_rows[t0_uuid]._data["type"] is idl_rows[t1_uuid]._data["type"]
        host.vsctl("set", "interface", "t0", "type=vxlan", "options:remote_ip=10.1.0.9")
        turn_until(ovsdb, ovsdb.changed)
        changed, _ = ovsdb.changes()
        assert changed == {
            t0_uuid: InterfaceRow(
                "t0", "vxlan", {"remote_ip": "10.1.0.9", "psk": Secret("swordfish")}
            )
        }
        assert ovsdb.row(t1_uuid) == t1
        host.vsctl("set", "interface", "t0", "type=gre", "options:remote_ip=10.1.0.2")
        turn_until(ovsdb, ovsdb.changed)
        ovsdb.changes()

        # A changed option, then a deletion (None for the row that went).
        host.vsctl("set", "interface", "t0", "options:psk=other")
        turn_until(ovsdb, ovsdb.changed)
        changed, _ = ovsdb.changes()
        assert changed == {
            t0_uuid: InterfaceRow("t0", "gre", {"remote_ip": "10.1.0.2", "psk": Secret("other")})
        }
        host.vsctl("del-port", "br0", "t0")
        turn_until(ovsdb, ovsdb.changed)
        changed, _ = ovsdb.changes()
        assert changed == {t0_uuid: None}
        assert ovsdb.row(t1_uuid) == t1

        # other_config comes alone, and whole.
        host.vsctl("set", "Open_vSwitch", ".", "other_config:ipsec_skb_mark=0/1")
        turn_until(ovsdb, ovsdb.changed)
        changed, other_config = ovsdb.changes()
        assert changed == {} and other_config == {"ipsec_skb_mark": "0/1"}
        assert ovsdb.other_config() == {"ipsec_skb_mark": "0/1"}
    finally:
        ovsdb.close()


def test_a_server_restart_is_read_again_whole(make_lab: Callable[..., Lab]) -> None:
    host = make_lab(1, daemon=False).hosts[0]
    add_port(host, "t0", remote_ip="10.1.0.2", psk="swordfish")
    ovsdb = Ovsdb(host.db)
    try:
        turn_until(ovsdb, lambda: ovsdb.ready)
        ovsdb.all_rows()
        host.stop_ovsdb()
        turn_for(ovsdb, 0.5)
        assert ovsdb.ready  # what was read stays meaningful while the server is away
        host.start_ovsdb()
        host.vsctl("del-port", "br0", "t0")
        add_port(host, "t2", remote_ip="10.1.0.4", psk="fish")
        turn_until(ovsdb, lambda: ovsdb.connected and ovsdb.needs_full_read)
        # The IDL refilled its tables without naming what went: the daemon reads them whole.
        names = {row.name for row in ovsdb.all_rows().values()}
        assert "t0" not in names and "t2" in names
    finally:
        ovsdb.close()


def test_connected_turns_false_while_the_server_is_down(make_lab: Callable[..., Lab]) -> None:
    host = make_lab(1, daemon=False).hosts[0]
    ovsdb = Ovsdb(host.db)
    try:
        turn_until(ovsdb, lambda: ovsdb.ready)
        host.stop_ovsdb()
        turn_until(ovsdb, lambda: not ovsdb.connected, timeout=3.0)
    finally:
        ovsdb.close()


def test_long_non_ascii_options_arrive_whole(make_lab: Callable[..., Lab]) -> None:
    """Without receive_whole_utf8_characters, a read ending inside a multibyte character would
    drop the session (ovs 4.0's jsonrpc decodes each read on its own)."""
    receive_whole_utf8_characters()
    host = make_lab(1, daemon=False).hosts[0]
    value = "é€😀" * 9000  # 2-, 3- and 4-byte characters, 81 KiB: many reads
    add_port(host, "t0", remote_ip="10.1.0.2", psk="swordfish")
    host.vsctl("set", "interface", "t0", f'options:remote_name="{value}"')
    ovsdb = Ovsdb(host.db)
    try:
        turn_until(ovsdb, lambda: ovsdb.ready)
        rows = by_name(ovsdb.all_rows())  # type: ignore[arg-type]
        assert rows["t0"].options["remote_name"] == value
        assert ovsdb.connected
    finally:
        ovsdb.close()


def test_ofport_and_cfm_are_read_but_are_no_change_of_the_row(make_lab: Callable[..., Lab]) -> None:
    """Ofport and cfm_fault (upstream's `Ofport` and `CFM state`, display only) are read from
    the server; an update of only those wakes the IDL but reports no changed row (vswitchd
    sets ofport on every new port just after creating it), while a change of options still
    does."""
    host = make_lab(1, daemon=False).hosts[0]
    add_port(host, "t0", remote_ip="10.1.0.2", psk="swordfish")
    ovsdb = Ovsdb(host.db)
    try:
        turn_until(ovsdb, lambda: ovsdb.ready)
        (uuid,) = (uuid for uuid, row in ovsdb.all_rows().items() if row.name == "t0")
        assert ovsdb.port_status({"t0": uuid}) == {"t0": PortStatus(None, None)}

        op = ('["Open_vSwitch", {"op": "update", "table": "Interface", "where": '
              '[["name", "==", "t0"]], "row": {"ofport": 5, "cfm_fault": false}}]')  # fmt: skip
        host.run(["ovsdb-client", "transact", host.db, op])
        turn_until(ovsdb, lambda: ovsdb.port_status({"t0": uuid})["t0"].ofport == 5)
        assert ovsdb.port_status({"t0": uuid}) == {"t0": PortStatus(5, False)}
        changed, other_config = ovsdb.changes()
        assert changed == {} and other_config is None

        host.vsctl("set", "interface", "t0", "options:remote_ip=10.1.0.3", "ofport=-1")
        turn_until(ovsdb, lambda: ovsdb.port_status({"t0": uuid})["t0"].ofport is None)
        changed, _ = ovsdb.changes()
        assert list(by_name(changed)) == ["t0"]  # type: ignore[arg-type]
    finally:
        ovsdb.close()
