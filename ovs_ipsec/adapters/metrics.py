"""Prometheus metrics: a plain snapshot of the daemon's state -> the text exposition format,
through prometheus-client's metric families. Nothing here holds state or does I/O; the daemon
builds a `MetricsSnapshot` at scrape time and the HTTP server serves the bytes.

No label or value ever carries a secret: labels are interface names, addresses, tunnel types,
authentication modes, states and bounded cause names.

May import: prometheus_client, stdlib.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("invalid", "configured", "connecting", "ike-up", "up", "failed")
TUNNEL_LABELS = ["interface", "remote_ip", "type", "auth"]


@dataclass(frozen=True)
class TunnelMetrics:
    interface: str
    remote_ip: str
    type: str
    auth: str
    state: str
    ike_sa_up: bool = False
    child_sas_up: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    rekeys: int = 0
    protected: bool = False


@dataclass(frozen=True)
class MetricsSnapshot:
    tunnels: tuple[TunnelMetrics, ...] = ()
    # Failures seen since start, by cause (authentication, proposal, unreachable, ...).
    failures: Mapping[str, int] = field(default_factory=dict)
    # Our protection policies in the kernel, by purpose (fail-closed, ipsec_skb_mark).
    protection_policies: Mapping[str, int] = field(default_factory=dict)
    xfrm_stat: Mapping[str, int] = field(default_factory=dict)
    # Seconds until expiry, by certificate role and file.
    certificate_expiry: Mapping[tuple[str, str], float] = field(default_factory=dict)
    reconcile_seconds: float = 0.0
    reconciles: int = 0
    charon_up: bool = False
    ovsdb_up: bool = False
    # What charon lacks that a tunnel needs: capability -> the Debian package(s) providing it.
    charon_lacks: Mapping[str, str] = field(default_factory=dict)


class _Collector:
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        by_state = GaugeMetricFamily(
            "ovs_ipsec_tunnels", "IPsec tunnels by state.", labels=["state"]
        )
        counts = dict.fromkeys(STATES, 0)
        for tunnel in s.tunnels:
            counts[tunnel.state] = counts.get(tunnel.state, 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state

        state = GaugeMetricFamily(
            "ovs_ipsec_tunnel_state",
            "1 for the state each tunnel is in.",
            labels=[*TUNNEL_LABELS, "state"],
        )
        ike = GaugeMetricFamily(
            "ovs_ipsec_tunnel_ike_sa_up", "IKE_SA established (1) or not.", labels=TUNNEL_LABELS
        )
        child = GaugeMetricFamily(
            "ovs_ipsec_tunnel_child_sas_up", "Installed CHILD_SAs.", labels=TUNNEL_LABELS
        )
        protected = GaugeMetricFamily(
            "ovs_ipsec_tunnel_plaintext_protected",
            "Our block policies for this tunnel's plaintext are in the kernel (1) or not.",
            labels=TUNNEL_LABELS,
        )
        traffic = {
            name: CounterMetricFamily(f"ovs_ipsec_tunnel_{name}", text, labels=TUNNEL_LABELS)
            for name, text in (
                ("received_bytes", "ESP payload bytes received, over the current CHILD_SAs."),
                ("sent_bytes", "ESP payload bytes sent, over the current CHILD_SAs."),
                ("received_packets", "Packets received, over the current CHILD_SAs."),
                ("sent_packets", "Packets sent, over the current CHILD_SAs."),
                ("rekeys", "CHILD_SA rekeyings seen since the daemon started."),
            )
        }  # fmt: skip
        for t in s.tunnels:
            labels = [t.interface, t.remote_ip, t.type, t.auth]
            for candidate in STATES:
                state.add_metric([*labels, candidate], 1 if t.state == candidate else 0)
            ike.add_metric(labels, 1 if t.ike_sa_up else 0)
            child.add_metric(labels, t.child_sas_up)
            protected.add_metric(labels, 1 if t.protected else 0)
            traffic["received_bytes"].add_metric(labels, t.bytes_in)
            traffic["sent_bytes"].add_metric(labels, t.bytes_out)
            traffic["received_packets"].add_metric(labels, t.packets_in)
            traffic["sent_packets"].add_metric(labels, t.packets_out)
            traffic["rekeys"].add_metric(labels, t.rekeys)
        yield state
        yield ike
        yield child
        yield protected
        yield from traffic.values()

        failures = CounterMetricFamily(
            "ovs_ipsec_tunnel_failures", "Tunnel failures since start, by cause.",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in sorted(s.failures.items()):
            failures.add_metric([reason], count)
        yield failures

        policies = GaugeMetricFamily(
            "ovs_ipsec_protection_policies",
            "Block policies the daemon owns in the kernel, by purpose.",
            labels=["purpose"],
        )
        for purpose, count in sorted(s.protection_policies.items()):
            policies.add_metric([purpose], count)
        yield policies

        xfrm = CounterMetricFamily(
            "ovs_ipsec_xfrm_errors",
            "Kernel XFRM error counters (/proc/net/xfrm_stat), e.g. XfrmOutPolBlock: packets "
            "dropped by a block policy.",
            labels=["counter"],
        )
        for counter, value in sorted(s.xfrm_stat.items()):
            xfrm.add_metric([counter], value)
        yield xfrm

        expiry = GaugeMetricFamily(
            "ovs_ipsec_certificate_expiry_seconds",
            "Seconds until a certificate in use expires (negative: expired).",
            labels=["role", "file"],
        )
        for (role, path), seconds in sorted(s.certificate_expiry.items()):
            expiry.add_metric([role, path], seconds)
        yield expiry

        yield GaugeMetricFamily(
            "ovs_ipsec_reconcile_duration_seconds",
            "Duration of the last reconcile pass.",
            value=s.reconcile_seconds,
        )
        yield CounterMetricFamily(
            "ovs_ipsec_reconciles", "Reconcile passes since start.", value=s.reconciles
        )
        yield GaugeMetricFamily(
            "ovs_ipsec_charon_up", "charon's VICI socket is reachable (1) or not.",
            value=1 if s.charon_up else 0,
        )  # fmt: skip
        lacks = GaugeMetricFamily(
            "ovs_ipsec_charon_lacks",
            "1 for each algorithm or feature the connected charon lacks that a tunnel needed, "
            "with the Debian package that provides it.",
            labels=["capability", "package"],
        )
        for capability, package in sorted(s.charon_lacks.items()):
            lacks.add_metric([capability, package], 1)
        yield lacks
        yield GaugeMetricFamily(
            "ovs_ipsec_ovsdb_up", "The OVSDB connection is up (1) or not.",
            value=1 if s.ovsdb_up else 0,
        )  # fmt: skip


def render(snapshot: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)
