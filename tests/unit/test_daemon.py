"""The Daemon's loop on fake adapters and a fake clock (tests/unit/fakes.py): timers, linger,
retries and back-off, the SA-listing cadence, charon and OVSDB coming and going.

Only the Daemon's constructor and the surface the control socket and cli.py use are touched
(run, wait, statuses, health, converged_once, first_pass_done, explained_policies, memory_counts,
request_refresh, request_sas, cleanup, take_over, hand_over), so that these tests survive a
reshuffle of its insides; the policy guard's listing decision is also tested on the guard alone
(`moved`).
Assertions are on what the fake charon and kernel hold, what they were asked to write, and when
the Daemon asks to wake up. The same behaviours against the real components are in
tests/integration (root-only labs).

Over 400 lines: one test per behaviour of one class, grouped by section; splitting them into
files would only scatter the helpers.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from fakes import FakeClock, FakePoller, FakeXfrm, World, unread_row

from ovs_ipsec.adapters import heap
from ovs_ipsec.core.block_policies import (
    SKB_MARK_PRIORITY,
    PolicySpec,
    policies_to_add_and_remove,
)
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.daemon import policy_guard
from ovs_ipsec.daemon.health import BULK_ACTIONS, Health
from ovs_ipsec.daemon.loop import FULL_REFOLD_EVERY
from ovs_ipsec.daemon.policy_guard import LISTING_EVERY, PolicyGuard

PEERS = ("10.0.0.2", "10.0.0.3", "10.0.0.4")
CHECK = 15.0
LINGER = 30.0


def conn(peer: str) -> str:
    return f"ovs-{peer}"


def secret(peer: str) -> str:
    return f"ovs-psk-{peer}"


def add_tunnel(world: World, index: int, peer: str, kind: str = "gre") -> None:
    world.ovsdb.set_row(f"uuid-{index}", f"{kind}{index}", kind, remote_ip=peer, psk=f"s{index}")


def wanted(world: World) -> set[PolicySpec]:
    """Every block policy the daemon wants now (what `protection/show` explains)."""
    return set(world.daemon.explained_policies())


def blocks_of(world: World, peer: str) -> set[PolicySpec]:
    """The fail-closed blocks the daemon wants for `peer` now."""
    host = f"{peer}/32"
    return {p for p in wanted(world) if host in (p.src, p.dst)}


def converged(peers: tuple[str, ...] = PEERS, **kw: float) -> World:
    world = World(**kw)
    for index, peer in enumerate(peers):
        add_tunnel(world, index, peer)
    world.settle()
    assert sorted(world.charon.conns) == sorted(conn(p) for p in peers)
    assert world.xfrm.policies == wanted(world)
    return world


# -- converging, and staying quiet ---------------------------------------------------------------


def test_first_pass_loads_every_tunnel_behind_its_blocks() -> None:
    world = converged()
    assert sorted(world.charon.shared) == sorted(secret(p) for p in PEERS)
    assert set(world.states().values()) == {"configured"}
    assert world.daemon.converged_once and world.daemon.health.charon_reachable
    for peer in PEERS:
        # Protect before: the peer's blocks were in the kernel before its first load-conn.
        assert blocks_of(world, peer)
        assert blocks_of(world, peer) <= world.charon.kernel_at_first_load[conn(peer)]


def test_converged_checks_write_nothing_and_wake_only_for_checks() -> None:
    world = converged()
    charon_writes, kernel_writes = len(world.charon.writes), len(world.xfrm.writes)
    listings = world.xfrm.listings
    started = len(world.wakeups)
    world.run_for(8 * CHECK)
    assert world.charon.writes[charon_writes:] == []
    assert world.xfrm.writes[kernel_writes:] == []
    assert world.xfrm.applies[-1] < world.clock() - 7 * CHECK  # no empty apply either
    # After our own changes the first check lists the policies once; then the kernel's
    # counters stand still and no check lists them again.
    assert world.xfrm.listings <= listings + 1
    assert len(world.wakeups) - started <= 8 + 2  # the checks, and run_for's first and last
    assert world.last_timeout is not None and 0 < world.last_timeout <= CHECK


def test_wait_sleeps_until_the_next_check() -> None:
    world = converged()
    world.run_for(1.0)
    poller = FakePoller()
    world.daemon.wait(poller)
    assert poller.timeout == pytest.approx(CHECK - 1.0, abs=0.02)


def test_a_new_port_is_protected_before_its_connection_is_loaded() -> None:
    world = converged()
    add_tunnel(world, 9, "10.0.0.9")
    world.settle()
    assert conn("10.0.0.9") in world.charon.conns
    assert blocks_of(world, "10.0.0.9") <= world.charon.kernel_at_first_load[conn("10.0.0.9")]
    assert world.xfrm.policies == wanted(world)


def test_a_port_made_plain_loses_its_blocks_only_after_its_unload() -> None:
    world = converged()
    blocks = blocks_of(world, "10.0.0.3")
    world.ovsdb.set_row("uuid-1", "gre1", "gre", remote_ip="10.0.0.3")  # psk gone: plain
    world.settle()
    assert conn("10.0.0.3") not in world.charon.conns
    assert secret("10.0.0.3") not in world.charon.shared
    assert not blocks & world.xfrm.policies  # what the operator asked for: at once, no linger
    for spec in blocks:
        assert conn("10.0.0.3") not in world.xfrm.charon_at_removal[spec]


# -- linger ----------------------------------------------------------------------------------------


def test_blocks_of_a_deleted_port_linger_then_expire() -> None:
    world = converged()
    blocks = blocks_of(world, "10.0.0.3")
    world.run_for(2.0)
    world.ovsdb.delete_row("uuid-1")
    world.settle()
    deleted_at = world.clock()
    # The connection goes at once; its fail-closed blocks stay.
    assert conn("10.0.0.3") not in world.charon.conns
    assert blocks <= world.xfrm.policies
    assert world.daemon.memory_counts()["lingering"] == len(blocks)
    world.run_for(LINGER - 0.5)
    assert blocks <= world.xfrm.policies
    world.run_for(5.5)
    assert not blocks & world.xfrm.policies
    assert world.daemon.memory_counts()["lingering"] == 0
    assert world.xfrm.policies == wanted(world)
    # Removed when the linger ended (rounded up to a 5 s grain, so that a burst of deletions
    # ends together): a wake-up of its own, not the next check's.
    removed_at = {at for kind, _, at in world.xfrm.writes if kind == "remove"}
    assert len(removed_at) == 1
    (at,) = removed_at
    assert deleted_at + LINGER <= at < deleted_at + LINGER + 5.0
    assert at % 5.0 == pytest.approx(0.0, abs=1e-6)
    assert (at - deleted_at) % CHECK > 0.5  # not a check's time
    for spec in blocks:
        assert conn("10.0.0.3") not in world.xfrm.charon_at_removal[spec]


def test_a_port_re_added_while_its_blocks_linger_never_goes_unprotected() -> None:
    world = converged()
    blocks = blocks_of(world, "10.0.0.3")
    kernel_writes = len(world.xfrm.writes)
    world.ovsdb.delete_row("uuid-1")
    world.run_for(3.0)
    # OVS re-created the port (a restart): another row, the same port.
    world.ovsdb.set_row("uuid-1b", "gre1", "gre", remote_ip="10.0.0.3", psk="s1")
    world.run_for(LINGER + 10.0)
    assert blocks <= world.xfrm.policies
    assert conn("10.0.0.3") in world.charon.conns
    assert [w for w in world.xfrm.writes[kernel_writes:] if w[0] == "remove"] == []


def test_linger_zero_removes_the_blocks_of_a_deleted_port_at_once() -> None:
    world = converged(protection_linger=0.0)
    blocks = blocks_of(world, "10.0.0.3")
    world.ovsdb.delete_row("uuid-1")
    world.settle()
    assert not blocks & world.xfrm.policies
    assert conn("10.0.0.3") not in world.charon.conns


# -- kernel XFRM failures ----------------------------------------------------------------------


def test_a_refused_block_add_is_retried_within_a_second() -> None:
    world = converged()
    add_tunnel(world, 9, "10.0.0.9")
    world.xfrm.refuse_add = {p for p in _planned_blocks(world, 9, "10.0.0.9")}
    world.settle()
    assert world.daemon.health.xfrm_error
    assert not world.xfrm.refuse_add & world.xfrm.policies
    world.xfrm.refuse_add = set()
    world.run_for(1.5)
    assert blocks_of(world, "10.0.0.9") <= world.xfrm.policies
    assert world.daemon.health.xfrm_error == ""


def test_netlink_failing_at_start_is_retried_within_a_second_then_backing_off() -> None:
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.xfrm.broken = "Connection timed out"
    world.settle()
    failed_at = world.xfrm.applies[-1]
    assert world.daemon.health.xfrm_error
    world.run_for(40.0)
    retries = [t for t in world.xfrm.applies if t > failed_at]
    gaps = [b - a for a, b in itertools.pairwise([failed_at, *retries])]
    # The first retry within about a second; then backing off (no retry sooner than that, far
    # fewer than one a second, none further apart than the periodic check).
    assert gaps and gaps[0] <= 1.05
    assert min(gaps) >= 0.99
    assert len(retries) <= 10
    assert max(gaps) <= CHECK
    world.xfrm.broken = None
    world.run_for(max(gaps) + 0.5)
    assert world.xfrm.policies == wanted(world)
    assert world.daemon.health.xfrm_error == ""


def test_charon_is_loaded_although_the_kernel_refuses_blocks() -> None:
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.xfrm.broken = "Connection timed out"
    world.settle()
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert world.daemon.health.xfrm_error
    world.xfrm.broken = None
    world.run_for(CHECK + 1.0)
    assert world.xfrm.policies == wanted(world)
    assert world.daemon.health.xfrm_error == ""


def test_a_refused_block_removal_is_retried_within_a_second() -> None:
    world = converged(protection_linger=0.0)
    blocks = blocks_of(world, "10.0.0.3")
    world.xfrm.refuse_remove = set(blocks)
    world.ovsdb.delete_row("uuid-1")
    world.settle()
    assert blocks <= world.xfrm.policies
    assert world.daemon.health.xfrm_error
    world.xfrm.refuse_remove = set()
    world.run_for(1.5)
    assert not blocks & world.xfrm.policies
    assert world.daemon.health.xfrm_error == ""


def test_blocks_flushed_behind_the_daemons_back_return_at_the_next_check() -> None:
    world = converged()
    world.xfrm.policies.clear()
    world.run_for(CHECK + 0.5)
    assert world.xfrm.policies == wanted(world)
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)


def _planned_blocks(world: World, index: int, peer: str) -> set[PolicySpec]:
    """The blocks a tunnel to `peer` will get, from a scratch world's planner."""
    scratch = World()
    add_tunnel(scratch, index, peer)
    scratch.settle()
    return blocks_of(scratch, peer)


def test_a_refused_block_add_is_retried_within_a_second_while_charon_backs_off() -> None:
    """The guard's retry has its own timer: charon's back-off (8 s by now) does not hold it."""
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.charon.stop()
    world.run_for(30.0)
    attempts = len(world.charon.connect_attempts)
    world.xfrm.refuse_add = _planned_blocks(world, 9, "10.0.0.9")
    add_tunnel(world, 9, "10.0.0.9")
    world.settle()
    # Tried at once, not at charon's next retry.
    assert world.xfrm.applies[-1] == pytest.approx(world.clock(), abs=0.02)
    assert world.daemon.health.xfrm_error
    world.xfrm.refuse_add = set()
    world.run_for(1.05)
    assert blocks_of(world, "10.0.0.9") <= world.xfrm.policies
    assert world.daemon.health.xfrm_error == ""
    assert len(world.charon.connect_attempts) <= attempts + 1
    assert not world.daemon.health.charon_reachable


def test_new_blocks_go_in_at_once_while_charon_backs_off() -> None:
    world = World()
    add_tunnel(world, 0, PEERS[0])
    world.charon.stop()
    world.run_for(30.0)
    add_tunnel(world, 9, "10.0.0.9")
    world.settle()
    assert blocks_of(world, "10.0.0.9") <= world.xfrm.policies


def test_blocks_no_longer_wanted_leave_only_with_a_pass_that_goes_to_charon() -> None:
    """While charon's retry waits, a port made plain keeps its blocks (its connection may still
    be in charon); they leave with the next pass, after charon's side."""
    world = converged()
    blocks = blocks_of(world, "10.0.0.3")
    world.charon.unreachable = True
    world.daemon.request_refresh()
    world.run_for(20.0)  # charon's back-off reaches 8 s
    world.ovsdb.set_row("uuid-1", "gre1", "gre", remote_ip="10.0.0.3")  # psk gone: plain
    add_tunnel(world, 9, "10.0.0.9")  # a guard pass of its own for the new blocks
    world.settle()
    assert blocks_of(world, "10.0.0.9") <= world.xfrm.policies
    assert blocks <= world.xfrm.policies
    world.run_for(8.5)
    assert not blocks & world.xfrm.policies


# -- listing the kernel ----------------------------------------------------------------------


def test_checks_list_the_kernel_only_every_twentieth_time_while_nothing_moves() -> None:
    world = converged()
    listed = world.xfrm.listings
    world.run_for(19 * CHECK)
    assert world.xfrm.listings == listed  # the counts stood still
    world.run_for(CHECK)
    assert world.xfrm.listings == listed + 1  # the LISTING_EVERY-th check lists anyway


def test_a_foreign_policy_moving_the_counts_makes_the_next_check_list_once() -> None:
    world = converged()
    world.run_for(CHECK)
    listed = world.xfrm.listings
    world.xfrm.foreign += 1  # someone's policy: the counts move, ours stand
    world.run_for(CHECK)
    assert world.xfrm.listings == listed + 1
    world.run_for(3 * CHECK)
    assert world.xfrm.listings == listed + 1
    assert world.xfrm.writes[-1][2] < world.clock() - 4 * CHECK + 1  # nothing to restore


def test_one_of_ours_replaced_in_place_is_restored_within_twenty_checks() -> None:
    """A change that keeps every count (`ip xfrm policy update` on one of ours) is seen only
    by the LISTING_EVERY-th check's listing."""
    world = converged()
    spec = sorted(blocks_of(world, "10.0.0.2"), key=PolicySpec.sort_key)[0]
    swapped = spec.replace(priority=SKB_MARK_PRIORITY)
    world.xfrm.policies = (world.xfrm.policies - {spec}) | {swapped}
    world.run_for(CHECK)
    assert swapped in world.xfrm.policies
    world.run_for(20 * CHECK)
    assert world.xfrm.policies == wanted(world)


def test_our_own_changes_do_not_make_the_next_check_list() -> None:
    """The counts are followed across a pass that found them as recorded: what moved them
    was that pass (and charon's traps for it)."""
    world = converged()
    world.run_for(CHECK)
    listed = world.xfrm.listings
    add_tunnel(world, 9, "10.0.0.9")
    world.settle()
    world.ovsdb.delete_row("uuid-1")
    world.run_for(LINGER + 2 * CHECK)
    assert world.xfrm.policies == wanted(world)
    assert world.xfrm.listings == listed


def test_checks_compare_desired_and_held_only_when_either_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = converged()
    world.run_for(CHECK)
    compared: list[float] = []

    compare = PolicyGuard._compare

    def counted(guard: PolicyGuard) -> Any:
        compared.append(world.clock())
        return compare(guard)

    monkeypatch.setattr(PolicyGuard, "_compare", counted)
    world.run_for(3 * CHECK)
    assert compared == []
    world.xfrm.foreign += 1  # listed at the next check, and found as held
    world.run_for(2 * CHECK)
    assert compared == []
    add_tunnel(world, 9, "10.0.0.9")  # desired moved (and held, by our own writes)
    world.run_for(3 * CHECK)
    assert len(compared) == 1


def test_desired_and_held_compared_by_identity_first_then_spec_by_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same objects on both sides are equal without hashing each; equal copies, or one
    more or less, go through the full comparison, which finds what differs."""
    world = converged()
    guard = world.daemon.guard
    full: list[int] = []

    def counted(*args: Any) -> Any:
        full.append(1)
        return policies_to_add_and_remove(*args)

    monkeypatch.setattr(policy_guard, "policies_to_add_and_remove", counted)
    assert guard._compare() == ((), ()) and full == []
    held = guard._policies
    assert held is not None
    copies = {spec.replace(): None for spec in held}
    guard._policies = copies
    assert guard._compare() == ((), ()) and len(full) == 1
    missing = next(iter(copies))
    del copies[missing]
    assert guard._compare() == ((missing,), ()) and len(full) == 2


def test_the_guard_lists_when_unknown_when_the_counts_moved_or_every_twentieth_check() -> None:
    xfrm = FakeXfrm()
    clock = FakeClock()
    planner = Planner(lambda paths: {}, unread_row)
    guard = PolicyGuard(xfrm, planner, Health(), clock, linger=LINGER)  # type: ignore[arg-type]
    assert guard.moved(xfrm.policy_count())  # nothing known yet
    guard.protect(1, check=True)
    guard.unprotect(1, after_charon=True)
    assert xfrm.listings == 1
    counts = xfrm.policy_count()
    assert not guard.moved(counts)
    assert guard.moved(None)  # the counts could not be read
    xfrm.foreign += 1
    assert guard.moved(xfrm.policy_count())
    xfrm.foreign -= 1
    for check in range(2, LISTING_EVERY + 1):  # checks 1 to 19 after the listing
        guard.protect(check, check=True)
        guard.unprotect(check, after_charon=True)
    assert xfrm.listings == 1
    assert not guard.moved(counts)
    guard.protect(99, check=True)  # the 20th lists, counts or not
    assert xfrm.listings == 2
    guard.unprotect(99, after_charon=True)
    guard.protect(100, check=False)  # a pass between checks never lists a known kernel
    xfrm.foreign += 1
    guard.unprotect(100, after_charon=True)
    guard.protect(101, check=False)
    assert xfrm.listings == 2


# -- charon refusing ---------------------------------------------------------------------------


def test_a_refusal_in_the_middle_of_a_pipelined_load_leaves_the_others_loaded() -> None:
    peers = tuple(f"10.0.1.{i}" for i in range(1, 31))  # a bulk load: over BULK_ACTIONS
    world = World()
    world.charon.refuse[("load-conn", conn(peers[14]))] = "invalid proposal"
    for index, peer in enumerate(peers):
        add_tunnel(world, index, peer)
    world.settle()
    assert set(world.charon.conns) == {conn(p) for p in peers} - {conn(peers[14])}
    assert set(world.charon.shared) == {secret(p) for p in peers}
    # The loads after the refusal went ahead in the same pass.
    loads = [w.target for w in world.charon.writes if w.command == "load-conn"]
    assert loads == sorted(conn(p) for p in peers)
    assert set(world.daemon.health.failures) == {conn(peers[14])}
    assert "invalid proposal" in world.daemon.health.failures[conn(peers[14])]
    states = world.states()
    assert states.pop("gre14") == "failed"
    assert set(states.values()) == {"configured"}


def test_a_refused_secret_is_reported_and_retried() -> None:
    world = World()
    world.charon.refuse[("load-shared", secret("10.0.0.3"))] = "bad secret"
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    assert secret("10.0.0.3") not in world.charon.shared
    assert world.states()["gre1"] == "failed"  # its IKE_SA could not authenticate
    world.charon.refuse.clear()
    world.run_for(2 * CHECK + 0.5)
    assert secret("10.0.0.3") in world.charon.shared


def test_a_refused_secret_is_reported_until_its_connection_loads() -> None:
    world = World()
    world.charon.refuse[("load-shared", secret("10.0.0.3"))] = "bad secret"
    world.charon.refuse[("load-conn", conn("10.0.0.3"))] = "invalid proposal"
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    assert world.states()["gre1"] == "failed"
    world.charon.refuse.clear()
    world.run_for(CHECK + 0.5)
    assert conn("10.0.0.3") in world.charon.conns
    assert secret("10.0.0.3") in world.charon.shared
    assert world.daemon.health.failures == {}


def test_a_refused_load_is_retried_at_each_check_until_charon_takes_it() -> None:
    world = World()
    world.charon.refuse[("load-conn", conn("10.0.0.3"))] = "invalid proposal"
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    world.run_for(3 * CHECK)
    attempts = [w for w in world.charon.writes if w.target == conn("10.0.0.3")]
    # Once at start and once per check: neither a spin nor given up.
    assert 3 <= len(attempts) <= 5
    assert all(w.refused for w in attempts)
    others = [w for w in world.charon.writes if w.command == "load-conn" and not w.refused]
    assert len(others) == 2  # the others are not reloaded with it
    world.charon.refuse.clear()
    world.run_for(CHECK)
    assert conn("10.0.0.3") in world.charon.conns
    assert world.daemon.health.failures == {}
    assert set(world.states().values()) == {"configured"}


def test_a_refused_change_undone_loads_the_connection_again_and_clears_its_failure() -> None:
    """A change charon refuses leaves what it holds unknown: undone, the connection is loaded
    again at the next check, and the refusal is history."""
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    world.charon.refuse[("load-conn", conn("10.0.0.3"))] = "invalid proposal"
    world.ovsdb.set_row("uuid-1", "gre1", "gre", remote_ip="10.0.0.3", psk="s1",
                        ipsec_dpddelay="40")  # fmt: skip
    world.settle()
    assert world.states()["gre1"] == "failed"
    world.charon.refuse.clear()
    add_tunnel(world, 1, "10.0.0.3")  # the change undone
    world.run_for(CHECK + 0.5)
    assert world.daemon.health.failures == {}
    assert world.states()["gre1"] == "configured"


# -- charon unreachable, lost and back ---------------------------------------------------------


def test_charon_unreachable_at_start_backs_off_to_eight_seconds_and_protects_meanwhile() -> None:
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.charon.stop()
    world.run_for(40.0)
    gaps = [b - a for a, b in itertools.pairwise(world.charon.connect_attempts)]
    assert gaps[:6] == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 8.0], abs=0.01)
    assert all(gap == pytest.approx(8.0, abs=0.01) for gap in gaps[6:])
    # Protection does not wait for charon.
    assert world.xfrm.policies == wanted(world)
    assert not world.daemon.health.charon_reachable and world.daemon.health.charon_error
    assert not world.daemon.converged_once
    world.charon.start()
    world.run_for(8.5)
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert world.daemon.health.charon_reachable and world.daemon.converged_once
    assert world.events is not None and world.events.connected
    assert world.charon.listings  # SAs listed once it was back


def test_charon_restarting_is_noticed_through_the_event_session_and_reloaded() -> None:
    world = converged()
    assert world.events is not None and world.events.connected
    world.run_for(2.0)
    world.charon.stop()
    world.turn()  # the event session's end wakes the loop
    assert not world.daemon.health.charon_reachable
    assert {s.state.value for s in world.daemon.statuses().values()} == {"failed"}
    world.run_for(3.0)
    world.charon.start()
    listed = len(world.charon.listings)
    world.run_for(8.0)
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert sorted(world.charon.shared) == sorted(secret(p) for p in PEERS)
    assert world.daemon.health.charon_reachable
    assert world.events.connected and world.events.subscriptions == 2
    assert len(world.charon.listings) > listed
    assert set(world.states().values()) == {"configured"}


def test_charon_restarted_between_checks_without_events_is_reloaded_at_the_next_check() -> None:
    world = converged(with_events=False)
    world.run_for(2.0)
    world.clock.advance(2.0)  # the restart takes time: a new `since`
    world.charon.stop()
    world.charon.start()
    world.run_for(CHECK)
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert sorted(world.charon.shared) == sorted(secret(p) for p in PEERS)


def test_charon_unreachable_but_holding_everything_is_not_reloaded() -> None:
    world = converged()
    loads = len(world.charon.writes)
    world.charon.unreachable = True
    world.daemon.request_refresh()  # the next pass asks charon, and finds it gone
    world.run_for(5.0)
    assert not world.daemon.health.charon_reachable
    world.charon.unreachable = False
    world.run_for(10.0)
    assert world.daemon.health.charon_reachable
    assert world.charon.writes_since(loads) == []


def test_charon_lost_in_the_middle_of_a_pipeline_is_reloaded_after_back_off() -> None:
    world = World()
    world.charon.fail_after_writes = 2
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    assert not world.daemon.health.charon_reachable
    world.run_for(1.0)
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert sorted(world.charon.shared) == sorted(secret(p) for p in PEERS)
    assert world.daemon.health.charon_reachable and world.daemon.converged_once


def test_a_connection_unloaded_behind_the_daemons_back_is_reloaded_alone() -> None:
    world = converged()
    writes = len(world.charon.writes)
    del world.charon.conns[conn("10.0.0.4")]  # swanctl --unload-conn, or --load-all
    world.run_for(CHECK + 0.5)
    assert [(w.command, w.target) for w in world.charon.writes_since(writes)] == [
        ("load-conn", conn("10.0.0.4"))
    ]


# -- SA listings and events ----------------------------------------------------------------------


def test_sas_are_listed_at_connect_then_at_each_check() -> None:
    world = converged()
    start = world.charon.listings[0]
    world.run_for(4 * CHECK + 1.0)
    offsets = [round(t - start, 2) for t in world.charon.listings]
    assert offsets == [0.0, 15.0, 30.0, 45.0, 60.0]


def test_a_burst_of_events_costs_one_listing_no_sooner_than_half_a_second_after_the_last() -> None:
    world = converged()
    assert world.events is not None
    world.run_for(5.0)
    before = len(world.charon.listings)
    for uniqueid, peer in enumerate(PEERS, start=1):
        world.events.emit("ike-updown", world.charon.establish(conn(peer), uniqueid))
    world.turn()
    # The events alone move the states, before any listing.
    assert set(world.states().values()) == {"up"}
    world.run_for(2.0)
    assert len(world.charon.listings) == before + 1
    assert set(world.states().values()) == {"up"}


def test_events_right_after_a_listing_wait_half_a_second_for_the_next() -> None:
    world = converged()
    assert world.events is not None
    last = world.charon.listings[-1]
    world.events.emit("ike-updown", world.charon.establish(conn("10.0.0.2"), 1))
    world.turn()
    assert world.last_timeout is not None
    assert world.clock() + world.last_timeout == pytest.approx(last + 0.5, abs=0.002)
    world.run_for(1.0)
    assert world.charon.listings[-1] == pytest.approx(last + 0.5, abs=0.002)


def test_request_sas_lists_soon_and_refresh_checks_now() -> None:
    world = converged()
    world.run_for(5.0)
    listed = len(world.charon.listings)
    world.daemon.request_sas()
    world.turn()
    assert len(world.charon.listings) == listed + 1
    policy_listings = world.xfrm.listings
    del world.charon.conns[conn("10.0.0.2")]
    world.daemon.request_refresh()
    world.turn()
    assert conn("10.0.0.2") in world.charon.conns  # a check now, not in 10 s
    assert world.xfrm.listings >= policy_listings


def test_without_events_the_sas_are_still_listed_at_each_check() -> None:
    world = converged(with_events=False)
    start = world.charon.listings[0]
    world.charon.establish(conn("10.0.0.2"), 7)
    world.run_for(CHECK + 0.5)
    assert [round(t - start, 2) for t in world.charon.listings] == [0.0, 15.0]
    assert world.states()["gre0"] == "up"


# -- OVSDB lost and back -------------------------------------------------------------------------


def test_ovsdb_reconnecting_unchanged_writes_nothing() -> None:
    world = converged()
    charon_writes, kernel_writes = len(world.charon.writes), len(world.xfrm.writes)
    world.ovsdb.disconnect()
    world.run_for(2 * CHECK)
    world.ovsdb.reconnect()
    world.run_for(CHECK)
    assert world.charon.writes_since(charon_writes) == []
    assert world.xfrm.writes[kernel_writes:] == []


def test_ovsdb_reconnecting_applies_what_changed_meanwhile_and_nothing_else() -> None:
    world = converged(protection_linger=0.0)
    charon_writes = len(world.charon.writes)
    world.ovsdb.disconnect()
    world.ovsdb.delete_row("uuid-0")  # 10.0.0.2 goes
    add_tunnel(world, 7, "10.0.0.7")  # 10.0.0.7 comes
    world.run_for(2 * CHECK)
    # Nothing seen while disconnected: the IDL keeps what it had.
    assert world.charon.writes_since(charon_writes) == []
    world.ovsdb.reconnect()
    world.settle()
    peers = ("10.0.0.3", "10.0.0.4", "10.0.0.7")
    assert sorted(world.charon.conns) == sorted(conn(p) for p in peers)
    touched = {w.target for w in world.charon.writes_since(charon_writes)}
    assert touched == {conn("10.0.0.2"), secret("10.0.0.2"), conn("10.0.0.7"), secret("10.0.0.7")}
    assert world.xfrm.policies == wanted(world)


def test_a_restarted_daemon_leaves_the_kernel_alone() -> None:
    world = converged()
    kernel_writes = len(world.xfrm.writes)
    world.restart_daemon()
    world.settle()
    assert world.daemon.converged_once
    assert world.xfrm.writes[kernel_writes:] == []
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert set(world.states().values()) == {"configured"}


def test_a_restarted_daemon_finds_charon_holding_everything_and_writes_nothing() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    world.restart_daemon()
    world.settle()
    assert world.daemon.converged_once
    assert world.charon.writes_since(charon_writes) == []


def test_a_psk_changed_while_the_daemon_was_down_is_the_only_write() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    world.ovsdb.server["uuid-1"] = dataclasses.replace(
        world.ovsdb.server["uuid-1"], options={"remote_ip": "10.0.0.3", "psk": "changed"}
    )
    world.restart_daemon()
    world.settle()
    writes = [(w.command, w.target) for w in world.charon.writes_since(charon_writes)]
    # The new secret, then the IKE_SAs made with the old one closed, as while running.
    assert writes == [("load-shared", secret("10.0.0.3")), ("terminate", conn("10.0.0.3"))]
    assert set(world.states().values()) == {"configured"}


def test_a_restart_after_a_crash_loads_everything_again() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    world.restart_daemon(clean=False)
    world.settle()
    loaded = {w.target for w in world.charon.writes_since(charon_writes)}
    assert loaded == {conn(p) for p in PEERS} | {secret(p) for p in PEERS}


def test_a_record_left_for_a_charon_since_restarted_is_not_believed() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    record = world.daemon.hand_over()
    world.charon.stop()
    world.clock.advance(5.0)
    world.charon.start()
    world.restart_daemon(clean=False)
    assert record is not None
    world.daemon.take_over(record)
    world.settle()
    loaded = {w.target for w in world.charon.writes_since(charon_writes)}
    assert loaded == {conn(p) for p in PEERS} | {secret(p) for p in PEERS}
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)


def test_a_corrupt_record_is_ignored_and_everything_loaded() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    record = world.daemon.hand_over()
    assert record is not None
    world.restart_daemon(clean=False)
    world.daemon.take_over(record[:-10])
    world.settle()
    assert len(world.charon.writes_since(charon_writes)) == 2 * len(PEERS)


def test_a_record_outlives_a_daemon_that_never_reached_charon() -> None:
    world = converged()
    charon_writes = len(world.charon.writes)
    world.charon.unreachable = True
    world.restart_daemon()
    world.run_for(3.0)
    world.restart_daemon()  # the record it was given, passed on
    world.charon.unreachable = False
    world.settle()
    assert world.daemon.converged_once
    assert world.charon.writes_since(charon_writes) == []


def test_nothing_is_touched_before_ovsdb_is_first_read() -> None:
    world = converged()
    charon_writes, kernel_writes = len(world.charon.writes), len(world.xfrm.writes)
    world.restart_daemon(ovsdb_ready=False)
    world.turn()
    world.clock.advance(2 * CHECK)
    world.turn()
    assert not world.daemon.first_pass_done
    assert world.charon.writes_since(charon_writes) == []
    assert world.xfrm.writes[kernel_writes:] == []
    world.ovsdb.first_contents()
    world.settle()
    assert world.daemon.converged_once
    assert sorted(world.charon.conns) == sorted(conn(p) for p in PEERS)
    assert [w for w in world.charon.writes[charon_writes:] if w.command.startswith("unload")] == []
    assert world.xfrm.writes[kernel_writes:] == []


def test_the_loop_sleeps_while_ovsdb_is_not_read_yet() -> None:
    world = World()
    world.ovsdb.ready = False
    world.run_for(2 * CHECK)  # Spinning if wait() keeps asking to wake at once


# -- cleanup -----------------------------------------------------------------------------------


def test_cleanup_takes_out_our_connections_and_secrets_but_keeps_wanted_blocks() -> None:
    """`exit` (what `ovs-ctl stop-ovs-ipsec` sends) unloads ours from charon; the blocks of
    ports that still carry IPsec options stay, so that their traffic does not leave in clear
    while the daemon is away (issue 15, item 12). A deleted port's lingering blocks go."""
    world = converged()
    world.ovsdb.delete_row("uuid-2")
    world.settle()
    lingering = blocks_of(_converged_scratch(), PEERS[2])
    assert lingering <= world.xfrm.policies  # kept for the linger
    world.charon.conns["someone-elses"] = {}
    world.daemon.cleanup()
    assert world.charon.conns == {"someone-elses": {}}
    assert world.charon.shared == {}
    assert world.xfrm.policies == wanted(world)
    assert blocks_of(world, PEERS[0]) and blocks_of(world, PEERS[0]) <= world.xfrm.policies
    assert not lingering & world.xfrm.policies


def test_cleanup_keeps_skb_mark_blocks_and_puts_missing_blocks_in() -> None:
    world = converged()
    world.ovsdb.set_other_config(ipsec_skb_mark="0/1")
    world.settle()
    marked = {p for p in wanted(world) if p.priority == SKB_MARK_PRIORITY}
    assert marked
    world.xfrm.policies.clear()  # flushed behind our back just before the exit
    world.daemon.cleanup()
    assert world.xfrm.policies == wanted(world) and marked <= world.xfrm.policies


def test_cleanup_with_fail_open_and_no_mark_removes_every_block() -> None:
    world = converged()
    world.ovsdb.set_other_config(ipsec_fail_open="true")
    world.settle()
    world.daemon.cleanup()
    assert world.xfrm.policies == set()


def _converged_scratch() -> World:
    return converged()


def test_an_sa_an_event_announced_is_listed_again_until_seen_then_given_up() -> None:
    world = converged()
    assert world.events is not None
    world.run_for(2.0)
    event_at = world.clock()
    before = len(world.charon.listings)
    body = world.charon.establish(conn("10.0.0.2"), 5)
    del world.charon.sas[conn("10.0.0.2")]  # busy in charon: list-sas (noblock) skips it
    world.events.emit("ike-updown", body)
    world.run_for(CHECK - 2.0 - 0.5)
    rechecks = world.charon.listings[before:]
    # A listing at once (the last was seconds ago), then every half second while the SA is
    # missing, ten in all; then nothing until the next check.
    assert len(rechecks) == 10
    intervals = [round(b - a, 3) for a, b in itertools.pairwise([event_at, *rechecks])]
    assert intervals == [0.0] + [0.5] * 9
    assert world.states()["gre0"] == "up"  # what the event said stands meanwhile


def test_an_sa_an_event_announced_stops_the_rechecks_once_listed() -> None:
    world = converged()
    assert world.events is not None
    world.run_for(2.0)
    before = len(world.charon.listings)
    world.events.emit("ike-updown", world.charon.establish(conn("10.0.0.2"), 5))
    world.run_for(5.0)
    assert len(world.charon.listings) == before + 1


def test_the_event_session_lost_alone_reconnects_without_reloading() -> None:
    world = converged()
    assert world.events is not None
    writes = len(world.charon.writes)
    world.run_for(2.0)
    world.events.lose("Connection reset by peer")
    world.turn()
    assert not world.daemon.health.charon_reachable  # both sessions go, as for a restart
    world.run_for(2.0)
    assert world.daemon.health.charon_reachable
    assert world.events.connected and world.events.subscriptions == 2
    assert world.charon.writes_since(writes) == []  # the same charon: nothing to reload
    assert set(world.states().values()) == {"configured"}


# -- a bug met while planning one tunnel --------------------------------------------------------


def test_an_exception_planning_one_tunnel_is_logged_and_the_daemon_carries_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """issue 15 item 5: an exception in planning (OverflowError from a 64 KiB VICI value) left
    the loop and stopped the daemon, again at every restart. Now that tunnel is invalid, its
    traceback logged, and every other tunnel loaded and protected."""
    from ovs_ipsec.core import desired
    from ovs_ipsec.daemon import loop

    original = desired.parse_tunnel

    def parse_tunnel(row: Any, *args: Any) -> Any:
        if row.name == "gre1":
            raise OverflowError("int too big to convert")
        return original(row, *args)

    logged: list[str] = []
    monkeypatch.setattr(desired, "parse_tunnel", parse_tunnel)
    monkeypatch.setattr(loop.vlog, "err", logged.append)
    world = World()
    for index, peer in enumerate(PEERS):
        add_tunnel(world, index, peer)
    world.settle()
    assert sorted(world.charon.conns) == [conn(PEERS[0]), conn(PEERS[2])]
    assert blocks_of(world, PEERS[1]) and world.xfrm.policies == wanted(world)
    assert logged[0] == "gre1: internal error while planning; it is invalid"
    assert any("OverflowError: int too big to convert" in line for line in logged)
    assert "internal error" in world.daemon.statuses()["gre1"].reason


def test_log_events_dropped_in_a_flood_are_reported_at_most_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """issue 15 item 20: what the event session dropped for want of budget is said in the log,
    with its count, without the report becoming a flood of its own."""
    from ovs_ipsec.adapters.events import Received
    from ovs_ipsec.daemon import sa_watch

    class FloodedEvents:
        connected = True

        def receive(self) -> Received:
            return Received([], None, dropped_logs=700)

    warned: list[str] = []
    monkeypatch.setattr(sa_watch.vlog, "warn", warned.append)
    clock = FakeClock()
    watch = sa_watch.SaWatch(None, FloodedEvents(), Health(), lambda conns: None,  # type: ignore[arg-type]
                             clock, command_timeout=5)  # fmt: skip
    for _ in range(10):  # 10 s of flood
        watch.run_events()
        clock.advance(1.0)
    assert len(warned) == 1 and "700 log events dropped undecoded" in warned[0]
    for _ in range(55):
        watch.run_events()
        clock.advance(1.0)
    assert len(warned) == 2 and f"{700 * 60} log events dropped" in warned[1]


def test_log_events_dropped_right_after_our_own_bulk_load_are_no_flood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """charon logs several lines about each connection a bulk load (a cold start, thousands of
    ports added at once) gave it: dropping those while their backlog is read is no "IKE flood"
    warning (one debug line says how many); a flood after that, or one that outlasts
    OWN_BURST_MAX_SECONDS, still is."""
    from ovs_ipsec.adapters.events import Received
    from ovs_ipsec.daemon import sa_watch

    class Events:
        connected = True
        dropped = 700

        def receive(self) -> Received:
            return Received([], None, dropped_logs=self.dropped)

    warned: list[str] = []
    debug: list[str] = []
    monkeypatch.setattr(sa_watch.vlog, "warn", warned.append)
    monkeypatch.setattr(sa_watch.vlog, "dbg", debug.append)
    clock = FakeClock()
    events = Events()
    watch = sa_watch.SaWatch(None, events, Health(), lambda conns: None,  # type: ignore[arg-type]
                             clock, command_timeout=5)  # fmt: skip
    watch.expect_own_burst()
    events.dropped = 0
    watch.run_events()  # the first reads of the backlog fit in the budget
    events.dropped = 700
    for _ in range(20):  # the rest of it, read every 0.1 s (the event session's throttle)
        watch.run_events()
        clock.advance(0.1)
    assert not warned and not debug
    events.dropped = 0
    clock.advance(0.5)
    watch.run_events()  # a second's first reads fit in the budget: the backlog may go on
    events.dropped = 700
    watch.run_events()
    events.dropped = 0
    clock.advance(1.0)
    watch.run_events()  # nothing dropped for a second: read, the burst is over
    assert not warned and debug == [
        f"{700 * 21} of charon's log events about our bulk load dropped undecoded "
        f"(more than {sa_watch.LOG_BUDGET} a second)"
    ]
    events.dropped = 700
    watch.run_events()  # a flood of its own
    assert len(warned) == 1 and "700 log events dropped undecoded" in warned[0]
    watch.expect_own_burst()  # a burst that does not end: a flood after all
    clock.advance(sa_watch.OWN_BURST_MAX_SECONDS + sa_watch.DROPPED_REPORT_EVERY)
    watch.run_events()
    assert len(warned) == 2


# -- the garbage collector -----------------------------------------------------------------------


def test_the_first_pass_and_bulk_loads_are_frozen_and_unfrozen_every_twentieth_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(heap, "settle", lambda: calls.append("settle"))
    monkeypatch.setattr(heap, "resettle", lambda: calls.append("resettle"))
    world = converged()
    assert calls == ["settle"]  # the first pass
    add_tunnel(world, 3, "10.0.0.5")
    world.settle()
    assert calls == ["settle"]  # a change of a few tunnels leaves the collector alone
    for index in range(4, 4 + BULK_ACTIONS + 1):
        add_tunnel(world, index, f"10.0.1.{index}")
    world.settle()
    assert calls == ["settle", "settle"]  # a bulk load
    world.run_for(FULL_REFOLD_EVERY * CHECK + 1)
    assert calls == ["settle", "settle", "resettle"]
