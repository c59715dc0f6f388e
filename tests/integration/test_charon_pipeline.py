"""The charon adapter's pipelined requests against a real charon: one outcome per request, in
order, a refusal in the middle costing only that request, and what charon holds afterwards the
same as with one request at a time."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

from ovs_ipsec.adapters.charon import (
    PIPELINE_WINDOW,
    SUCCESS,
    Charon,
    load_conn_request,
    load_shared_request,
    unload_shared_request,
)
from ovs_ipsec.core import vici_wire
from ovs_ipsec.core.connections import AuthClass, ConnSpec, SharedSpec
from ovs_ipsec.core.model import Secret
from ovs_ipsec.errors import CharonError
from ovs_ipsec.tools.lab import Lab

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
from specs import BodySpec  # noqa: E402 - the unit tests' connection of a body of its own

pytestmark = pytest.mark.lab


def conn_spec(peer: str) -> ConnSpec:
    name = f"ovs-{peer}"
    body = {
        "version": "2",
        "remote_addrs": [peer],
        "local": {"auth": "psk", "id": "10.77.0.1"},
        "remote": {"auth": "psk", "id": peer},
        "children": {
            f"ovs-t-{peer}": {"local_ts": ["dynamic[gre]"], "remote_ts": ["dynamic[gre]"],
                              "mode": "transport", "start_action": "trap"},
        },
    }  # fmt: skip
    return spec(name, peer, f"t-{peer}", body)


def spec(name: str, peer: str, tunnel: str, body: dict[str, Any]) -> ConnSpec:
    """A connection of any body (identities and children as status would show them unused)."""
    return BodySpec(name=name, remote_ip=peer, tunnels=(tunnel,), auth=AuthClass.PSK,
                    local_id="", remote_id=peer, children=((),),
                    raw=vici_wire.encode_message(body))  # fmt: skip


def secret_spec(peer: str) -> SharedSpec:
    return SharedSpec(id=f"ovs-psk-{peer}", secret=Secret("s3cret"), owners=(peer,),
                      conn=f"ovs-{peer}")  # fmt: skip


def test_pipeline_outcomes_in_order_with_a_refusal_in_the_middle(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab(1, daemon=False)
    host = lab.hosts[0]
    charon = Charon(host.vici_path, timeout=10)
    peers = [f"10.201.{i // 250}.{i % 250 + 1}" for i in range(3 * PIPELINE_WINDOW)]
    broken = spec("ovs-10.99.0.1", "10.99.0.1", "bad", {"proposals": ["no-such-algorithm"]})
    requests = [load_shared_request(secret_spec(p)) for p in peers]
    requests += [load_conn_request(conn_spec(p)) for p in peers[:50]]
    requests.append(load_conn_request(broken))
    requests += [load_conn_request(conn_spec(p)) for p in peers[50:]]
    requests.append(unload_shared_request(f"ovs-psk-{peers[0]}"))

    outcomes = charon.pipeline(requests)

    assert len(outcomes) == len(requests)
    # charon's plain success is recognised undecoded: one shared reply for all (memory).
    assert outcomes[0] is SUCCESS and outcomes[-1] is SUCCESS
    refused = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, CharonError)]
    assert refused == [len(peers) + 50], outcomes[refused[0]] if refused else None
    error = outcomes[refused[0]]
    assert isinstance(error, CharonError) and error.command == "load-conn" and error.errmsg
    assert charon.owned_conns() == {f"ovs-{p}" for p in peers}
    assert charon.owned_shared() == {f"ovs-psk-{p}" for p in peers[1:]}
    # The session is usable for ordinary calls afterwards.
    assert charon.version()["daemon"] == "charon-systemd"
    assert charon.pipeline([]) == []
    charon.close()
