"""`tunnels/show` as a superset of upstream's (issue 16, section 1): the golden layout test.

tests/unit/data/upstream_show/tunnels_show.txt is upstream's own output (its code run on the
listings beside it: record.py says how); tunnels_show_live.txt is a live reply of upstream's
running monitor, with its own charon, to our daemon as its peer (record_live.py). Ours, for the
same tunnel and the same kernel listings, must carry every line and section of it, in its order
and spelling and at its columns, with our lines as extras; the PSK and every key redacted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ovs_ipsec.adapters.xfrm.iproute2 import parse_policies, parse_states, redact_states
from ovs_ipsec.core import naming, render
from ovs_ipsec.core.connections import plan
from ovs_ipsec.core.model import Config, InterfaceRow, PortStatus, Snapshot
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.sas import parse_sas
from ovs_ipsec.core.status import TunnelStatus, View, fold

DATA = Path(__file__).resolve().parent / "data" / "upstream_show"
UPSTREAM = (DATA / "tunnels_show.txt").read_text()
PSK = "swordfish"  # upstream's golden output prints it; ours must not
ROW = InterfaceRow("gre1", "gre", {"remote_ip": "10.0.0.2", "psk": PSK, "ipsec_forceencaps": "yes"})
CHILD = naming.child_name("gre1")
SA = {
    "uniqueid": "1", "state": "ESTABLISHED", "local-host": "10.0.0.1", "local-port": "500",
    "local-id": "10.0.0.1", "remote-host": "10.0.0.2", "remote-port": "500",
    "remote-id": "10.0.0.2", "established": "2",
    "child-sas": {f"{CHILD}-2": {
        "name": CHILD, "uniqueid": "2", "state": "INSTALLED", "mode": "TRANSPORT",
        "protocol": "ESP", "spi-in": "c0671655", "spi-out": "cdfed6bc",
        "bytes-in": "0", "packets-in": "0", "bytes-out": "0", "packets-out": "0",
        "install-time": "2", "local-ts": ["10.0.0.1/32[gre]"], "remote-ts": ["10.0.0.2/32[gre]"]}},
}  # fmt: skip


@dataclass(frozen=True)
class Health:
    charon_reachable: bool = True
    charon_error: str = ""


def ours() -> tuple[Config, dict[str, TunnelStatus], render.Kernel]:
    config = parse_config(Snapshot((ROW,), {}))
    desired = plan(config)
    sas = parse_sas([{naming.conn_name("10.0.0.2"): SA}])
    statuses = fold(View(desired, frozenset(desired.conns), sas=sas))
    kernel = render.Kernel(
        policies=parse_policies((DATA / "ip_xfrm_policy.txt").read_text()),
        states=parse_states(redact_states((DATA / "ip_xfrm_state.txt").read_text())),
    )
    return config, statuses, kernel


PORTS = {"gre1": PortStatus(ofport=1, cfm_fault=None)}
LABEL = re.compile(r"^(Interface name: |  [A-Za-z ]+: *(?=\S)|\S.*:$)")


def labels(text: str) -> list[str]:
    """Each line's label: the header's start, `  Label:` padded to its column, a section."""
    return [m.group(1) for line in text.splitlines() if (m := LABEL.match(line))]


def test_ours_carries_upstreams_lines_and_sections_in_order() -> None:
    config, statuses, kernel = ours()
    text = render.tunnels_text(config, statuses, Health(), None, PORTS, kernel)
    upstream_labels = labels(UPSTREAM)
    assert len(upstream_labels) == 19  # the header, 15 labelled lines, 3 sections
    ours_labels = [label for label in labels(text) if label in upstream_labels]
    assert ours_labels == upstream_labels, text
    # A blank line ends the tunnel, as upstream's.
    assert text.endswith("\n\n")
    # The values where we say what upstream says; the state word is ours (CONFIGURED -> UP).
    lines = text.splitlines()
    assert lines[0] == "Interface name: gre1 v1 (UP)"
    upstream_lines = UPSTREAM.splitlines()
    same = ("Tunnel Type", "Remote IP", "Address Family", "SKB mark", "Local cert", "Local name",
            "Local key", "Remote cert", "Remote name", "CA cert", "Custom Options", "Ofport",
            "CFM state")  # fmt: skip
    for label in same:
        line = next(u for u in upstream_lines if u.startswith(f"  {label}:"))
        assert line in lines, line
    # Different on purpose (README, Differences from upstream): no PSK, strongSwan's %any.
    assert "  PSK:            <redacted>" in lines
    assert "  Local IP:       %any" in lines
    assert PSK not in text


def test_the_live_upstream_reply_has_the_same_layout() -> None:
    """Upstream's running monitor answered with the layout its code gives, which ours holds."""
    live = (DATA / "tunnels_show_live.txt").read_text()
    assert labels(live) == labels(UPSTREAM)
    assert live.startswith("Interface name: gre1 v1 (CONFIGURED)\n") and live.endswith("\n\n")
    assert "  Ofport:         Not assigned" in live.splitlines()


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
    return lines[start:end]


def test_kernel_sections_start_like_upstreams_entries_and_list_each_once() -> None:
    """Every entry upstream lists starts one of ours (ip's own words first), each kernel
    policy once (upstream lists outbound ones twice and inbound ones never), no key."""
    config, statuses, kernel = ours()
    text = render.tunnels_text(config, statuses, Health(), None, PORTS, kernel)
    for title in ("Kernel policies installed:", "Kernel security associations installed:"):
        mine = section(text, title)
        for entry in set(section(UPSTREAM, title)):
            assert any(line.startswith(entry) for line in mine), (entry, mine)
    policies = section(text, "Kernel policies installed:")
    assert len(policies) == len(set(policies)) == 4  # charon's in/out, our blocks in/out
    assert sum("dir in" in p for p in policies) == 2
    assert sum("(ovs-monitor-ipsec's block)" in p for p in policies) == 2
    assert len(section(text, "Kernel security associations installed:")) == 2
    assert "00112233" not in text and "8899aabb" not in text


def test_json_has_the_same_information() -> None:
    config, statuses, kernel = ours()
    data = json.loads(render.to_json(render.tunnels_json(config, statuses, None, PORTS, kernel)))
    gre1 = data["gre1"]
    assert gre1["version"] == 1 and gre1["upstream_state"] == "CONFIGURED"
    assert gre1["custom_options"] == {"forceencaps": "yes"}
    assert gre1["ofport"] == 1 and gre1["cfm_state"] == "Disabled"
    assert len(gre1["kernel"]["policies"]) == 4
    assert [s["spi"] for s in gre1["kernel"]["security_associations"]] == [
        "0xcdfed6bc", "0xc0671655"]  # fmt: skip
    assert PSK not in json.dumps(data)


def test_ports_cfm_and_secret_options() -> None:
    """Upstream's words for ofport and CFM; an ipsec_* value that may be a secret is redacted."""
    assert render.ofport_text(None) == render.ofport_text(PortStatus()) == "Not assigned"
    assert [render.cfm_text(PortStatus(cfm_fault=f)) for f in (None, False, True)] == [
        "Disabled", "Up", "Down"]  # fmt: skip
    row = InterfaceRow("t", "gre", {"remote_ip": "10.0.0.2", "psk": PSK, "ipsec_psk": "Zq9x"})
    config = parse_config(Snapshot((row,), {}))
    assert render.custom_options(config, "t") == {"psk": render.REDACTED}


def test_invalid_tunnel_has_the_same_layout() -> None:
    """Upstream never shows an invalid tunnel; ours does, with every upstream line (None where
    nothing is known) and the errors as extra lines."""
    row = InterfaceRow("bad", "gre", {"remote_ip": "flow", "psk": PSK})
    config = parse_config(Snapshot((row,), {}))
    statuses = fold(View(plan(config), frozenset()))
    text = render.tunnels_text(config, statuses, Health(), None, {}, render.Kernel())
    assert [label for label in labels(text) if label in labels(UPSTREAM)] == labels(UPSTREAM)
    assert text.startswith("Interface name: bad v1 (INVALID)\n")
    assert "  Config error:   remote_ip: " in text
