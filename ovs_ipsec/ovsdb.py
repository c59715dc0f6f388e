"""Thin adapter over the OVS IDL: the few columns we read, as a plain `Snapshot`.

The IDL is given a schema holding only those columns, so it needs no schema file (whose location
differs between Debian's and PyPI's `ovs`), and ovsdb-server sends us nothing else: statistics
and status updates never wake the daemon.

May import: ovs.db.idl, model, stdlib.
"""

from __future__ import annotations

from typing import Any

import ovs.db.idl
import ovs.poller

from ovs_ipsec.model import InterfaceRow, Snapshot

_STRING_MAP = {"key": "string", "value": "string", "min": 0, "max": "unlimited"}
SCHEMA: dict[str, Any] = {
    "name": "Open_vSwitch",
    "version": "8.3.1",
    "tables": {
        "Open_vSwitch": {
            "columns": {"other_config": {"type": _STRING_MAP}},
            "isRoot": True,
            "maxRows": 1,
        },
        "Interface": {
            "columns": {
                "name": {"type": "string", "mutable": False},
                "type": {"type": "string"},
                "options": {"type": _STRING_MAP},
            },
            "indexes": [["name"]],
        },
    },
}


class Ovsdb:
    def __init__(self, remote: str) -> None:
        helper = ovs.db.idl.SchemaHelper(schema_json=SCHEMA)
        helper.register_columns("Interface", ["name", "type", "options"])
        helper.register_columns("Open_vSwitch", ["other_config"])
        # leader_only=False: a follower of a clustered database is as good for reading.
        self.idl = ovs.db.idl.Idl(remote, helper, leader_only=False)
        self.seen_seqno = 0

    def run(self) -> None:
        self.idl.run()

    def wait(self, poller: ovs.poller.Poller) -> None:
        self.idl.wait(poller)

    def close(self) -> None:
        self.idl.close()

    @property
    def ready(self) -> bool:
        """True once the first full contents arrived (before that, empty tables mean nothing)."""
        return self.idl.change_seqno > 0 and self.idl.has_ever_connected()

    @property
    def connected(self) -> bool:
        return bool(self.idl.is_connected())

    def changed(self) -> bool:
        return self.idl.change_seqno != self.seen_seqno

    def snapshot(self) -> Snapshot:
        self.seen_seqno = self.idl.change_seqno
        interfaces = tuple(
            InterfaceRow(name=row.name, type=row.type, options=dict(row.options))
            for row in self.idl.tables["Interface"].rows.values()
        )
        other_config: dict[str, str] = {}
        # One row by schema; with several (a broken database) the last wins, like upstream.
        for row in self.idl.tables["Open_vSwitch"].rows.values():
            other_config = dict(row.other_config)
        return Snapshot(interfaces=interfaces, other_config=other_config)
