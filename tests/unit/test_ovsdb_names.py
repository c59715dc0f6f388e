"""The OVSDB adapter's sharing of names in what ovsdb-server sends (`share_names`): the same
message, with one string object per column name, option name and port type."""

from __future__ import annotations

import copy
from typing import Any

import ovs.json

from ovs_ipsec.adapters.ovsdb import share_names

UUIDS = ("0f6c3a5e-7a8b-4c1d-9e2f-3a4b5c6d7e8f", "1f6c3a5e-7a8b-4c1d-9e2f-3a4b5c6d7e8f")


def update(i: int) -> str:
    return (
        f'{{"{UUIDS[i]}": {{"initial": {{"name": "t{i}", "type": "gre", "options": '
        f'["map", [["psk", "secret-{i}"], ["remote_ip", "10.0.0.{i}"]]], '
        f'"ofport": ["set", []]}}}}}}'
    )


def parsed() -> Any:
    # Parsed as the jsonrpc connection parses them: each string a new object.
    text = f'[null, "txn", {{"Interface": {{{update(0)[1:-1]}, {update(1)[1:-1]}}}}}]'
    return ovs.json.from_string(text)


def test_names_are_shared_and_the_message_is_unchanged() -> None:
    message = parsed()
    before = copy.deepcopy(message)
    shared = share_names(message)
    assert shared == before
    first, second = (shared[2]["Interface"][u]["initial"] for u in UUIDS)
    for column in ("name", "type", "options", "ofport"):
        (a,) = (k for k in first if k == column)
        (b,) = (k for k in second if k == column)
        assert a is b
    assert first["type"] is second["type"]
    assert all(x[0] is y[0] for x, y in zip(first["options"][1], second["options"][1], strict=True))
    # Values other than a type stay each its own: they are as many as the rows.
    assert first["options"][1][0][1] == "secret-0" and second["options"][1][0][1] == "secret-1"


def test_anything_else_passes_through() -> None:
    for value in (None, 1, "text", [], {}, ["set", ["a", "b"]], ["uuid", UUIDS[0]]):
        assert share_names(copy.deepcopy(value)) == value
