"""Guest side of the pluto probe (run.sh): pluto (h1) and our charon conn (h2) with a real ESP
CHILD SA; the daemon's fail-closed blocks (its own plan and XFRM adapter) beside pluto's SA
policies, at pluto's default priority and with `priority=366976`. Prints what it sees."""

from __future__ import annotations

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ovs_ipsec.adapters.xfrm.adapter import Xfrm  # noqa: E402
from ovs_ipsec.core.block_policies import PolicySpec, plan_protection  # noqa: E402
from ovs_ipsec.core.model import AuthMode, Config, Secret, Tunnel, TunnelType  # noqa: E402
from ovs_ipsec.tools import pluto_lab  # noqa: E402
from ovs_ipsec.tools.lab import Host, Lab, in_netns, wait_for  # noqa: E402

PSK = "swordfish-test-psk"


def gre(remote: str) -> Tunnel:
    return Tunnel("t0", TunnelType.GRE, remote, None, None, AuthMode.PSK, Secret(PSK))


def policies(host: Host) -> list[str]:
    text = host.run(["ip", "xfrm", "policy"]).stdout
    entries = re.split(r"^(?=src )", text, flags=re.M)
    shown = [e for e in entries if e.strip() and "socket" not in e and "icmp" not in e]
    return [" ".join(e.split()) for e in shown]


def sa_counters(host: Host) -> str:
    lines = host.run(["ip", "-s", "xfrm", "state"]).stdout.splitlines()
    return " | ".join(" ".join(x.split()) for x in lines if "spi" in x or "(packets)" in x)


def blocks(remote: str) -> list[PolicySpec]:
    planned = plan_protection(Config(tunnels={"t0": gre(remote)}))
    return sorted(planned, key=PolicySpec.sort_key)


def probe(src: Host, dst: Host) -> None:
    before = {h.name: h.xfrm_stat() for h in (src, dst)}
    print(f"probe {src.name}->{dst.name}: {src.send_probe(dst.ipv4, 'gre')}")
    time.sleep(0.5)
    for h in (src, dst):
        old, new = before[h.name], h.xfrm_stat()
        print(f"  {h.name} counters:", {k: v - old[k] for k, v in new.items() if v != old[k]})
    print(f"  {src.name} SAs:", sa_counters(src))


def main() -> None:
    with open("/proc/version") as f:
        print("kernel:", f.read().split(" (")[0])
    with Lab(2, daemon=False, libreswan_hosts=[1]) as lab:
        h1, h2 = lab[1], lab[2]
        pluto = h1.pluto
        assert pluto is not None
        print("pluto", pluto_lab.libreswan_version())
        pluto_lab.load_daemon_conn(h2, gre(h1.ipv4))
        pluto.write_secrets(f'{h1.ipv4} {h2.ipv4} : PSK "{PSK}"\n')
        pluto.reread_secrets()
        name, path = f"ovs-{h2.ipv4}", os.path.join(pluto.dir, "probe.conf")
        for label, extra in (("default priority", {}), ("priority=366976", {"priority": "366976"})):
            print(f"\n===== {label}")
            with open(path, "w") as f:
                f.write(pluto_lab.interop_conn(name, h1.ipv4, h2.ipv4, "47/0", "47/0", **extra))
            pluto.addconn(path, name)
            pluto.route(name)
            pluto.initiate(name)
            wait_for(lambda: pluto.whack("--trafficstatus").strip(), 20, what="CHILD SA")
            print("trafficstatus:", pluto.whack("--trafficstatus").strip())
            print("h2 (charon) policies:", *policies(h2), sep="\n  ")
            for host, remote in ((h1, h2.ipv4), (h2, h1.ipv4)):
                with in_netns(host.ns):
                    Xfrm(timeout=10).apply(add=blocks(remote), remove=())
            print("h1 (pluto) policies with our blocks:", *policies(h1), sep="\n  ")
            probe(h1, h2)
            probe(h2, h1)
            for host, remote in ((h1, h2.ipv4), (h2, h1.ipv4)):
                with in_netns(host.ns):
                    Xfrm(timeout=10).apply(add=(), remove=blocks(remote))
            pluto.delete(name)
            with h2.vici() as v:
                for sa in v.list_sas():
                    for ike in sa:
                        v.terminate({"ike": ike, "force": "yes", "timeout": "-1"})
    print("PROBE DONE")


if __name__ == "__main__":
    main()
