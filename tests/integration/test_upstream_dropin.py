"""Drop-in for what operators read (issue 16, sections 1, 2 and 5), against the real daemon,
ovsdb-server, charon and kernel XFRM in a namespace host: upstream's log lines (words and
levels) for a tunnel that appears, changes, goes bad and disappears, and for upstream's invalid
PKI combination; `Refreshing is done.` after a pass that reached charon; `tunnels/show` with
every line and section of upstream's, Ofport and CFM state from OVSDB (a change of those alone
is not a change of the tunnel), the kernel's policies; `exit` with an unknown argument.

`Connections for all(N) configured tunnels are Up.` needs installed CHILD_SAs, which this
kernel refuses (no ESP): tests/unit/test_upstream_lines.py covers it over fakes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ovs_ipsec.tools.lab import Host, Lab, wait_for

pytestmark = pytest.mark.lab

PSK = "Zq9-dropin-lab-psk"
UPSTREAM = Path(__file__).resolve().parents[1] / "unit" / "data" / "upstream_show"
LABEL = re.compile(r"^(Interface name: |  [A-Za-z ]+: *(?=\S)|\S.*:$)")


def labels(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := LABEL.match(line))]


def logged(host: Host, level: str, text: str, since: int = 0, timeout: float = 10) -> None:
    """Until the daemon's log has `text` as a whole message at `level` (after offset `since`)."""
    pattern = re.compile(rf"\|\s*{level}\s*\|\s*{re.escape(text)}\s*$", re.MULTILINE)
    try:
        wait_for(lambda: pattern.search(host.daemon_log()[since:]), timeout,
                 what=f"{host.name}: {level} {text!r} in the log")  # fmt: skip
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the log ends:\n{host.daemon_log()[-3000:]}") from None


def set_port_status(host: Host, name: str, ofport: int, cfm_fault: bool) -> None:
    """What ovs-vswitchd would write (no vswitchd runs here): ofport and cfm_fault."""
    op = {"op": "update", "table": "Interface", "where": [["name", "==", name]],
          "row": {"ofport": ofport, "cfm_fault": cfm_fault}}  # fmt: skip
    host.run(["ovsdb-client", "transact", host.db, json.dumps(["Open_vSwitch", op])])


def test_upstream_log_lines_show_layout_and_exit(make_lab: Callable[..., Lab]) -> None:
    h1 = make_lab(1)[1]
    h1.vsctl("add-port", "br0", "t1", "--", "set", "interface", "t1", "type=gre",
             "options:remote_ip=10.77.0.2", f"options:psk={PSK}",
             "options:ipsec_forceencaps=yes")  # fmt: skip
    logged(h1, "INFO", "Tunnel t1 appeared in OVSDB")
    logged(h1, "INFO", "Refreshing is done.")

    mark = len(h1.daemon_log())
    h1.vsctl("set", "interface", "t1", "options:remote_ip=10.77.0.3")
    logged(h1, "INFO", "Tunnel's 't1' configuration changed in OVSDB to 2", mark)
    logged(h1, "INFO", "Refreshing is done.", mark)

    # Ofport and CFM come from OVSDB, as vswitchd writes them; not a configuration change.
    set_port_status(h1, "t1", 7, True)

    def shown() -> str | None:
        text = h1.appctl("tunnels/show")
        return text if "  Ofport:         7" in text else None

    text = wait_for(shown, 10, what="Ofport 7 in tunnels/show")
    lines = text.splitlines()
    assert lines[0] == "Interface name: t1 v2 (CONFIGURED)", text
    assert "  CFM state:      Down" in lines
    assert "  Custom Options: {'forceencaps': 'yes'}" in lines
    assert "  PSK:            <redacted>" in lines and PSK not in text
    upstream = (UPSTREAM / "tunnels_show.txt").read_text()
    assert [label for label in labels(text) if label in labels(upstream)] == labels(upstream)
    # charon's trap policies and our fail-closed blocks, both directions, each once.
    start = lines.index("Kernel policies installed:") + 1
    end = lines.index("Kernel security associations installed:")
    policies = lines[start:end]
    assert len(policies) == len(set(policies)) >= 4, text
    assert all(p.startswith("  src 10.77.0.") or " dst 10.77.0.3/" in p for p in policies)
    assert sum("(ovs-monitor-ipsec's block)" in p for p in policies) == 4  # two halves each way
    assert sum(" dir in " in p for p in policies) >= 2
    data = json.loads(h1.appctl("tunnels/show", "--json"))["t1"]
    assert (data["version"], data["ofport"], data["cfm_state"]) == (2, 7, "Down")
    assert "Tunnel's 't1' configuration changed in OVSDB to 3" not in h1.daemon_log()

    mark = len(h1.daemon_log())
    h1.vsctl("remove", "interface", "t1", "options", "remote_ip")
    logged(h1, "WARN", "t1 contains invalid configuration: remote_ip: is not set", mark)
    logged(h1, "WARN", "t1: invalid IPsec configuration: remote_ip: is not set", mark)
    assert h1.appctl("tunnels/show").startswith("Interface name: t1 v3 (INVALID)\n")

    mark = len(h1.daemon_log())
    h1.vsctl("set", "Open_vSwitch", ".", f"other_config:certificate={h1.dir}/none.pem")
    logged(h1, "WARN", "The cert and key configuration is not valid. The valid configuations "
           "are 1): certificate, private_key and ca_cert are not set; or 2): certificate and "
           "private_key are all set.", mark)  # fmt: skip

    mark = len(h1.daemon_log())
    h1.vsctl("del-port", "br0", "t1")
    logged(h1, "INFO", "Tunnel t1 disappeared from OVSDB", mark)

    assert h1.appctl("ipsec/status") == "{}"
    assert h1.appctl("exit", "--bogus") == "unrecognized parameter: --bogus"
    assert h1.daemon_pid is not None and h1.appctl("version").startswith(
        "ovs-monitor-ipsec (Open vSwitch) "
    )
