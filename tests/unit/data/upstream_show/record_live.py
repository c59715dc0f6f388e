"""Record a live `tunnels/show` of upstream's monitor beside ours, for the same GRE tunnel.

A lab of two namespace hosts: h1 runs our daemon; on h2 our daemon and charon-systemd are
stopped and Debian 12's upstream monitor (openvswitch-ipsec 3.1.0) runs with its own stroke
starter and charon (bench/upstream.py, as the benchmark runs it). Both get `gre1` to each other
with the same PSK and `ipsec_forceencaps=yes`; one GRE probe from h1 brings the IKE_SA up (this
kernel refuses the ESP SA: test-machine.md). tunnels_show_live.txt is upstream's reply; ours is
printed to stdout. Root only; about 15 s.

    cd <worktree> && .venv/bin/python tests/unit/data/upstream_show/record_live.py
"""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from upstream import Upstream  # noqa: E402

from ovs_ipsec.tools.lab import Lab  # noqa: E402

PSK = "swordfish"


def main() -> None:
    lab = Lab(2).start()
    try:
        h1, h2 = lab[1], lab[2]
        h2.stop_daemon()
        h2.stop_charon()
        h2.run(["ip", "xfrm", "policy", "flush"])
        h2.run(["ip", "xfrm", "state", "flush"])
        up = Upstream(h2.ns, h2.dir, h2.db, keep_pids=tuple(p for p in (h2.ovsdb_pid,) if p))
        up.prepare()
        try:
            up.spawn_monitor(restart=True)
            up.finish_start()
            for host, peer in ((h1, h2.ipv4), (h2, h1.ipv4)):
                host.vsctl("add-port", "br0", "gre1", "--", "set", "interface", "gre1",
                           "type=gre", f"options:remote_ip={peer}", f"options:psk={PSK}",
                           "options:ipsec_forceencaps=yes")  # fmt: skip
            time.sleep(4)
            h1.send_probe(h2.ipv4, "gre")
            time.sleep(3)
            ctl = glob.glob(os.path.join(up.ovs_run, "ovs-monitor-ipsec.*.ctl"))[0]
            upstream = h2.run(["ovs-appctl", "-t", ctl, "tunnels/show"]).stdout
            Path(__file__).with_name("tunnels_show_live.txt").write_text(upstream)
            print(h1.appctl("tunnels/show"))
        finally:
            up.stop()
    finally:
        lab.stop()


if __name__ == "__main__":
    main()
