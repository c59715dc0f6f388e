"""ovs-appctl output: the exact empty forms probes compare against, and what a tunnel shows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ovs_ipsec import render
from ovs_ipsec.model import Config, InterfaceRow, Snapshot
from ovs_ipsec.parse import parse_config
from ovs_ipsec.plan import plan
from ovs_ipsec.status import fold

PSK = "Zq9PSK-render-secret"


@dataclass(frozen=True)
class Health:
    """The two fields render reads from the daemon's health (plain data, not our code)."""

    charon_reachable: bool = True
    charon_error: str = ""


def test_ipsec_status_json_without_tunnels_is_exactly_empty_object() -> None:
    """`ipsec/status --json` with no tunnels is exactly `{}`: liveness probes compare strings."""
    assert render.to_json(render.ipsec_status_json({})) == "{}"
    assert render.to_json(render.tunnels_json(Config(), {})) == "{}"


def test_text_without_tunnels_says_so() -> None:
    """`tunnels/show` with no IPsec tunnel says `No tunnels configured with IPsec`."""
    assert "No tunnels configured with IPsec" in render.tunnels_text(Config(), {}, Health())


def snapshot_state() -> tuple[Config, dict]:
    rows = (
        InterfaceRow("good", "vxlan", {"remote_ip": "192.0.2.2", "psk": PSK, "dst_port": "4790"}),
        InterfaceRow("bad", "gre", {"remote_ip": "flow", "psk": PSK}),
        InterfaceRow("plain", "gre", {"remote_ip": "192.0.2.9"}),
    )
    config = parse_config(Snapshot(rows, {}))
    desired = plan(config)
    return config, fold(desired, frozenset(desired.conns), {})


def test_tunnel_outputs_name_state_reason_and_redact_the_psk() -> None:
    """Each IPsec tunnel shows its state; an invalid one shows the key and reason; the psk is
    shown only as redacted; non-IPsec ports are not listed."""
    config, statuses = snapshot_state()
    text = render.tunnels_text(config, statuses, Health())
    tunnels = json.loads(render.to_json(render.tunnels_json(config, statuses)))
    status = json.loads(render.to_json(render.ipsec_status_json(statuses)))
    assert sorted(tunnels) == sorted(status) == ["bad", "good"]
    assert status["good"] == {"state": "configured", "reason": ""}
    assert status["bad"]["state"] == "invalid"
    assert "remote_ip" in status["bad"]["reason"]
    assert tunnels["good"]["connection"] == "ovs-192.0.2.2"
    assert tunnels["good"]["config"]["psk"] == render.REDACTED
    assert tunnels["good"]["config"]["dst_port"] == 4790
    assert [e["key"] for e in tunnels["bad"]["config"]["errors"]] == ["remote_ip"]
    assert "Interface name: good" in text and "Interface name: bad" in text
    assert "plain" not in text
    for output in (text, json.dumps(tunnels), json.dumps(status)):
        assert PSK not in output


def test_text_reports_unreachable_charon() -> None:
    """When charon cannot be reached, the text output says so and why."""
    config, statuses = snapshot_state()
    text = render.tunnels_text(config, statuses, Health(False, "connection refused"))
    assert "charon unreachable: connection refused" in text


def test_to_json_is_deterministic() -> None:
    """JSON output sorts keys, so equal states render to equal strings."""
    assert render.to_json({"b": 1, "a": {"d": 2, "c": 3}}) == render.to_json(
        {"a": {"c": 3, "d": 2}, "b": 1}
    )
