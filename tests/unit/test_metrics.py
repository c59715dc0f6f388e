"""Metrics exposition and the in-loop HTTP server."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import ovs.poller
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ovs_ipsec.adapters.metrics import CONTENT_TYPE, MetricsSnapshot, TunnelMetrics, render
from ovs_ipsec.adapters.metrics_http import (
    CACHE_SECONDS,
    MAX_CLIENTS,
    HttpServer,
    parse_address,
)


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
    [(":9100", ("127.0.0.1", 9100)), ("0.0.0.0:9100", ("0.0.0.0", 9100)),
     ("[::]:9100", ("::", 9100)), ("127.0.0.1:9100", ("127.0.0.1", 9100)),
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


def _serve_for(server: HttpServer, seconds: float) -> tuple[int, float]:
    """Drive `server` as the daemon's loop does (run, wait, block on a real ovs.poller) for
    `seconds`: (turns of the loop, CPU seconds this process used)."""
    turns, cpu, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        server.run()
        poller = ovs.poller.Poller()
        server.wait(poller)
        poller.timer_wait(int((end - time.monotonic()) * 1000) + 1)
        poller.block()
        turns += 1
    return turns, time.process_time() - cpu


def test_a_full_client_table_does_not_spin_the_loop() -> None:
    """With every client slot held by a silent client and one more waiting to be accepted, the
    loop sleeps (it spun at 100% CPU, about 14,000 turns a second, before: the waiting client
    kept the listener readable); the waiting client is served once a slot frees."""
    server = HttpServer(("127.0.0.1", 0), lambda path: ("200 OK", "text/plain", b"ok\n"))
    silent: list[socket.socket] = []
    try:
        for _ in range(MAX_CLIENTS):  # one at a time: the listen backlog is short
            silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            server.run()
        assert len(server.clients) == MAX_CLIENTS
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        waiting.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        turns, cpu = _serve_for(server, 1.0)
        assert turns < 20 and cpu < 0.2, (turns, cpu)
        silent.pop().close()
        _serve_for(server, 0.2)
        waiting.settimeout(2)
        assert waiting.recv(4096).startswith(b"HTTP/1.0 200 OK")
        waiting.close()
    finally:
        for sock in silent:
            sock.close()
        server.close()


def _get(server: HttpServer, path: str) -> bytes:
    client = socket.create_connection(("127.0.0.1", server.port))
    try:
        client.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        client.setblocking(False)
        reply = b""
        for _ in range(200):
            server.run()
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if not chunk:
                break
            reply += chunk
        return reply
    finally:
        client.close()


def test_a_failing_handler_answers_500_and_the_server_serves_on() -> None:
    """A bug in the handler costs that scrape a 500, not the daemon; the next scrape is
    answered again."""
    calls = []

    def handler(path: str) -> tuple[str, str, bytes]:
        calls.append(path)
        if len(calls) == 1:
            raise KeyError("a bug")
        return "200 OK", "text/plain", b"fine\n"

    logged: list[str] = []
    server = HttpServer(("127.0.0.1", 0), handler, log_error=logged.append)
    try:
        assert _get(server, "/metrics").startswith(b"HTTP/1.0 500 Internal Server Error")
        assert _get(server, "/metrics").endswith(b"fine\n")
        assert logged == ["metrics: the handler of '/metrics' failed"]
    finally:
        server.close()


def test_scrapes_within_a_second_share_one_page() -> None:
    """Work per scrape is bounded: a page is built at most once per CACHE_SECONDS, however
    often it is asked for; unknown paths are not kept."""
    now = [100.0]
    built = []

    def handler(path: str) -> tuple[str, str, bytes]:
        built.append(path)
        if path != "/metrics":
            return "404 Not Found", "text/plain", b"no\n"
        return "200 OK", "text/plain", f"page {len(built)}\n".encode()

    server = HttpServer(("127.0.0.1", 0), handler, clock=lambda: now[0])
    try:
        for _ in range(5):
            assert _get(server, "/metrics").endswith(b"page 1\n")
        now[0] += CACHE_SECONDS + 0.01
        assert _get(server, "/metrics").endswith(b"page 2\n")
        _get(server, "/x")
        _get(server, "/x")
        assert built == ["/metrics", "/metrics", "/x", "/x"]
    finally:
        server.close()


def test_the_default_host_is_loopback_only() -> None:
    """`:PORT` listens on 127.0.0.1 alone (it listened on every address before)."""
    server = HttpServer(parse_address(":0"), lambda path: ("200 OK", "text/plain", b""))
    try:
        assert server.sock.getsockname()[0] == "127.0.0.1"
    finally:
        server.close()
