"""`make demo`: three namespace hosts with real ovsdb-server, charon and our daemon; PSK tunnels
between them configured with ovs-vsctl only; a readable table of what each host ended up with.

May import: lab, stdlib, vici (through lab sessions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from ovs_ipsec.tools.lab import Host, Lab, charon_keeps_ike_sa_without_child, wait_for

PSK = "demo-swordfish"


@dataclass(frozen=True)
class DemoTunnel:
    a: int
    b: int
    kind: str
    family: int
    port: int | None = None
    auth: str = "psk"

    def name(self, host: int) -> str:
        other = self.b if host == self.a else self.a
        return f"{self.kind[:3]}{self.family}-h{other}"


TUNNELS = (
    DemoTunnel(1, 2, "gre", 4),
    DemoTunnel(2, 3, "geneve", 4, 6081),
    DemoTunnel(1, 3, "vxlan", 4, 4789),
    DemoTunnel(1, 2, "geneve", 6, 6081),
    DemoTunnel(2, 3, "vxlan", 6, 4789, "ca-signed"),
    DemoTunnel(1, 3, "geneve", 6, 6081, "self-signed"),
)


def pki(*args: str) -> None:
    """The project's `ovs-ipsec-pki`, as an operator would run it."""
    command = [sys.executable, "-m", "ovs_ipsec.tools.pki_tool", *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    say(f"  $ ovs-ipsec-pki {' '.join(args)}")


def make_pki(lab: Lab) -> dict[str, str]:
    """A CA in the lab directory; h2 and h3 get CA-signed certificates, h1 a self-signed one.
    Returns the certificate path of each host."""
    ca_dir = os.path.join(lab.workdir, "pki")
    os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    pki("--dir", ca_dir, "init")
    pki("--dir", ca_dir, "self-signed", "h1")
    for name in ("h2", "h3"):
        pki("--dir", ca_dir, "host", name)
    certs = {}
    for host in lab.hosts:
        cert = os.path.join(ca_dir, f"{host.name}-cert.pem")
        certs[host.name] = cert
        host.vsctl(
            "set", "Open_vSwitch", ".", f"other_config:certificate={cert}",
            f"other_config:private_key={os.path.join(ca_dir, host.name + '-privkey.pem')}",
            f"other_config:ca_cert={os.path.join(ca_dir, 'cacert.pem')}",
        )  # fmt: skip
    return certs


def say(text: str = "") -> None:
    print(text, flush=True)


def address(host: Host, family: int) -> str:
    return host.ipv4 if family == 4 else host.ipv6


def configure(lab: Lab, certs: dict[str, str]) -> None:
    for tunnel in TUNNELS:
        for me, peer in ((tunnel.a, tunnel.b), (tunnel.b, tunnel.a)):
            host, other = lab.hosts[me - 1], lab.hosts[peer - 1]
            name = tunnel.name(me)
            auth = {
                "psk": f"options:psk={PSK}",
                "ca-signed": f"options:remote_name={other.name}",
                "self-signed": f"options:remote_cert={certs[other.name]}",
            }[tunnel.auth]
            command = [
                "add-port", "br0", name, "--", "set", "interface", name, f"type={tunnel.kind}",
                f"options:remote_ip={address(other, tunnel.family)}", auth,
            ]  # fmt: skip
            host.vsctl(*command)
            shown = " ".join(command).replace(PSK, "<psk>")
            say(f"  {host.name}$ ovs-vsctl {shown}")


def trigger(lab: Lab) -> None:
    """One plaintext tunnel packet per tunnel: it hits charon's trap policy, the kernel asks
    charon for an SA (acquire), and charon negotiates IKE with the peer."""
    for tunnel in TUNNELS:
        host, other = lab.hosts[tunnel.a - 1], lab.hosts[tunnel.b - 1]
        host.send_probe(address(other, tunnel.family), tunnel.kind, tunnel.port)


def ike_states(host: Host) -> dict[str, str]:
    states: dict[str, str] = {}
    with host.vici() as session:
        for entry in session.list_sas({"noblock": "yes"}):
            for conn, sa in entry.items():
                children = sa.get("child-sas") or {}
                state = sa["state"].decode()
                states[conn] = f"{state}, {len(children)} CHILD_SA"
    return states


def table(host: Host) -> list[str]:
    status = json.loads(host.appctl("tunnels/show", "--json") or "{}")
    ike = ike_states(host)
    rows = [("interface", "type", "auth", "remote_ip", "daemon state", "connection", "IKE SA")]
    for name, info in sorted(status.items()):
        config = info["config"]
        conn = info["connection"] or "-"
        rows.append(
            (
                name,
                config.get("type") or "?",
                config.get("auth") or "?",
                config.get("remote_ip") or "?",
                info["state"],
                conn,
                ike.get(conn, "none"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    ]


def tunnel_states(host: Host) -> dict[str, dict[str, str]]:
    return json.loads(host.appctl("tunnels/show", "--json") or "{}")


def refused_after_authentication(lab: Lab) -> bool:
    """strongSwan 6 on a kernel without ESP: for every tunnel, the responder's charon
    authenticated the initiator and established the IKE_SA (its log says so), and each side's
    daemon reports the tunnel failed for what happened: the responder's kernel refused the
    CHILD_SA, and the initiator got an IKE_AUTH answer without the responder's identity."""
    for tunnel in TUNNELS:
        initiator, responder = lab.hosts[tunnel.a - 1], lab.hosts[tunnel.b - 1]
        conn = f"ovs-{address(initiator, tunnel.family)}"
        if not established_on_responder(responder, conn):
            return False
        theirs = tunnel_states(responder).get(tunnel.name(tunnel.b), {})
        ours = tunnel_states(initiator).get(tunnel.name(tunnel.a), {})
        if theirs.get("state") != "failed" or theirs.get("cause") != "kernel":
            return False
        if ours.get("state") != "failed" or "IKE_AUTH" not in ours.get("reason", ""):
            return False
    return True


def established_on_responder(host: Host, conn: str) -> bool:
    """charon's own log line (ike_sa.c set_state), after it authenticated the peer."""
    return any(
        line.startswith(f"IKE_SA {conn}[") and "] established between " in line
        for line in (entry.split("] ", 1)[-1] for entry in host.charon_log().splitlines())
    )


def all_established(lab: Lab) -> bool:
    expected = {(t.a, t.family, t.b) for t in TUNNELS}
    for a, family, b in expected:
        conn = f"ovs-{address(lab.hosts[b - 1], family)}"
        if not ike_states(lab.hosts[a - 1]).get(conn, "").startswith("ESTABLISHED"):
            return False
    return True


def explain_6(lab: Lab, release: str) -> None:
    first = TUNNELS[0]
    initiator, responder = lab.hosts[first.a - 1], lab.hosts[first.b - 1]
    say(f"\nWhat you see (strongSwan {release}): every tunnel's connection and trap are loaded;")
    say("for each tunnel the responder's charon authenticated the initiator and established the")
    say("IKE SA (its log says so), then this machine's kernel (no ESP, no AEAD) refused the")
    say("CHILD_SA. strongSwan 6 then answers IKE_AUTH with NO_PROPOSAL_CHOSEN alone, without its")
    say("identity, so the initiator cannot authenticate the responder and drops the IKE SA, and")
    say("the responder deletes its own: no IKE SA remains ('none'), and both daemons report")
    say("the tunnel 'failed' with what happened. (strongSwan 5.9 keeps the IKE SA: 'ike-up'.)")
    say(f"For {first.kind} {initiator.name} -> {responder.name}, `ovs-appctl tunnels/show` says:")
    for host, name in ((initiator, first.name(first.a)), (responder, first.name(first.b))):
        status = tunnel_states(host)[name]
        say(f"  {host.name} {name}: {status['state']} ({status['cause']}): {status['reason']}")


def main() -> int:
    started = time.monotonic()
    say("ovs-ipsec demo: three hosts (network namespaces on one bridge), each running its own")
    say("ovsdb-server, strongSwan charon-systemd (VICI) and ovs-monitor-ipsec.\n")
    with Lab(3) as lab:
        for host in lab.hosts:
            say(f"  {host.name}: {host.ipv4} / {host.ipv6}  (namespace {host.ns})")
        say("\n1. Certificates for the certificate tunnels, made with the project's PKI tool, and")
        say("   set with ovs-vsctl (other_config:certificate, private_key, ca_cert):")
        certs = make_pki(lab)
        say("\n2. Tunnels are configured with ovs-vsctl only, exactly as OVS's IPsec guide says")
        say("   (PSK; CA-signed with remote_name; self-signed with the peer's remote_cert):")
        configure(lab, certs)
        say("\n3. Each daemon loads one IKEv2 connection per peer into its charon over VICI, with")
        say("   the PSK as data (never a file), and charon installs trap policies in the kernel.")
        for host in lab.hosts:
            wait_for(
                lambda h=host: (
                    len(json.loads(h.appctl("ipsec/status", "--json")))
                    == sum(1 for t in TUNNELS if h.index in (t.a, t.b))
                ),
                15,
                what=f"{host.name}: every tunnel known to the daemon",
            )
        version = lab.hosts[0].charon_version()
        keeps = charon_keeps_ike_sa_without_child(version)
        say("\n4. A tunnel packet hits each trap; charon negotiates IKE with the peer.")
        trigger(lab)
        if keeps:
            wait_for(lambda: all_established(lab), 20, what="every IKE SA established")
        else:
            wait_for(
                lambda: refused_after_authentication(lab),
                20,
                what="every responder to authenticate its initiator and every tunnel to fail "
                "for the kernel's refusal of the CHILD_SA",
            )
        for host in lab.hosts:
            say(f"\n{host.name} ({host.ipv4}):")
            for line in table(host):
                say(line)
            traps = host.xfrm_policies().count("proto esp")
            say(f"  kernel: {traps} charon trap/IPsec policies (ip xfrm policy)")
        release = ".".join(map(str, version))
        if keeps:
            say(f"\nWhat you see (strongSwan {release}): every tunnel's connection and trap are")
            say("loaded and its IKE SA is ESTABLISHED, so the daemon reports it 'ike-up'. The")
            say("CHILD_SA count is 0 because this machine's kernel has no ESP: charon negotiated")
            say("the CHILD_SA and the kernel refused to install it; `ovs-appctl tunnels/show`")
            say("gives that reason per tunnel.")
        else:
            explain_6(lab, release)
        say("`make e2e` shows encrypted traffic through a full Debian kernel. PSKs appear nowhere.")
    say(f"\nDone in {time.monotonic() - started:.1f} s; everything was torn down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
