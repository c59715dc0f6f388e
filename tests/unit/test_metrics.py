"""Metrics exposition and the in-loop HTTP server."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ovs_ipsec.adapters.metrics import CONTENT_TYPE, MetricsSnapshot, TunnelMetrics, render
from ovs_ipsec.adapters.metrics_http import HttpServer, parse_address


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_names_follow_prometheus_conventions_and_values_are_right() -> None:
    """Counters end in _total, units are base units, states are one-hot, nothing secret."""
    snap = MetricsSnapshot(
        tunnels=(
            TunnelMetrics("t0", "10.0.0.2", "gre", "psk", "ike-up", ike_sa_up=True,
                          protected=True),
            TunnelMetrics("t1", "fd00::2", "vxlan", "ca-signed", "failed", bytes_in=5),
        ),
        failures={"authentication": 2},
        protection_policies={"fail-closed": 4},
        xfrm_stat={"XfrmOutPolBlock": 3},
        certificate_expiry={("certificate", "/etc/c.pem"): 86400.0},
        reconcile_seconds=0.25,
        reconciles=7,
        charon_up=True,
    )  # fmt: skip
    got = samples(render(snap))
    assert got[("ovs_ipsec_tunnels", (("state", "ike-up"),))] == 1
    assert got[("ovs_ipsec_tunnels", (("state", "failed"),))] == 1
    labels = (("auth", "psk"), ("interface", "t0"), ("remote_ip", "10.0.0.2"), ("type", "gre"))
    assert got[("ovs_ipsec_tunnel_state", tuple(sorted((*labels, ("state", "ike-up")))))] == 1
    assert got[("ovs_ipsec_tunnel_state", tuple(sorted((*labels, ("state", "up")))))] == 0
    assert got[("ovs_ipsec_tunnel_ike_sa_up", labels)] == 1
    assert got[("ovs_ipsec_tunnel_plaintext_protected", labels)] == 1
    assert got[("ovs_ipsec_tunnel_failures_total", (("reason", "authentication"),))] == 2
    assert got[("ovs_ipsec_xfrm_errors_total", (("counter", "XfrmOutPolBlock"),))] == 3
    assert got[("ovs_ipsec_protection_policies", (("purpose", "fail-closed"),))] == 4
    assert got[("ovs_ipsec_reconciles_total", ())] == 7
    assert got[("ovs_ipsec_charon_up", ())] == 1
    assert got[("ovs_ipsec_ovsdb_up", ())] == 0
    key = (
        "ovs_ipsec_certificate_expiry_seconds",
        (("file", "/etc/c.pem"), ("role", "certificate")),
    )
    assert got[key] == 86400.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9100", ("", 9100)), ("127.0.0.1:9100", ("127.0.0.1", 9100)),
     ("[::1]:9", ("::1", 9))],
)  # fmt: skip
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9100", "host:", "host:x", ":70000"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="metrics-address"):
        parse_address(text)


def test_server_answers_a_real_client_from_its_loop() -> None:
    """A real HTTP client gets the metrics while the server is driven only by run() calls,
    as the daemon's loop drives it; unknown paths get 404, and a silent client is dropped."""
    body = render(MetricsSnapshot(charon_up=True))

    def handler(path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, body
        return "404 Not Found", "text/plain", b"not found\n"

    server = HttpServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.run()
            stop.wait(0.005)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
            assert reply.status == 200
            assert reply.read() == body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/other", timeout=5)
        assert err.value.code == 404
        err.value.close()
        idle = socket.create_connection(("127.0.0.1", server.port))
        idle.close()
    finally:
        stop.set()
        thread.join()
        server.close()
