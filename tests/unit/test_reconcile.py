"""Properties of `reconcile.diff`, `record` and `adopt`: idempotence, convergence, safety order
and ownership (only what is in `Applied` is ever unloaded, and only our names get there)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import vici.protocol
from hypothesis import given
from hypothesis import strategies as st
from specs import applied_after, conn, make_desired, shared

from ovs_ipsec.adapters.charon import Charon
from ovs_ipsec.core import naming
from ovs_ipsec.core.connections import ConnSpec, Desired, KeySpec, SharedSpec
from ovs_ipsec.core.model import Secret
from ovs_ipsec.core.reconcile import (
    Applied,
    LoadConn,
    LoadKey,
    LoadShared,
    Phase,
    TerminateIke,
    UnloadConn,
    UnloadKey,
    UnloadShared,
    adopt,
    diff,
    record,
)

PEERS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"]


def apply(applied: Applied, actions: list[Any]) -> None:
    for action in actions:
        key_id = f"kid-{action.spec.digest}" if isinstance(action, LoadKey) else ""
        record(applied, action, key_id)


# -------------------------------------------------------------------------------------------
# Strategies: desired and applied states over a small pool of peers, so they overlap.


@st.composite
def desired_states(draw: st.DrawFn) -> Desired:
    peers = draw(st.lists(st.sampled_from(PEERS), unique=True))
    specs: list[ConnSpec | SharedSpec | KeySpec] = []
    for peer in peers:
        specs.append(conn(peer, draw(st.integers(0, 2))))
        if draw(st.booleans()):
            specs.append(shared(peer, draw(st.sampled_from(["Zq-a", "Zq-b"]))))
    for digest in draw(st.lists(st.sampled_from(["d1", "d2"]), unique=True)):
        specs.append(KeySpec(digest, Secret(f"Zq-key-{digest}")))
    return make_desired(*specs)


@st.composite
def applied_states(draw: st.DrawFn) -> Applied:
    conns: dict[str, Any] = {}
    for peer in draw(st.lists(st.sampled_from(PEERS), unique=True)):
        conns[naming.conn_name(peer)] = draw(
            st.one_of(st.none(), st.integers(0, 2).map(lambda v, p=peer: conn(p, v)))
        )
    secrets: dict[str, Secret | None] = {}
    for peer in draw(st.lists(st.sampled_from(PEERS), unique=True)):
        secrets[naming.shared_id(peer)] = draw(
            st.one_of(st.none(), st.sampled_from(["Zq-a", "Zq-b", "Zq-c"]).map(Secret))
        )
    keys = {d: f"kid-{d}" for d in draw(st.lists(st.sampled_from(["d1", "d2", "d3"]), unique=True))}
    return Applied(conns=conns, shared=secrets, keys=keys)


def copy_applied(applied: Applied) -> Applied:
    return Applied(conns=dict(applied.conns), shared=dict(applied.shared), keys=dict(applied.keys))


# -------------------------------------------------------------------------------------------
# Idempotence and convergence


@given(desired_states())
def test_converged_system_issues_zero_writes(desired: Desired) -> None:
    """diff(d, state after applying d) is empty: a pass on a converged system writes nothing."""
    assert diff(desired, applied_after(desired)) == []


@given(desired_states(), applied_states())
def test_applying_the_diff_converges(desired: Desired, applied: Applied) -> None:
    """From any believed state, recording every action of the diff yields exactly the desired
    state, whose diff is then empty."""
    actions = diff(desired, applied)
    apply(applied, actions)
    assert diff(desired, applied) == []
    assert applied.conns == dict(desired.conns)
    assert applied.shared == {i: spec.secret for i, spec in desired.shared.items()}
    assert set(applied.keys) == set(desired.keys)


@given(desired_states(), applied_states())
def test_diff_does_not_change_its_inputs(desired: Desired, applied: Applied) -> None:
    """diff is pure: the believed state is the same after computing the actions."""
    before = copy_applied(applied)
    diff(desired, applied)
    assert applied == before


def test_terminate_is_recorded_as_no_change() -> None:
    """TerminateIke changes no believed state (the connection stays loaded)."""
    applied = applied_after(make_desired(conn(PEERS[0])))
    before = copy_applied(applied)
    record(applied, TerminateIke(naming.conn_name(PEERS[0])))
    assert applied == before


# -------------------------------------------------------------------------------------------
# Safety order


@given(desired_states(), applied_states())
def test_actions_are_in_phase_order(desired: Desired, applied: Applied) -> None:
    """Actions come sorted by Phase: credentials before the connections that use them, loads
    before unloads, stale credentials last."""
    actions = diff(desired, applied)
    phases = [action.phase for action in actions]
    assert phases == sorted(phases)
    kinds = [type(action) for action in actions]
    order = [LoadShared | LoadKey, LoadConn, TerminateIke, UnloadConn, UnloadShared | UnloadKey]

    def rank(kind: type) -> int:
        return next(i for i, group in enumerate(order) if issubclass(kind, group))

    assert [rank(k) for k in kinds] == sorted(rank(k) for k in kinds)


def test_phase_order_example() -> None:
    """One pass that adds a peer, changes another's connection and drops a third: secret, then
    connections, then unload of the stale connection, then its secret."""
    a, b, c = PEERS[:3]
    desired = make_desired(conn(a), shared(a), conn(b, 1), shared(b))
    applied = Applied(
        conns={naming.conn_name(b): conn(b, 0), naming.conn_name(c): conn(c)},
        shared={naming.shared_id(b): Secret("Zq-psk"), naming.shared_id(c): Secret("Zq-psk")},
    )
    assert diff(desired, applied) == [
        LoadShared(shared(a)),
        LoadConn(conn(a)),
        LoadConn(conn(b, 1)),
        UnloadConn(naming.conn_name(c)),
        UnloadShared(naming.shared_id(c)),
    ]
    assert [p.name for p in Phase] == [
        "CREDENTIALS",
        "LOAD",
        "RENEGOTIATE",
        "UNLOAD",
        "UNCREDENTIAL",
    ]


# -------------------------------------------------------------------------------------------
# Secrets and unknown contents


def test_psk_change_reloads_secret_and_renegotiates() -> None:
    """A changed PSK is loaded and the peer's IKE_SA terminated (charon would keep the SA
    authenticated with the old key); the unchanged connection is not reloaded."""
    peer = PEERS[0]
    desired = make_desired(conn(peer), shared(peer, "Zq-new"))
    applied = applied_after(make_desired(conn(peer), shared(peer, "Zq-old")))
    assert diff(desired, applied) == [
        LoadShared(shared(peer, "Zq-new")),
        TerminateIke(naming.conn_name(peer)),
    ]


@pytest.mark.parametrize(
    ("believed_secret", "conn_loaded"),
    [
        pytest.param(None, True, id="secret-unknown-after-restart"),
        pytest.param("absent", True, id="secret-new"),
        pytest.param("Zq-old", False, id="conn-not-loaded"),
    ],
)
def test_secret_load_without_renegotiation(believed_secret: str | None, conn_loaded: bool) -> None:
    """When the previous secret is unknown (None, after a daemon restart) or absent, or the
    connection is not loaded, the secret is loaded without terminating any IKE_SA: a restart
    must not disturb established tunnels."""
    peer = PEERS[0]
    desired = make_desired(conn(peer), shared(peer, "Zq-new"))
    applied = Applied()
    if conn_loaded:
        applied.conns[naming.conn_name(peer)] = conn(peer)
    if believed_secret != "absent":
        applied.shared[naming.shared_id(peer)] = (
            None if believed_secret is None else Secret(believed_secret)
        )
    actions = diff(desired, applied)
    assert LoadShared(shared(peer, "Zq-new")) in actions
    assert not any(isinstance(action, TerminateIke) for action in actions)


@pytest.mark.parametrize(
    "believed",
    [None, conn(PEERS[1]), conn(PEERS[0], 1)],
    ids=["unknown", "another-peer's", "other"],
)
def test_connection_with_unknown_or_different_content_is_reloaded(believed: Any) -> None:
    """A connection whose believed content is unknown (None) or differs is loaded again under
    the same name (charon keeps established SAs of an unchanged config)."""
    peer = PEERS[0]
    desired = make_desired(conn(peer))
    applied = Applied(conns={naming.conn_name(peer): believed})
    assert diff(desired, applied) == [LoadConn(conn(peer))]


def test_key_is_loaded_once_and_unloaded_by_charon_id() -> None:
    """A private key is loaded when its digest is not believed loaded, and a stale one is
    unloaded by the id charon gave it."""
    key = KeySpec("d1", Secret("Zq-key"))
    assert diff(make_desired(key), Applied()) == [LoadKey(key)]
    assert diff(make_desired(key), Applied(keys={"d1": "kid"})) == []
    assert diff(make_desired(), Applied(keys={"d1": "kid"})) == [UnloadKey("d1", "kid")]


# -------------------------------------------------------------------------------------------
# Ownership


@given(desired_states(), applied_states())
def test_only_believed_objects_are_unloaded_or_terminated(
    desired: Desired, applied: Applied
) -> None:
    """Every unload or terminate names an object in Applied (unloads: only those no longer
    desired), so nothing charon holds outside Applied is ever touched."""
    for action in diff(desired, applied):
        if isinstance(action, UnloadConn):
            assert action.conn in applied.conns and action.conn not in desired.conns
        elif isinstance(action, UnloadShared):
            assert action.id in applied.shared and action.id not in desired.shared
        elif isinstance(action, UnloadKey):
            assert applied.keys.get(action.digest) == action.key_id
            assert action.digest not in desired.keys
        elif isinstance(action, TerminateIke):
            assert action.conn in applied.conns


FOREIGN = ["gre0", "ovs-foo", "ovs-psk-x", "ovs-", "site-to-site", "ovs-192.0.2.1-in", "psk-1"]


@given(
    st.lists(st.sampled_from(PEERS), unique=True),
    st.lists(st.sampled_from(FOREIGN), unique=True),
    desired_states(),
    applied_states(),
)
def test_foreign_objects_never_reach_any_action(
    ours: list[str], foreign: list[str], desired: Desired, previous: Applied
) -> None:
    """A charon listing mixes our objects with other applications'; filtered through the
    ownership predicates (as charon.py does) and adopted, no action of the diff ever names a
    foreign object."""
    listed_conns = [naming.conn_name(p) for p in ours] + foreign
    listed_shared = [naming.shared_id(p) for p in ours] + foreign
    applied = adopt(
        frozenset(n for n in listed_conns if naming.is_owned_conn(n)),
        frozenset(n for n in listed_shared if naming.is_owned_shared(n)),
        previous,
    )
    named = set()
    for action in diff(desired, applied):
        if isinstance(action, UnloadConn | TerminateIke):
            named.add(action.conn)
        elif isinstance(action, UnloadShared):
            named.add(action.id)
    assert not named & set(foreign)


def test_adopt_keeps_known_contents_of_listed_objects() -> None:
    """adopt: listed objects keep their believed content, newly listed ones are unknown (None),
    unlisted ones are forgotten, keys survive only if charon still lists their id; the old
    state is not modified."""
    a, b, c = (naming.conn_name(p) for p in PEERS[:3])
    sa, sb = (naming.shared_id(p) for p in PEERS[:2])
    previous = Applied(
        conns={a: {"version": "2"}, b: None},
        shared={sa: Secret("Zq-a")},
        keys={"d1": "kid1", "d2": "kid2"},
    )
    before = copy_applied(previous)
    adopted = adopt(frozenset({a, c}), frozenset({sa, sb}), previous, frozenset({"kid1"}))
    assert adopted == Applied(
        conns={a: {"version": "2"}, c: None},
        shared={sa: Secret("Zq-a"), sb: None},
        keys={"d1": "kid1"},
    )
    assert previous == before


def test_adopt_returns_the_state_itself_when_charon_lists_exactly_it() -> None:
    """A periodic check's usual case: nothing is copied; any difference (a name more or less,
    a key id gone) gives a new state."""
    a, b = (naming.conn_name(p) for p in PEERS[:2])
    sa = naming.shared_id(PEERS[0])
    held = Applied(conns={a: None, b: None}, shared={sa: None}, keys={"d1": "kid1"})
    assert adopt(frozenset({a, b}), frozenset({sa}), held, frozenset({"kid1", "x"})) is held
    for conns, secrets, key_ids in (
        (frozenset({a}), frozenset({sa}), frozenset({"kid1"})),
        (frozenset({a, b, "ovs-x"}), frozenset({sa}), frozenset({"kid1"})),
        (frozenset({a, b}), frozenset(), frozenset({"kid1"})),
        (frozenset({a, b}), frozenset({sa}), frozenset()),
    ):
        adopted = adopt(conns, secrets, held, key_ids)
        assert adopted is not held and adopted != held


# -------------------------------------------------------------------------------------------
# charon.py feeds adopt only owned names: a fake charon on a unix socket (the vici
# MockedServer pattern) answers get-conns and get-shared with a mix of ours and foreign ones.


@pytest.fixture
def fake_charon() -> Iterator[str]:
    replies = {
        "get-conns": {"conns": [b"ovs-192.0.2.2", b"gre0", b"ovs-foo", b"ovs-psk-192.0.2.2"]},
        "get-shared": {"keys": [b"ovs-psk-192.0.2.2", b"ovs-192.0.2.2", b"ovs-psk-x", b"other"]},
    }
    directory = tempfile.mkdtemp(prefix="vici", dir="/tmp")
    path = os.path.join(directory, "charon.vici")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(5)

    def serve() -> None:
        with server:
            peer, _ = server.accept()
            peer.settimeout(5)
            transport = vici.protocol.Transport(peer)
            with peer:
                while True:
                    try:
                        packet = vici.protocol.Packet.parse(transport.receive())
                    except OSError:
                        return
                    stream = packet.payload
                    command = stream.read(stream.read(1)[0]).decode()
                    message = vici.protocol.Message.serialize(replies[command])
                    transport.send(bytes([vici.protocol.Packet.CMD_RESPONSE]) + message)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    thread.join(5)
    os.unlink(path)
    os.rmdir(directory)


def test_charon_lists_only_owned_names(fake_charon: str) -> None:
    """Charon.owned_conns/owned_shared pass through only names the ownership predicates accept,
    so foreign objects never enter Applied (and so are never unloaded)."""
    charon = Charon(fake_charon, 5.0)
    try:
        conns, secrets = charon.owned_conns(), charon.owned_shared()
    finally:
        charon.close()
    assert conns == {"ovs-192.0.2.2"}
    assert secrets == {"ovs-psk-192.0.2.2"}
    applied = adopt(conns, secrets, Applied())
    assert diff(Desired(), applied) == [
        UnloadConn("ovs-192.0.2.2"),
        UnloadShared("ovs-psk-192.0.2.2"),
    ]
