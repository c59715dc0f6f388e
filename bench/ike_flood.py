"""What a flood of unauthenticated IKE_SA_INIT packets costs our daemon (issue 15 item 20).

On strongSwan 5.9.8 the daemon listens to charon's `log` event (there is no `alert`), and
charon logs every IKE packet it receives, from anyone: each packet of a flood becomes several
VICI events to decode in the daemon's only loop. This script builds a two-host lab, gives the
daemon a few tunnels to host 2, then sends IKE_SA_INIT requests (fresh SPIs, a plausible
proposal, a KE and a nonce) from host 2's namespace to host 1's port 500, as fast as one UDP
socket goes, and reports:

* the daemon's CPU seconds while idle, during the flood and until it has caught up;
* control-socket latency (a JSON-RPC `version` on the unixctl socket, every 50 ms) before,
  during and after the flood: median, 99th percentile and maximum, in milliseconds;
* charon's CPU over the same windows, for scale.

    sudo .venv/bin/python bench/ike_flood.py                    # 10,000 packets
    sudo .venv/bin/python bench/ike_flood.py --packets 50000 --json /tmp/flood.json
    sudo PYTHONPATH=/tmp/old .venv/bin/python bench/ike_flood.py   # another checkout's daemon

The lab runs the daemon of the package it was imported from (PYTHONPATH), so a `git archive`
of another commit measures that commit. Root is required (namespaces).

May import: ovs_ipsec.tools.lab, probes (this directory), stdlib.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from probes import netns_socket, proc_sample

from ovs_ipsec.tools.lab import Host, Lab, wait_for

IKE_PORT = 500
PROBE_EVERY = 0.05


# -- an IKE_SA_INIT request (RFC 7296 section 3) --------------------------------------------------


def _transform(kind: int, ident: int, last: bool, key_bits: int | None = None) -> bytes:
    attribute = struct.pack("!HH", 0x800E, key_bits) if key_bits else b""
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attribute), kind, 0, ident) + (
        attribute
    )


def ike_sa_init() -> bytes:
    """One IKE_SA_INIT request with a fresh initiator SPI: aes128-sha256-modp2048."""
    transforms = (
        _transform(1, 12, False, 128)  # ENCR_AES_CBC, 128 bits
        + _transform(2, 5, False)  # PRF_HMAC_SHA2_256
        + _transform(3, 12, False)  # AUTH_HMAC_SHA2_256_128
        + _transform(4, 14, True)  # MODP_2048
    )
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(transforms), 1, 1, 0, 4) + transforms
    sa = struct.pack("!BBH", 34, 0, 4 + len(proposal)) + proposal  # next: KE
    ke_data = struct.pack("!HH", 14, 0) + secrets.token_bytes(256)
    ke = struct.pack("!BBH", 40, 0, 4 + len(ke_data)) + ke_data  # next: Nonce
    nonce = struct.pack("!BBH", 0, 0, 4 + 32) + secrets.token_bytes(32)
    body = sa + ke + nonce
    header = (
        secrets.token_bytes(8)
        + bytes(8)
        + struct.pack("!BBBBII", 33, 0x20, 34, 0x08, 0, 28 + len(body))
    )  # next: SA; IKEv2; IKE_SA_INIT; initiator
    return header + body


def flood(sender: Host, target: str, packets: int, rate: float) -> float:
    """Send `packets` IKE_SA_INIT requests from `sender`'s namespace, `rate` a second (paced:
    a burst would mostly overflow charon's receive buffer); seconds it took."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = netns_socket(sender.ns, family, socket.SOCK_DGRAM)
    # A few hundred distinct packets, cycled: building one costs more than sending it.
    pool = [ike_sa_init() for _ in range(min(packets, 512))]
    started = time.monotonic()
    try:
        for i in range(packets):
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            packet = bytearray(pool[i % len(pool)])
            packet[0:4] = struct.pack("!I", i)  # a fresh SPI every time: a new IKE_SA each
            try:
                sock.sendto(packet, (target, IKE_PORT))
            except BlockingIOError:
                time.sleep(0.001)
    finally:
        sock.close()
    return time.monotonic() - started


# -- the control socket, timed --------------------------------------------------------------------


def control_latency(path: str, timeout: float = 10.0) -> float:
    """Seconds for one unixctl `version` round trip (a fresh connection, as ovs-appctl makes)."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"method": "version", "params": [], "id": 0}).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("control socket closed before replying")
            data += chunk
            try:
                json.loads(data)
                break
            except ValueError:
                continue
    return time.monotonic() - started


class Prober:
    """Times the control socket every PROBE_EVERY seconds on a thread of the benchmark (the
    daemon's loop is the thing measured: it must answer whatever else it is doing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.samples: list[tuple[float, float]] = []  # (when, latency)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                latency = control_latency(self.path)
            except OSError:
                latency = float("inf")
            self.samples.append((started, latency))
            self._stop.wait(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

    def between(self, start: float, end: float) -> list[float]:
        return [latency for when, latency in self.samples if start <= when < end]


# -- one measurement ------------------------------------------------------------------------------


@dataclass
class Window:
    seconds: float
    daemon_cpu: float
    charon_cpu: float
    probes: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float


def window(daemon: int, charon: int, prober: Prober, run: Callable[[], object]) -> Window:
    before_d, before_c, start = proc_sample(daemon), proc_sample(charon), time.monotonic()
    run()
    after_d, after_c, end = proc_sample(daemon), proc_sample(charon), time.monotonic()
    latencies = sorted(prober.between(start, end)) or [float("nan")]
    return Window(
        seconds=round(end - start, 2),
        daemon_cpu=round(after_d.cpu - before_d.cpu, 2),
        charon_cpu=round(after_c.cpu - before_c.cpu, 2),
        probes=len(latencies),
        latency_p50_ms=round(statistics.median(latencies) * 1000, 1),
        latency_p99_ms=round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1
        ),
        latency_max_ms=round(latencies[-1] * 1000, 1),
    )


def settle(daemon: int, quiet_cpu_per_s: float, limit: float) -> None:
    """Wait until the daemon's CPU rate is back to `quiet_cpu_per_s` (it has caught up)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = proc_sample(daemon)
        time.sleep(1.0)
        if proc_sample(daemon).cpu - before.cpu <= max(0.02, quiet_cpu_per_s * 2):
            return


def measure(packets: int, rate: float, tunnels: int, idle: float) -> dict[str, object]:
    with Lab(2, daemon_args=["--reconcile-interval=15"]) as lab:
        a, b = lab.hosts
        for i in range(tunnels):
            a.vsctl("add-port", "br0", f"t{i}", "--", "set", "interface", f"t{i}", "type=vxlan",
                    f"options:remote_ip={b.ipv4}", f"options:dst_port={4789 + i}",
                    "options:psk=flood-bench")  # fmt: skip
        wait_for(lambda: f"ovs-{b.ipv4}" in a.appctl("tunnels/show"), 30, what="tunnels shown")
        time.sleep(2)
        daemon, charon = a.daemon_pid, a.charon_pid
        assert daemon is not None and charon is not None
        with Prober(a.ctl_path) as prober:
            quiet = window(daemon, charon, prober, lambda: time.sleep(idle))
            sent: list[float] = []
            during = window(
                daemon, charon, prober, lambda: sent.append(flood(b, a.ipv4, packets, rate))
            )
            after = window(daemon, charon, prober,
                           lambda: settle(daemon, quiet.daemon_cpu / idle, 120))  # fmt: skip
        alive = a.daemon_pid == daemon and a.appctl("version", timeout=5) != ""
        log_lines = a.daemon_log().count("\n")
    return {
        "packets": packets,
        "rate": rate,
        "send_seconds": round(sent[0], 2),
        "tunnels": tunnels,
        "idle": asdict(quiet),
        "flood": asdict(during),
        "catch_up": asdict(after),
        "daemon_alive": alive,
        "daemon_log_lines": log_lines,
        "package": os.path.dirname(
            os.path.dirname(os.path.abspath(sys.modules[Lab.__module__].__file__ or ""))
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="packets a second")
    parser.add_argument("--tunnels", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    result = measure(args.packets, args.rate, args.tunnels, args.idle_seconds)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
