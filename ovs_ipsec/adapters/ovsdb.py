"""Thin adapter over the OVS IDL: the few columns we read, as a plain `Snapshot`.

The IDL is given a schema holding only those columns, so it needs no schema file (whose location
differs between Debian's and PyPI's `ovs`), and ovsdb-server sends us nothing else: statistics
and status updates never wake the daemon.

May import: ovs.db.idl, ovs.jsonrpc, ovs.poller, json_stream, model, stdlib.
"""

from __future__ import annotations

import errno
import sys
import types
from collections.abc import Mapping
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller

from ovs_ipsec.adapters import json_stream
from ovs_ipsec.core.model import InterfaceRow, OptionValue, PortStatus, RowId, Secret

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
                # Display only (tunnels/show's Ofport and CFM state, as upstream's): a change
                # of either alone is not a change of the tunnel (_TrackingIdl.notify).
                "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
                "cfm_fault": {"type": {"key": "boolean", "min": 0, "max": 1}},
            },
            "indexes": [["name"]],
        },
    },
}


def complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): does its sequence fit?
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)


class _Utf8BoundaryStream:
    """Hands the jsonrpc connection only whole UTF-8 characters.

    ovs.jsonrpc.Connection.recv (ovs 4.0.0) decodes each read with a fresh UTF-8 decoder, so a
    read that ends inside a multibyte character (any non-ASCII option value longer than a few KiB
    can do that) fails with EILSEQ and drops the OVSDB session. The tail is kept for the next
    read instead.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._tail = b""

    def recv(self, n: int) -> tuple[int, bytes | None]:
        error, data = self._stream.recv(n)
        if error or not data:
            if self._tail and not error:
                data, self._tail = self._tail, b""  # EOF: let the decoder see what is left
                return 0, data
            return error, data
        data = self._tail + data
        cut = complete_utf8(data)
        data, self._tail = data[:cut], data[cut:]
        return (0, data) if data else (errno.EAGAIN, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _is_uuid(text: str) -> bool:
    return len(text) == 36 and text[8:9] == "-"


def share_names(value: Any) -> Any:
    """`value` (a decoded JSON-RPC message part) with its names as one shared string each:
    object keys (table and column names, "initial", "modify", ...; row UUIDs excepted, each
    is seen once), the keys of OVSDB maps (`["map", [[key, value], ...]]`: option names) and
    the values of `type` (a port's type). ovs.json's pure-Python parser (PyPI's ovs has no C
    parser) makes a new string for every one of them in every row, and the IDL keeps them all
    in its copy of the row: five column names and the option names, about 0.4 KiB per row."""
    if isinstance(value, dict):
        return {
            (key if _is_uuid(key) else sys.intern(key)): (
                sys.intern(item) if key == "type" and isinstance(item, str) else share_names(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        if len(value) == 2 and value[0] == "map" and isinstance(value[1], list):
            for pair in value[1]:
                if isinstance(pair, list) and pair and isinstance(pair[0], str):
                    pair[0] = sys.intern(pair[0])
        else:
            for i, item in enumerate(value):
                if isinstance(item, (dict, list)):
                    value[i] = share_names(item)
    return value


_library_recv = ovs.jsonrpc.Connection.recv


def _recv_whole_characters(connection: Any) -> Any:
    if not isinstance(connection.stream, _Utf8BoundaryStream):
        connection.stream = _Utf8BoundaryStream(connection.stream)
    if connection.parser is None and json_stream.available():
        connection.parser = json_stream.StreamParser()  # the library's, at C speed
    error, msg = _library_recv(connection)
    if msg is not None:
        msg.params = share_names(msg.params)
        msg.result = share_names(msg.result)
    return error, msg


def receive_whole_utf8_characters() -> None:
    """Make every ovs.jsonrpc connection of this process read whole UTF-8 characters only
    (`_Utf8BoundaryStream`), its messages' names shared (`share_names`). It patches the
    library class, so it is process-wide: the entry point calls it once at start-up, before
    the first OVSDB connection. Calling it again is harmless."""
    ovs.jsonrpc.Connection.recv = _recv_whole_characters


_DISPLAY_ONLY = frozenset(("ofport", "cfm_fault"))


def _columns(updates: Any) -> set[str]:
    """The columns an update changed (the IDL's Row of old values holds only those)."""
    data = getattr(updates, "_data", None)
    return set(data) if data else {"?"}


# Pieces of rows kept shared, at most this many distinct ones of each kind (a port type, an
# option name): beyond it, a new one stays its row's own.
_MAX_SHARED = 512
_NO_CHANGES: Mapping[str, Any] = types.MappingProxyType({})


class _SharedPieces:
    """One object for each piece of the IDL's Interface rows that many rows hold equal and that
    the IDL never changes in place, instead of one per row: about 0.6 KiB of a row's 2 KiB.

    - The `type` Datum ("gre" in every row of a GRE mesh). The IDL replaces a Datum of one
      value by the update's, and changes in place only a Datum of a set or map, or an empty
      one (ovs.db.data.Datum.diff): those are never shared.
    - The option names' Atoms, keys of the row's own `options` map (a modify changes the map
      in place; Atoms are never changed).
    - The row's records of a transaction (`_changes`, `_mutations`, `_prereqs`), empty dicts
      that only a transaction fills, and this daemon never opens one: one read-only empty
      mapping for all, so that a transaction would fail at once rather than write into it.
    """

    def __init__(self) -> None:
        self._types: dict[Any, Any] = {}
        self._names: dict[Any, Any] = {}

    def share(self, row: Any) -> None:
        row_data = row._data
        row_type = row_data.get("type")  # dict.get: no default made for a missing column
        if row_type is not None and row_type.type.n_max == 1 and len(row_type.values) == 1:
            (value,) = row_type.values
            shared = self._types.get(value)
            if shared is None and len(self._types) < _MAX_SHARED:
                self._types[value] = shared = row_type
            if shared is not None:
                row_data["type"] = shared
        options = row_data.get("options")
        if options is not None and any(self._name(k) is not k for k in options.values):
            options.values = {self._name(k): v for k, v in options.values.items()}
        if row.__dict__["_changes"] is not _NO_CHANGES and not (
            row._changes or row._mutations or row._prereqs
        ):
            row.__dict__.update(_changes=_NO_CHANGES, _mutations=_NO_CHANGES, _prereqs=_NO_CHANGES)

    def _name(self, atom: Any) -> Any:
        shared = self._names.get(atom)
        if shared is None:
            if len(self._names) >= _MAX_SHARED:
                return atom
            self._names[atom] = shared = atom
        return shared


class _TrackingIdl(ovs.db.idl.Idl):
    """Remembers which rows changed, so a change costs in proportion to itself."""

    def __init__(self, remote: str, helper: ovs.db.idl.SchemaHelper) -> None:
        # leader_only=False: a follower of a clustered database is as good for reading.
        super().__init__(remote, helper, leader_only=False)
        self.changed_interfaces: set[Any] = set()
        self.other_config_changed = False
        self._shared = _SharedPieces()

    def _Idl__process_update2(self, table: Any, uuid: Any, row_update: Any) -> Any:
        # The IDL's own step for one row of an update2/update3 (ovs 3.1 to 4.0), wrapped so
        # that the row's pieces are shared as soon as it is built: what that frees is then
        # reused by the next row. Shared in `notify`, after the whole update, it left as many
        # holes in the heap as there were rows (about 2 MiB at N = 5,000).
        notice = super()._Idl__process_update2(table, uuid, row_update)  # type: ignore[misc]
        if notice and notice.event != ovs.db.idl.ROW_DELETE and table.name == "Interface":
            self._shared.share(notice.row)
        return notice

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if row._table.name == "Interface":
            # vswitchd sets ofport on every new port just after it is created: that update
            # (and a CFM fault's) would otherwise re-parse every port of a bulk add again.
            if event == ovs.db.idl.ROW_UPDATE and _DISPLAY_ONLY.issuperset(_columns(updates)):
                return
            self.changed_interfaces.add(row.uuid)
        else:
            self.other_config_changed = True


class Ovsdb:
    def __init__(self, remote: str) -> None:
        helper = ovs.db.idl.SchemaHelper(schema_json=SCHEMA)
        helper.register_columns("Interface", ["name", "type", "options", "ofport", "cfm_fault"])
        helper.register_columns("Open_vSwitch", ["other_config"])
        self.idl = _TrackingIdl(remote, helper)
        self.seen_seqno = 0
        self._was_connected = False
        # After a reconnect the IDL refills its tables without telling which rows went away.
        self.needs_full_read = True

    def run(self) -> None:
        self.idl.run()
        # MONITORING is reached again after every reconnect, once the contents are re-read.
        connected = self.idl.state == self.idl.IDL_S_MONITORING
        if connected and not self._was_connected:
            self.needs_full_read = True
        self._was_connected = connected

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
        # The IDL stays in MONITORING after the session drops, until it reconnects; only the
        # session knows (the IDL offers no public accessor for it in ovs 3.1 to 4.0).
        return self.idl.state == self.idl.IDL_S_MONITORING and self.idl._session.is_connected()

    def changed(self) -> bool:
        return self.idl.change_seqno != self.seen_seqno

    def changes(self) -> tuple[dict[RowId, InterfaceRow | None], dict[str, str] | None]:
        """Interface rows changed since the last call (uuid -> row, None when deleted) and the
        new other_config if it changed. After a reconnect: every row (`needs_full_read`)."""
        self.seen_seqno = self.idl.change_seqno
        table = self.idl.tables["Interface"].rows
        changed = self.idl.changed_interfaces
        self.idl.changed_interfaces = set()
        rows: dict[RowId, InterfaceRow | None] = {}
        for uuid in changed:
            row = table.get(uuid)
            rows[uuid] = None if row is None else _interface(row)
        other_config = None
        if self.idl.other_config_changed:
            self.idl.other_config_changed = False
            other_config = self.other_config()
        return rows, other_config

    def all_rows(self) -> dict[RowId, InterfaceRow]:
        self.seen_seqno = self.idl.change_seqno
        self.idl.changed_interfaces = set()
        self.idl.other_config_changed = False
        self.needs_full_read = False
        return {uuid: _interface(row) for uuid, row in self.idl.tables["Interface"].rows.items()}

    def row(self, uuid: RowId) -> InterfaceRow | None:
        """One Interface row as the IDL holds it now (None: gone); no change is taken."""
        row = self.idl.tables["Interface"].rows.get(uuid)
        return None if row is None else _interface(row)

    def port_status(self, row_ids: Mapping[str, RowId]) -> dict[str, PortStatus]:
        """Ofport and CFM fault of these ports (name -> row uuid), as the IDL holds them now."""
        table = self.idl.tables["Interface"].rows
        found = {}
        for name, uuid in row_ids.items():
            row = table.get(uuid)
            if row is not None:
                ofport, cfm_fault = row.ofport, row.cfm_fault
                found[name] = PortStatus(
                    ofport=ofport[0] if ofport and ofport[0] != -1 else None,
                    cfm_fault=cfm_fault[0] if cfm_fault else None,
                )
        return found

    def other_config(self) -> dict[str, str]:
        other_config: dict[str, str] = {}
        # One row by schema; with several (a broken database) the last wins, like upstream.
        for row in self.idl.tables["Open_vSwitch"].rows.values():
            other_config = dict(row.other_config)
        return other_config


def _interface(row: Any) -> InterfaceRow:
    options: dict[str, OptionValue] = dict(row.options)
    if "psk" in options:
        # Wrapped at once: from here on no repr, log line or traceback shows it.
        options["psk"] = Secret(str(options["psk"]))
    return InterfaceRow(name=row.name, type=row.type, options=options)
