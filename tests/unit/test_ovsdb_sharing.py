"""The OVSDB adapter's sharing of equal row pieces (`_SharedPieces`), pinned against the OVS
IDL it relies on: the IDL replaces, never changes in place, a Datum of one value, never changes
an Atom, and changes only the row's own `options` map; so a change or deletion of one row never
shows in another that shares its pieces. Updates are fed to the real IDL as ovsdb-server sends
them (monitor_cond's update2); tests/integration/test_ovsdb_adapter.py does it with a server."""

from __future__ import annotations

from typing import Any

import ovs.db.idl
import pytest

from ovs_ipsec.adapters.ovsdb import SCHEMA, Ovsdb, _interface
from ovs_ipsec.core.model import Secret

UUIDS = ("0f6c3a5e-7a8b-4c1d-9e2f-3a4b5c6d7e8f", "1f6c3a5e-7a8b-4c1d-9e2f-3a4b5c6d7e8f")


@pytest.fixture
def ovsdb() -> Any:
    db = Ovsdb("unix:/nonexistent/db.sock")  # never connected: updates are fed by hand
    yield db
    db.close()


def feed(db: Ovsdb, rows: dict[str, Any]) -> None:
    """One update2 notification for the Interface table, as the IDL's session delivers it."""
    db.idl._Idl__parse_update({"Interface": rows}, ovs.db.idl.OVSDB_UPDATE2)  # type: ignore[attr-defined]


def row(db: Ovsdb, i: int) -> Any:
    return next(r for u, r in db.idl.tables["Interface"].rows.items() if str(u) == UUIDS[i])


def read(db: Ovsdb, i: int) -> tuple[str, str, dict[str, Any]]:
    got = _interface(row(db, i))
    shown = {k: v.reveal() if isinstance(v, Secret) else v for k, v in got.options.items()}
    return got.name, got.type, shown


def insert(i: int, remote_ip: str) -> dict[str, Any]:
    options = ["map", [["psk", f"secret-{i}"], ["remote_ip", remote_ip]]]
    return {UUIDS[i]: {"insert": {"name": f"t{i}", "type": "gre", "options": options}}}


def test_rows_share_their_equal_pieces(ovsdb: Ovsdb) -> None:
    feed(ovsdb, {**insert(0, "10.0.0.1"), **insert(1, "10.0.0.2")})
    a, b = row(ovsdb, 0), row(ovsdb, 1)
    assert a._data["type"] is b._data["type"]
    keys_a = {k.value: k for k in a._data["options"].values}
    keys_b = {k.value: k for k in b._data["options"].values}
    assert all(keys_a[name] is keys_b[name] for name in ("psk", "remote_ip"))
    assert a._data["options"] is not b._data["options"]  # the map stays each row's own
    assert a._changes is b._changes and a._mutations is b._mutations
    assert a._prereqs is b._prereqs and not a._changes
    assert read(ovsdb, 0) == ("t0", "gre", {"psk": "secret-0", "remote_ip": "10.0.0.1"})
    assert read(ovsdb, 1) == ("t1", "gre", {"psk": "secret-1", "remote_ip": "10.0.0.2"})


def test_a_change_or_deletion_of_one_row_leaves_the_others_alone(ovsdb: Ovsdb) -> None:
    feed(ovsdb, {**insert(0, "10.0.0.1"), **insert(1, "10.0.0.2")})
    # update2's modify carries the new value of a scalar and, for a map, the pairs to add,
    # change or remove: the IDL applies it to row 0's Datums (ovs.db.data.Datum.diff).
    diff = ["map", [["psk", "secret-0"], ["remote_ip", "10.9.9.9"], ["dst_port", "4790"]]]
    feed(ovsdb, {UUIDS[0]: {"modify": {"type": "vxlan", "options": diff}}})
    assert read(ovsdb, 0) == ("t0", "vxlan", {"remote_ip": "10.9.9.9", "dst_port": "4790"})
    assert read(ovsdb, 1) == ("t1", "gre", {"psk": "secret-1", "remote_ip": "10.0.0.2"})

    feed(ovsdb, {UUIDS[1]: {"modify": {"options": ["map", [["remote_ip", "10.0.0.3"]]]}}})
    feed(ovsdb, {UUIDS[0]: {"modify": {"type": "gre"}}})
    assert read(ovsdb, 0) == ("t0", "gre", {"remote_ip": "10.9.9.9", "dst_port": "4790"})
    assert read(ovsdb, 1) == ("t1", "gre", {"psk": "secret-1", "remote_ip": "10.0.0.3"})
    assert row(ovsdb, 0)._data["type"] is row(ovsdb, 1)._data["type"]

    feed(ovsdb, {UUIDS[0]: {"delete": None}})
    assert read(ovsdb, 1) == ("t1", "gre", {"psk": "secret-1", "remote_ip": "10.0.0.3"})
    changed, _ = ovsdb.changes()
    assert set(map(str, changed)) == set(UUIDS)


def test_a_transaction_would_fail_rather_than_write_into_every_row(ovsdb: Ovsdb) -> None:
    """The daemon never writes through the IDL; if it ever did, the shared empty records of a
    transaction would refuse the write instead of taking it for every row."""
    feed(ovsdb, insert(0, "10.0.0.1"))
    with pytest.raises(TypeError):
        row(ovsdb, 0)._changes["type"] = None


def test_the_schema_is_what_the_sharing_assumes() -> None:
    # `type` holds one string (a Datum of one value, replaced by each update); `options` a map.
    columns = SCHEMA["tables"]["Interface"]["columns"]
    assert columns["type"]["type"] == "string"
    assert columns["options"]["type"]["max"] == "unlimited"
