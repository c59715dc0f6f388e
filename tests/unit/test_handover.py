"""The record one daemon hands the next (core/handover.py): it spares exactly the loads that
would change nothing, and never one that would. Whatever it cannot vouch for (another charon,
a changed connection or secret, a record that is not whole) is loaded as usual."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from specs import applied_after, conn, make_desired, shared

from ovs_ipsec.core import naming
from ovs_ipsec.core.connections import ConnSpec, Desired, KeySpec, SharedSpec
from ovs_ipsec.core.handover import (
    PREVIOUS_SECRET,
    Handover,
    believed,
    charon_restarted,
    decode,
    encode,
    handover_of,
)
from ovs_ipsec.core.model import Secret
from ovs_ipsec.core.reconcile import (
    Applied,
    LoadConn,
    LoadKey,
    LoadShared,
    TerminateIke,
    adopt,
    diff,
    record,
)

VERSION = "charon-systemd 5.9.8"
SINCE = "Dec 07 10:00:00 2026"
KEY = bytes(range(32))
PEERS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1"]


def restart(
    before: Applied, now: Desired, *, version: str = VERSION, since: str = SINCE
) -> tuple[Applied, str]:
    """The believed state of a daemon started on `now` after one that believed `before` exited
    cleanly, once it has listed charon (which still holds `before`)."""
    handover = decode(encode(handover_of(before, VERSION, SINCE, KEY)))
    applied, why = believed(handover, version, since, now)
    listed = adopt(frozenset(before.conns), frozenset(before.shared), applied,
                   frozenset(before.keys.values()))  # fmt: skip
    return listed, why


A = make_desired(conn(PEERS[0]), shared(PEERS[0], "Zq-a"), conn(PEERS[1]), shared(PEERS[1], "Zq-b"),
               KeySpec("sha256:k1", Secret("Zq-private-key")))  # fmt: skip


def test_nothing_changed_means_nothing_to_do() -> None:
    applied, why = restart(applied_after(A), A)
    assert why == ""
    assert diff(A, applied) == []


def test_another_charon_start_time_means_everything_is_loaded() -> None:
    applied, why = restart(applied_after(A), A, since="Dec 07 10:03:12 2026")
    assert "charon restarted" in why
    actions = diff(A, applied)
    assert {a.spec.name for a in actions if isinstance(a, LoadConn)} == set(A.conns)
    assert {a.spec.id for a in actions if isinstance(a, LoadShared)} == set(A.shared)
    assert [a for a in actions if isinstance(a, LoadKey)]


def test_another_charon_version_means_everything_is_loaded() -> None:
    applied, why = restart(applied_after(A), A, version="charon-systemd 6.0.1")
    assert "6.0.1" in why
    assert len([a for a in diff(A, applied) if isinstance(a, LoadConn)]) == len(A.conns)


def test_charon_start_time_one_second_off_is_the_same_charon() -> None:
    applied, why = restart(applied_after(A), A, since="Dec 07 10:00:01 2026")
    assert why == ""
    assert diff(A, applied) == []
    assert not charon_restarted(SINCE, "Dec 07 10:00:01 2026")
    assert charon_restarted(SINCE, "Dec 07 10:00:02 2026")


def test_a_psk_changed_meanwhile_is_loaded_and_its_ike_sas_closed() -> None:
    now = make_desired(*A.conns.values(), A.shared[naming.shared_id(PEERS[0])],
                     shared(PEERS[1], "Zq-b-new"), *A.keys.values())  # fmt: skip
    applied, _ = restart(applied_after(A), now)
    assert diff(now, applied) == [
        LoadShared(now.shared[naming.shared_id(PEERS[1])]),
        TerminateIke(naming.conn_name(PEERS[1])),
    ]


def test_a_connection_changed_meanwhile_is_loaded_alone() -> None:
    now = make_desired(conn(PEERS[0]), conn(PEERS[1], variant=1), *A.shared.values(),
                     *A.keys.values())  # fmt: skip
    applied, _ = restart(applied_after(A), now)
    assert diff(now, applied) == [LoadConn(now.conns[naming.conn_name(PEERS[1])])]


def test_what_charon_lost_meanwhile_is_loaded_again() -> None:
    handover = handover_of(applied_after(A), VERSION, SINCE, KEY)
    applied, _ = believed(handover, VERSION, SINCE, A)
    gone = naming.conn_name(PEERS[0])
    listed = adopt(frozenset(A.conns) - {gone}, frozenset(A.shared), applied,
                   frozenset({"kid-sha256:k1"}))  # fmt: skip
    assert diff(A, listed) == [LoadConn(A.conns[gone])]


def test_only_what_the_previous_daemon_loaded_is_vouched_for() -> None:
    before = applied_after(A)
    unknown = naming.conn_name(PEERS[1])
    before.conns[unknown] = None  # listed by charon, never loaded by that daemon
    handover = handover_of(before, VERSION, SINCE, KEY)
    assert unknown not in handover.conns
    applied, _ = restart(before, A)
    assert diff(A, applied) == [LoadConn(A.conns[unknown])]


def test_a_different_secret_is_never_equal_to_any_secret() -> None:
    assert Secret("") != PREVIOUS_SECRET
    assert PREVIOUS_SECRET != Secret("")  # noqa: SIM300 - both operand orders are the point
    assert PREVIOUS_SECRET == PREVIOUS_SECRET  # noqa: PLR0124 - the point


# -- the record on disk ------------------------------------------------------------------------


def test_the_record_never_holds_a_secret_in_clear() -> None:
    psk, private_key = "Zq-sup3r-s3cret-psk", "-----BEGIN PRIVATE KEY-----Zq-key"
    desired = make_desired(conn(PEERS[0]), shared(PEERS[0], psk),
                         KeySpec("sha256:k1", Secret(private_key)))  # fmt: skip
    data = encode(handover_of(applied_after(desired), VERSION, SINCE, KEY))
    for value in (psk, private_key):
        for form in (
            value.encode(),
            value.encode().hex().encode(),
            base64.b64encode(value.encode()),
        ):
            assert form not in data
    assert b"Zq-" not in data


def test_the_same_secret_has_another_digest_under_another_key() -> None:
    one = handover_of(applied_after(A), VERSION, SINCE, KEY)
    other = handover_of(applied_after(A), VERSION, SINCE, bytes(32))
    assert set(one.shared.values()).isdisjoint(other.shared.values())
    assert one.conns == other.conns


def test_a_record_reads_back_whole() -> None:
    handover = handover_of(applied_after(A), VERSION, SINCE, KEY)
    assert decode(encode(handover)) == Handover(
        VERSION, SINCE, KEY, dict(handover.conns), dict(handover.shared), dict(handover.keys)
    )


def _resealed(change: Any) -> bytes:
    """A record whose body was edited and its checksum made to match again."""
    _, _, body = encode(handover_of(applied_after(A), VERSION, SINCE, KEY)).partition(b"\n")
    record = json.loads(body)
    change(record)
    return encode_raw(json.dumps(record).encode())


def encode_raw(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body + b"\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        encode(handover_of(applied_after(A), VERSION, SINCE, KEY))[:-40],  # truncated
        encode(handover_of(applied_after(A), VERSION, SINCE, KEY)).replace(b'"conns"', b'"cnons"'),
        encode_raw(b"not json"),
        encode_raw(b"[1, 2]"),
        _resealed(lambda r: r.update(format=2)),
        _resealed(lambda r: r.pop("charon")),
        _resealed(lambda r: r.update(key="zz")),
        _resealed(lambda r: r["conns"].update({"ovs-192.0.2.9": 7})),
        _resealed(lambda r: r.update(shared=["ovs-psk-192.0.2.1"])),
        _resealed(lambda r: r["charon"].update(since=None)),
    ],
)
def test_a_record_that_is_not_whole_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


# -- safety, over many states --------------------------------------------------------------------


@st.composite
def desired_states(draw: st.DrawFn) -> Desired:
    specs: list[ConnSpec | SharedSpec | KeySpec] = []
    for peer in draw(st.lists(st.sampled_from(PEERS), unique=True)):
        specs.append(conn(peer, draw(st.integers(0, 2))))
        if draw(st.booleans()):
            specs.append(shared(peer, draw(st.sampled_from(["Zq-a", "Zq-b"]))))
    for digest in draw(st.lists(st.sampled_from(["d1", "d2"]), unique=True)):
        specs.append(KeySpec(digest, Secret(f"Zq-key-{digest}")))
    return make_desired(*specs)


@given(
    before=desired_states(),
    now=desired_states(),
    forgotten=st.sets(st.sampled_from(PEERS)),
    lost=st.sets(st.sampled_from(PEERS)),
    same_charon=st.booleans(),
)
def test_after_a_hand_over_one_diff_makes_charon_hold_exactly_what_is_wanted(
    before: Desired, now: Desired, forgotten: set[str], lost: set[str], same_charon: bool
) -> None:
    """charon held `before`; the previous daemon knew the content of all but `forgotten`;
    charon lost `lost` while no daemon ran (or was another charon). One diff on the believed
    state brings charon to `now` exactly, and loads nothing charon already held as wanted."""
    charon = applied_after(before)
    believed_before = applied_after(before)
    for peer in forgotten:
        if naming.conn_name(peer) in believed_before.conns:
            believed_before.conns[naming.conn_name(peer)] = None
        if naming.shared_id(peer) in believed_before.shared:
            believed_before.shared[naming.shared_id(peer)] = None
    handover = decode(encode(handover_of(believed_before, VERSION, SINCE, KEY)))
    for peer in lost:
        charon.conns.pop(naming.conn_name(peer), None)
        charon.shared.pop(naming.shared_id(peer), None)
    since = SINCE if same_charon else "Dec 07 11:00:00 2026"
    if not same_charon:
        charon = Applied()
    applied, _ = believed(handover, VERSION, since, now)
    applied = adopt(frozenset(charon.conns), frozenset(charon.shared), applied,
                    frozenset(charon.keys.values()))  # fmt: skip
    actions = diff(now, applied)
    for action in actions:
        key_id = f"kid-{action.spec.digest}" if isinstance(action, LoadKey) else ""
        record(charon, action, key_id)
    assert charon.conns == dict(now.conns)
    assert charon.shared == {i: spec.secret for i, spec in now.shared.items()}
    assert set(charon.keys) == set(now.keys)
    # Nothing loaded that charon held as wanted, known to the previous daemon, and kept.
    if same_charon:
        untouched = {naming.conn_name(p) for p in forgotten | lost}
        spared = {
            name for name, spec in now.conns.items()
            if before.conns.get(name) == spec and name not in untouched
        }  # fmt: skip
        assert not spared & {a.spec.name for a in actions if isinstance(a, LoadConn)}
        untouched = {naming.shared_id(p) for p in forgotten | lost}
        spared = {
            i for i, spec in now.shared.items()
            if before.shared.get(i) == spec and i not in untouched
        }  # fmt: skip
        assert not spared & {a.spec.id for a in actions if isinstance(a, LoadShared)}
