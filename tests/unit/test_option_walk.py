"""A walk of one option, `options:dst_port`, from the OVSDB row to the VICI message charon gets
and the XFRM message the kernel gets: it is read once (core.parse.dst_port_of), carried as a
typed value through the core (model.Tunnel, the connection, the block policy), and written once
by each adapter (the VICI message, the netlink selector). Nothing downstream reads the row again
or falls back to a default of its own.

The adapters' halves against the real components: tests/integration/test_ovsdb_adapter.py (rows
as OVSDB holds them), test_charon_pipeline.py (load-conn into charon), test_xfrm_kernel.py
(policies into the kernel)."""

from __future__ import annotations

import ast
import datetime as dt
import pathlib
import struct
from collections.abc import Iterable, Mapping

import vici.protocol
from fakes import unread_row

from ovs_ipsec.adapters.charon import load_conn_request
from ovs_ipsec.adapters.xfrm import netlink
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.model import IPPROTO_UDP, InterfaceRow

NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "ovs_ipsec"


def no_files(paths: Iterable[str]) -> Mapping[str, bytes | str]:
    return {path: f"cannot read {path}: No such file or directory" for path in paths}


def plan_one(options: dict[str, str]) -> Planner:
    planner = Planner(no_files, unread_row)
    row = InterfaceRow(name="gnv1", type="geneve", options=options)
    planner.update({"uuid-1": row}, {}, NOW)
    return planner


def test_dst_port_walks_from_the_row_to_charon_and_the_kernel() -> None:
    planner = plan_one({"remote_ip": "10.0.0.2", "psk": "swordfish", "dst_port": "4790"})

    # core.parse: read once, typed.
    tunnel = planner.config.tunnels["gnv1"]
    assert tunnel.dst_port == 4790

    # core.connections -> adapters.charon: the selector of the VICI message charon loads.
    (conn,) = planner.desired.conns.values()
    command, payload = load_conn_request(conn)
    assert command == "load-conn"
    message = vici.protocol.Message.deserialize(vici.protocol.FiniteStream(payload))
    children = next(iter(message.values()))["children"]
    selectors = {
        ts
        for child in children.values()
        for key in ("local_ts", "remote_ts")
        for ts in child.get(key, [])
    }
    assert f"dynamic[{IPPROTO_UDP}/4790]".encode() in selectors
    assert not any(b"6081" in ts for ts in selectors)

    # core.block_policies -> adapters.xfrm.netlink: the fail-closed block and its selector.
    blocks = [spec for spec in planner.policies if spec.proto == IPPROTO_UDP]
    assert blocks and {spec.dport or spec.sport for spec in blocks} == {4790}
    for spec in blocks:
        dport, dmask, sport, smask = struct.unpack_from("!HHHH", netlink.selector(spec), 32)
        assert (dport, dmask) == ((4790, 0xFFFF) if spec.dport else (0, 0))
        assert (sport, smask) == ((4790, 0xFFFF) if spec.sport else (0, 0))


def test_without_dst_port_every_layer_gets_the_default_from_the_same_place() -> None:
    planner = plan_one({"remote_ip": "10.0.0.2", "psk": "swordfish"})
    assert planner.config.tunnels["gnv1"].dst_port == 6081
    assert {spec.dport or spec.sport for spec in planner.policies} == {6081}


def _reads_of(key: str) -> list[str]:
    """Every place in the package that reads `options[key]` / `options.get(key)` of a row."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            subscript = isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
            getter = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            )
            constant = node.slice if subscript else node.args[0] if getter else None  # type: ignore[union-attr]
            if isinstance(constant, ast.Constant) and constant.value == key:
                target = node.value if subscript else node.func.value  # type: ignore[union-attr]
                if "options" in ast.unparse(target):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_options_dst_port_is_read_in_exactly_one_place() -> None:
    reads = _reads_of("dst_port")
    assert len(reads) == 1, reads
    assert reads[0].startswith("ovs_ipsec/core/parse.py:")
