"""A minimal OVSDB JSON-RPC client (RFC 7047) for the benchmark: one persistent unix-socket
connection, `transact` only. The benchmark changes the database through it rather than through
`ovs-vsctl`, because ovs-vsctl reads the whole Bridge/Port/Interface contents on every call: at
1,000 ports that is tens of milliseconds that would land inside the figures being measured.

Stdlib only.
"""

from __future__ import annotations

import codecs
import json
import socket
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

DB = "Open_vSwitch"


class OvsdbError(RuntimeError):
    pass


class Sent(NamedTuple):
    mono: float  # time.monotonic(), for latencies measured here
    wall: float  # time.time(), to compare with timestamps in the daemon's log


class OvsdbClient:
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._text = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> OvsdbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_message(self) -> dict[str, Any]:
        while True:
            self._text = self._text.lstrip()
            if self._text:
                try:
                    msg, end = self._decoder.raw_decode(self._text)
                except json.JSONDecodeError:
                    pass  # incomplete: read more
                else:
                    self._text = self._text[end:]
                    return msg
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise OvsdbError("ovsdb-server closed the connection")
            self._text += self._utf8.decode(chunk)

    def call(self, method: str, params: list[Any]) -> Any:
        self._id += 1
        request_id = self._id
        self.sock.sendall(
            json.dumps({"method": method, "params": params, "id": request_id}).encode()
        )
        while True:
            msg = self._recv_message()
            if msg.get("method") == "echo":
                self.sock.sendall(
                    json.dumps({"result": msg["params"], "error": None, "id": msg["id"]}).encode()
                )
                continue
            if msg.get("id") != request_id:
                continue
            if msg.get("error"):
                raise OvsdbError(f"{method}: {msg['error']}")
            return msg["result"]

    def transact(self, ops: Sequence[dict[str, Any]]) -> tuple[list[Any], Sent]:
        """Run one transaction; returns its results and when it was sent.

        ovsdb-server answers after the commit, so the commit lies between `sent` and the
        return; timing from the moment of sending counts the commit itself too."""
        sent = Sent(time.monotonic(), time.time())
        results = self.call("transact", [DB, *ops])
        for i, result in enumerate(results):
            if isinstance(result, dict) and "error" in result:
                raise OvsdbError(f"transact op {i}: {result}")
        return results, sent

    # -- the operations the benchmark needs ---------------------------------------------------

    def port_uuid(self, name: str) -> str | None:
        (result,), _ = self.transact(
            [
                {
                    "op": "select",
                    "table": "Port",
                    "where": [["name", "==", name]],
                    "columns": ["_uuid"],
                }
            ]
        )
        rows = result["rows"]
        return rows[0]["_uuid"][1] if rows else None


def options_map(options: dict[str, str]) -> list[Any]:
    return ["map", sorted(options.items())]


def add_tunnels_ops(
    tunnels: Sequence[tuple[str, dict[str, str]]], bridge: str = "br0"
) -> list[dict[str, Any]]:
    """Insert GRE interfaces (name, options) with a port each and attach them to `bridge`."""
    ops: list[dict[str, Any]] = []
    ports = []
    for i, (name, options) in enumerate(tunnels):
        ops.append(
            {
                "op": "insert",
                "table": "Interface",
                "uuid-name": f"i{i}",
                "row": {"name": name, "type": "gre", "options": options_map(options)},
            }
        )
        ops.append(
            {
                "op": "insert",
                "table": "Port",
                "uuid-name": f"p{i}",
                "row": {"name": name, "interfaces": ["named-uuid", f"i{i}"]},
            }
        )
        ports.append(["named-uuid", f"p{i}"])
    ops.append(
        {
            "op": "mutate",
            "table": "Bridge",
            "where": [["name", "==", bridge]],
            "mutations": [["ports", "insert", ["set", ports]]],
        }
    )
    return ops


def keep_only_ports_ops(keep_uuids: Sequence[str], bridge: str = "br0") -> list[dict[str, Any]]:
    """Detach every port but `keep_uuids` from `bridge`; OVSDB garbage-collects the rest."""
    return [
        {
            "op": "update",
            "table": "Bridge",
            "where": [["name", "==", bridge]],
            "row": {"ports": ["set", [["uuid", u] for u in keep_uuids]]},
        }
    ]


def set_options_op(name: str, options: dict[str, str]) -> dict[str, Any]:
    return {
        "op": "update",
        "table": "Interface",
        "where": [["name", "==", name]],
        "row": {"options": options_map(options)},
    }
