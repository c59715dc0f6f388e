#!/usr/bin/env python3
"""The raw VICI floor: load the benchmark's N connections and secrets straight into a charon,
with the very bodies our daemon's planner produces (ovs_ipsec.core.connections), one request at
a time (load-shared, then load-conn, per peer) over one VICI session. No OVSDB, no diffing,
no kernel work of our own: what is left is charon's and the VICI round trips' share of any figure.

    floor.py VICI_PATH N [--wait]

Without --wait it loads at once (the cold-start floor: interpreter start and imports included).
With --wait it prepares everything, prints `ready` and loads when it reads `go` (the bulk-add
floor). After loading it prints `loaded SECONDS` and then serves one command per line:

    change IFACE NEW_REMOTE_IP   a single load-conn of that tunnel's new connection; prints `done`
    quit                         exit (leaves charon as it is)

Stdout carries only these replies. May import: stdlib, vici, ovs_ipsec, workload.
"""

from __future__ import annotations

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vici  # noqa: E402
import workload  # noqa: E402


def session(path: str) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(60)
    sock.connect(path)
    return vici.Session(sock)


def reply(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    path, n = sys.argv[1], int(sys.argv[2])
    wait = "--wait" in sys.argv[3:]
    rows = workload.tunnels(n)
    desired = workload.desired(rows)
    psks = dict(zip((r[0] for r in rows), (r[1]["psk"] for r in rows), strict=True))
    v = session(path)
    shared_of = {secret.conn: secret for secret in desired.shared.values()}
    if wait:
        reply("ready")
        if sys.stdin.readline().strip() != "go":
            return 1
    started = time.monotonic()
    for conn in desired.conns.values():
        secret = shared_of[conn.name]
        v.load_shared(
            {
                "id": secret.id,
                "type": "IKE",
                "data": secret.secret.reveal(),
                "owners": list(secret.owners),
            }
        )
        v.load_conn({conn.name: conn.body})
    reply(f"loaded {time.monotonic() - started:.6f}")
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["change"] and len(words) == 3:
            iface, remote = words[1], words[2]
            (conn,) = workload.desired(
                [(iface, {"remote_ip": remote, "psk": psks[iface]})]
            ).conns.values()
            v.load_conn({conn.name: conn.body})
            reply("done")
        elif words[:1] == ["quit"]:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
