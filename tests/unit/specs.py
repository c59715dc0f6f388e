"""Desired and believed charon state for the reconcile and hand-over tests: one connection and
one secret per peer, built as the planner would (names from naming)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core import naming, vici_wire
from ovs_ipsec.core.connections import AuthClass, ConnSpec, Desired, KeySpec, SharedSpec
from ovs_ipsec.core.model import Secret
from ovs_ipsec.core.reconcile import Applied


@dataclass(frozen=True, slots=True)
class BodySpec(ConnSpec):
    """A connection with a body of the test's own (`raw`, encoded) instead of a planned one."""

    raw: bytes = b""

    @property
    def wire(self) -> bytes:
        return self.raw

    @property
    def body(self) -> dict[str, Any]:
        return vici_wire.decode_message(self.raw)


def conn(remote_ip: str, variant: int = 0) -> ConnSpec:
    body = {"version": "2", "remote_addrs": [remote_ip], "children": {f"ovs-t{variant}": {}}}
    return BodySpec(
        name=naming.conn_name(remote_ip),
        remote_ip=remote_ip,
        tunnels=(f"t{variant}",),
        auth=AuthClass.PSK,
        local_id="",
        remote_id=remote_ip,
        children=((),),
        raw=vici_wire.encode_message(body),
    )


def shared(remote_ip: str, psk: str = "Zq-psk") -> SharedSpec:
    return SharedSpec(
        id=naming.shared_id(remote_ip),
        secret=Secret(psk),
        owners=(remote_ip,),
        conn=naming.conn_name(remote_ip),
    )


def make_desired(*specs: ConnSpec | SharedSpec | KeySpec) -> Desired:
    return Desired(
        conns={s.name: s for s in specs if isinstance(s, ConnSpec)},
        shared={s.id: s for s in specs if isinstance(s, SharedSpec)},
        keys={s.digest: s for s in specs if isinstance(s, KeySpec)},
    )


def applied_after(desired: Desired) -> Applied:
    """What charon holds once `desired` is fully applied."""
    return Applied(
        conns=dict(desired.conns),
        shared={secret_id: spec.secret for secret_id, spec in desired.shared.items()},
        keys={digest: f"kid-{digest}" for digest in desired.keys},
    )
