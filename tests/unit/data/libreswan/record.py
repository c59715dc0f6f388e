"""Re-record the pluto status fixtures in this directory: what pluto's control socket and log say
in each state a tunnel can be in, between a lab pluto (h1) and a lab charon (h2) that holds the
connection our daemon plans for a GRE/PSK tunnel (test PSKs only). Needs root (namespaces) and
the libreswan that `scripts/setup.sh test` unpacks:

    .venv/bin/python tests/unit/data/libreswan/record.py tests/unit/data/libreswan

Writes `<version>/<scenario>.txt` (version: pluto's, e.g. 4.10), each the output of
`whack --showstates`, `--trafficstatus`, `--briefstatus`, `--status` and the pluto log lines of
the scenario, under `$ ...` headers. test_libreswan_fixtures.py names the lines that tell each
state apart.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from ovs_ipsec.core.model import AuthMode, Secret, Tunnel, TunnelType
from ovs_ipsec.tools.lab import Host, Lab, wait_for
from ovs_ipsec.tools.pluto_lab import Pluto, interop_conn, libreswan_version, load_daemon_conn

PSK = "swordfish-test-psk"
STATUS_COMMANDS = ("--showstates", "--trafficstatus", "--briefstatus", "--status")


def snapshot(pluto: Pluto, log_from: int) -> str:
    parts = [f"$ whack {cmd}\n{pluto.whack(cmd)}" for cmd in STATUS_COMMANDS]
    parts.append(f"$ pluto log\n{pluto.log()[log_from:]}")
    return "\n".join(parts)


def reset(pluto: Pluto, charon: Host, name: str) -> None:
    pluto.delete(name, check=False)
    with charon.vici() as v:
        for sa in v.list_sas():
            for ike in sa:
                v.terminate({"ike": ike, "force": "yes", "timeout": "-1"})


def main(out_dir: str) -> None:
    with Lab(2, daemon=False, libreswan_hosts=[1]) as lab:
        h1, h2 = lab[1], lab[2]
        pluto = h1.pluto
        assert pluto is not None
        version = ".".join(map(str, libreswan_version()))
        target = os.path.join(out_dir, version)
        os.makedirs(target, exist_ok=True)
        tunnel = Tunnel("gre0", TunnelType.GRE, h1.ipv4, None, None, AuthMode.PSK, Secret(PSK))
        load_daemon_conn(h2, tunnel)
        name = f"ovs-{h2.ipv4}"
        conf = os.path.join(pluto.dir, "record.conf")

        def load(psk: str = PSK, peer: str = h2.ipv4, **extra: str) -> None:
            with open(conf, "w") as f:
                f.write(interop_conn(name, h1.ipv4, peer, "gre", "gre", **extra))
            pluto.write_secrets(f'{h1.ipv4} {peer} : PSK "{psk}"\n')
            pluto.reread_secrets()
            pluto.addconn(conf, name)
            pluto.route(name)

        def scenario(label: str, until: Callable[[str], bool], timeout: float = 10) -> None:
            start = len(pluto.log())
            pluto.initiate(name)
            wait_for(lambda: until(pluto.log()[start:]), timeout, what=label)
            time.sleep(0.3)  # the exchange's last lines
            with open(os.path.join(target, f"{label}.txt"), "w") as f:
                f.write(snapshot(pluto, start))
            print(f"{target}/{label}.txt")

        load()
        start = len(pluto.log())
        with open(os.path.join(target, "routed-idle.txt"), "w") as f:
            f.write(snapshot(pluto, start))
        scenario("ike-up-child-refused", lambda log: "rejected Child SA" in log)
        reset(pluto, h2, name)

        # charon initiates: pluto, the responder, has the kernel refuse the SA.
        load()
        start = len(pluto.log())
        with h2.vici() as v:
            try:
                for _ in v.initiate({"child": "ovs-gre0", "timeout": "5000"}):
                    pass
            except Exception:  # CommandException: the CHILD_SA fails, as expected
                pass
        wait_for(lambda: "errno 38" in pluto.log()[start:], 5, what="responder refusal")
        time.sleep(0.3)  # the exchange's last lines
        with open(os.path.join(target, "responder-child-refused.txt"), "w") as f:
            f.write(snapshot(pluto, start))
        reset(pluto, h2, name)

        load(psk="wrong-test-psk")
        scenario("auth-failed", lambda log: "AUTHENTICATION_FAILED" in log)
        reset(pluto, h2, name)

        # charon accepts only AES-GCM-256 with PRF SHA-256 and MODP2048.
        load(ike="aes128-sha2_256-modp2048")
        scenario("no-proposal-chosen", lambda log: "NO_PROPOSAL_CHOSEN" in log)
        reset(pluto, h2, name)

        # Nobody at .99: retransmits, then gives up (short timeout, one try).
        load(peer="10.77.0.99", **{"retransmit-timeout": "3s", "keyingtries": "1"})
        start = len(pluto.log())
        scenario("peer-unreachable-retransmitting", lambda log: "retransmission" in log)
        wait_for(lambda: "#" not in pluto.show_states(), 15, what="giving up")
        with open(os.path.join(target, "peer-unreachable-gave-up.txt"), "w") as f:
            f.write(snapshot(pluto, start))
        pluto.delete(name, check=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
