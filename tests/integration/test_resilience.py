"""Resilience end to end: restarts of the daemon, restarts and wipes of charon, ovsdb-server going
away, and a hung charon, each against the real charon, ovsdb-server and kernel in namespace hosts.

Everything is observed from outside the daemon: charon over the test's own VICI sessions, the
kernel with `ip -s xfrm policy` (a policy's index changes whenever it is replaced, so an equal index
proves it stayed), the daemon through ovs-appctl, its log and /proc.

Until the event session lands, charon restarts are noticed by the periodic check, so the tests that
need it run the daemon with a short `--reconcile-interval` (CHECK) and bound recovery by that
interval plus the daemon's retry back-off.

Over 400 lines: one test per thing that can restart or vanish, sharing the observations from
outside.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable

import pytest
from resilience_lab import (
    FAIL_CLOSED_PRIORITY,
    IkeEvents,
    LogCursor,
    add_tunnel,
    charon_actions,
    charon_writes,
    conn_names,
    conns,
    cpu_seconds,
    established,
    fail_closed_selectors,
    initiate,
    load_foreign,
    load_secret,
    ours,
    protection,
    shared_ids,
    traps,
    wait_loaded,
    xfrm_policies,
)

from ovs_ipsec.daemon.policy_guard import LISTING_EVERY
from ovs_ipsec.tools.lab import Host, Lab, wait_for

pytestmark = pytest.mark.lab

CHECK = 1.0  # --reconcile-interval of the tests that rely on the periodic check

FOREIGN_CONNS = ("other-app", "ovs-foo", "ovs-2001:DB8::1")
FOREIGN_SECRETS = ("other-secret", "ovs-psk-foo", "ovs-psk-10.77.0.010")


def stale_conn(host: Host, remote: str) -> None:
    """A connection and secret in our naming scheme that no OVSDB tunnel asks for (what a daemon
    killed before it could unload them would leave behind)."""
    body = {
        "version": "2", "local_addrs": ["%any"], "remote_addrs": [remote],
        "local": {"auth": "psk"}, "remote": {"auth": "psk", "id": remote},
        "children": {"ovs-stale": {
            "mode": "transport", "local_ts": ["dynamic[47]"], "remote_ts": ["dynamic[47]"],
            "start_action": "trap",
        }},
    }  # fmt: skip
    with host.vici() as v:
        v.load_conn({f"ovs-{remote}": body})
    load_secret(host, f"ovs-psk-{remote}", remote, "stale")


def load_foreigners(host: Host) -> None:
    load_foreign(host, "other-app", "10.77.0.240", 7001)
    load_foreign(host, "ovs-foo", "10.77.0.241", 7002)
    load_foreign(host, "ovs-2001:DB8::1", "10.77.0.242", 7003)
    load_secret(host, "other-secret", "10.77.0.240")
    load_secret(host, "ovs-psk-foo", "10.77.0.241")
    load_secret(host, "ovs-psk-10.77.0.010", "10.77.0.242")


def assert_foreigners_intact(host: Host, foreign_traps: frozenset) -> None:
    assert set(FOREIGN_CONNS) <= conn_names(host), conn_names(host)
    assert set(FOREIGN_SECRETS) <= shared_ids(host), shared_ids(host)
    missing = foreign_traps - traps(host)
    assert not missing, f"foreign trap policies replaced or removed: {missing}"


def foreign_trap_policies(host: Host) -> frozenset:
    return frozenset(p for p in traps(host) if re.search(r"10\.77\.0\.24[0-2]/", p.selector))


# -- 1. restarts of the daemon --------------------------------------------------------------------


@pytest.mark.keeps_ike_sa
def test_daemon_restarts_leave_sas_alone_apply_offline_changes_and_spare_foreigners(
    make_lab: Callable[..., Lab],
) -> None:
    """SIGTERM then start, and kill -9 then start: an established IKE_SA keeps its unique id and
    no `ike-updown` event fires on either side, and its trap policies are the very same kernel
    objects. Changes made in OVSDB while the daemon was down (a tunnel added, one removed, a PSK
    changed on both sides) are in effect once it is back; connections and secrets in our naming
    scheme that no tunnel asks for are unloaded. Another application's connections and secrets
    on the same charon (including names that merely start with `ovs-`) and their trap policies
    are never touched, through both restarts and the `exit` cleanup."""
    lab = make_lab(3)
    a, b, c = lab.hosts
    conn_b, conn_c = f"ovs-{b.ipv4}", f"ovs-{c.ipv4}"
    add_tunnel(a, "tb", "gre", b.ipv4, psk="bee-key")
    add_tunnel(b, "ta", "gre", a.ipv4, psk="bee-key")
    add_tunnel(a, "tc", "gre", c.ipv4, psk="cee-old")
    add_tunnel(c, "ta", "gre", a.ipv4, psk="cee-old")
    add_tunnel(a, "gone", "vxlan", "10.77.0.98", psk="doomed")
    wait_loaded(a, conn_b, {"ovs-tb"})
    wait_loaded(a, conn_c, {"ovs-tc"})
    wait_loaded(a, "ovs-10.77.0.98", {"ovs-gone-in", "ovs-gone-out"})
    wait_loaded(b, f"ovs-{a.ipv4}", {"ovs-ta"})
    wait_loaded(c, f"ovs-{a.ipv4}", {"ovs-ta"})
    load_foreigners(a)
    foreign_traps = foreign_trap_policies(a)
    assert len(foreign_traps) == 6, foreign_traps  # in and out for each foreign connection

    assert a.send_probe(b.ipv4, "gre") == "sent"
    wait_for(lambda: established(a, conn_b), 10, what="IKE_SA a-b established")
    sa_a = established(a, conn_b)[0]
    sa_b = established(b, f"ovs-{a.ipv4}")[0]
    traps_a, traps_b = traps(a, b.ipv4), traps(b, a.ipv4)
    assert traps_a and traps_b

    def assert_sa_untouched(when: str) -> None:
        now_a = established(a, conn_b)
        now_b = established(b, f"ovs-{a.ipv4}")
        assert [s["uniqueid"] for s in now_a] == [sa_a["uniqueid"]], f"{when}: {now_a}"
        assert [s["uniqueid"] for s in now_b] == [sa_b["uniqueid"]], f"{when}: {now_b}"
        assert traps(a, b.ipv4) == traps_a, f"{when}: trap policies on a replaced"
        assert traps(b, a.ipv4) == traps_b, f"{when}: trap policies on b replaced"

    with IkeEvents(a) as events_a, IkeEvents(b) as events_b:
        # SIGTERM; while the daemon is down: one tunnel added, one removed, one PSK changed (on
        # both sides), and leftovers in our naming scheme loaded behind its back.
        a.stop_daemon()
        log_c = len(c.daemon_log())
        add_tunnel(a, "new", "geneve", "10.77.0.99", psk="fresh")
        a.vsctl("del-port", "br0", "gone")
        a.vsctl("set", "interface", "tc", "options:psk=cee-new")
        c.vsctl("set", "interface", "ta", "options:psk=cee-new")
        stale_conn(a, "10.77.0.97")
        a.start_daemon()

        wait_loaded(a, "ovs-10.77.0.99", {"ovs-new-in", "ovs-new-out"}, timeout=5)
        wait_for(
            lambda: not ({"ovs-10.77.0.98", "ovs-10.77.0.97"} & conn_names(a))
            and not ({"ovs-psk-10.77.0.98", "ovs-psk-10.77.0.97"} & shared_ids(a)),
            5, what="the removed tunnel's and the stale connection and secret unloaded",
        )  # fmt: skip
        assert "ovs-psk-10.77.0.99" in shared_ids(a)
        assert not traps(a, "10.77.0.98") and not traps(a, "10.77.0.97")
        assert_sa_untouched("after SIGTERM and start")
        assert_foreigners_intact(a, foreign_traps)
        # The PSK changed offline is the one a's charon now authenticates c with, once c's own
        # daemon, which was running, is done with c's side of the change: its pass ends by
        # closing c's IKE_SAs with a, which would take a negotiation started before.
        c.await_psk_change(a.ipv4, since=log_c, timeout=5)
        initiate(a, conn_c, "ovs-tc")
        assert established(a, conn_c), "IKE_SA a-c with the PSK changed while the daemon was down"

        # kill -9: no chance to clean anything up; the same again.
        a.kill_daemon()
        a.vsctl("del-port", "br0", "new")
        stale_conn(a, "10.77.0.96")
        a.start_daemon()
        wait_for(
            lambda: not ({"ovs-10.77.0.99", "ovs-10.77.0.96"} & conn_names(a))
            and not ({"ovs-psk-10.77.0.99", "ovs-psk-10.77.0.96"} & shared_ids(a)),
            5, what="tunnel removed while killed, and stale objects, unloaded",
        )  # fmt: skip
        assert_sa_untouched("after kill -9 and start")
        assert_foreigners_intact(a, foreign_traps)
        assert ours(conn_names(a)) == {conn_b, conn_c}
        time.sleep(0.3)  # any event the restart caused has arrived by now
    for events, conn in ((events_a, conn_b), (events_b, f"ovs-{a.ipv4}")):
        assert not events.for_conn(conn), f"ike-updown for {conn}: {events.for_conn(conn)}"

    # `exit` cleans up ours, and only ours; the blocks of the ports that still carry IPsec
    # options stay (fail closed while the daemon is away).
    a.appctl("exit")
    wait_for(lambda: a.daemon_pid is None, 10, what="daemon exited")
    assert not ours(conn_names(a)), conn_names(a)
    assert not ours(shared_ids(a)), shared_ids(a)
    kept = {p.selector for p in protection(a)}
    assert kept == fail_closed_selectors(b.ipv4, "proto gre") | fail_closed_selectors(
        c.ipv4, "proto gre"
    )
    assert_foreigners_intact(a, foreign_traps)


@pytest.mark.keeps_ike_sa
def test_a_restart_while_charon_holds_everything_writes_nothing_but_a_psk_changed_meanwhile(
    make_lab: Callable[..., Lab],
) -> None:
    """SIGTERM leaves a record of what the daemon loaded (core/handover.py: 0600, no secret in
    it), which the next daemon reads once: finding charon holding all of it, it writes nothing
    to charon (charon's log shows every VICI request) nor to the kernel (`ip -s xfrm policy` is
    unchanged: a policy written again would show a new index or a later add time). A PSK changed
    on both sides while the daemon was down is the one thing loaded, and negotiates."""
    lab = make_lab(2)
    a, b = lab.hosts
    conn_b = f"ovs-{b.ipv4}"
    add_tunnel(a, "tb", "gre", b.ipv4, psk="old-key")
    add_tunnel(b, "ta", "gre", a.ipv4, psk="old-key")
    for i in range(3):
        add_tunnel(a, f"t{i}", "vxlan", f"10.77.0.{90 + i}", psk=f"key-{i}")
    wait_loaded(a, conn_b, {"ovs-tb"})
    for i in range(3):
        wait_loaded(a, f"ovs-10.77.0.{90 + i}", {f"ovs-t{i}-in", f"ovs-t{i}-out"})
    wait_loaded(b, f"ovs-{a.ipv4}", {"ovs-ta"})
    time.sleep(0.5)  # the daemon's pass is over

    record = f"{os.path.splitext(a.daemon_pidfile)[0]}.handover"
    policies = a.run(["ip", "-s", "xfrm", "policy"]).stdout
    a.stop_daemon()
    assert os.stat(record).st_mode & 0o777 == 0o600
    with open(record, "rb") as f:
        content = f.read()
    assert b"old-key" not in content and b"key-0" not in content
    time.sleep(1.1)  # a policy added from now on has a later add time
    charon_log = len(a.charon_log())
    a.start_daemon()  # returns once its first pass is done
    assert not os.path.exists(record), "the record is read once"
    time.sleep(0.3)
    assert charon_writes(a.charon_log()[charon_log:]) == []
    assert a.run(["ip", "-s", "xfrm", "policy"]).stdout == policies
    assert "record vouches for 4 connections and 4 secrets" in a.daemon_log()

    a.stop_daemon()
    a.vsctl("set", "interface", "tb", "options:psk=new-key")
    log_b = len(b.daemon_log())
    b.vsctl("set", "interface", "ta", "options:psk=new-key")
    charon_log, log_a = len(a.charon_log()), len(a.daemon_log())
    a.start_daemon()
    a.await_psk_change(b.ipv4, since=log_a)
    b.await_psk_change(a.ipv4, since=log_b)
    time.sleep(0.3)
    assert charon_writes(a.charon_log()[charon_log:]) == ["load-shared", "terminate"]
    initiate(a, conn_b, "ovs-tb")
    wait_for(lambda: established(a, conn_b), 10, what="IKE_SA with the PSK changed meanwhile")


# -- 2. restarts and wipes of charon --------------------------------------------------------------


def two_tunnels(make_lab: Callable[..., Lab], *daemon_args: str) -> Lab:
    """Host a with a GRE tunnel to b and a VXLAN tunnel to an absent peer; b mirrors the GRE one."""
    lab = make_lab(2, daemon_args=list(daemon_args))
    a, b = lab.hosts
    add_tunnel(a, "tb", "gre", b.ipv4, psk="bee-key")
    add_tunnel(b, "ta", "gre", a.ipv4, psk="bee-key")
    add_tunnel(a, "tx", "vxlan", "10.77.0.99", psk="ex-key")
    wait_loaded(a, f"ovs-{b.ipv4}", {"ovs-tb"})
    wait_loaded(a, "ovs-10.77.0.99", {"ovs-tx-in", "ovs-tx-out"})
    wait_loaded(b, f"ovs-{a.ipv4}", {"ovs-ta"})
    wait_for(lambda: len(protection(a)) == 8, 5, what="fail-closed policies of both tunnels")
    return lab


def charon_state(host: Host) -> tuple[dict, set[str], frozenset]:
    """What must come back after a restart or wipe: conns, our secrets, trap policies."""
    return conns(host), ours(shared_ids(host)), frozenset(p.key for p in traps(host))


@pytest.mark.keeps_ike_sa
def test_charon_restart_reloads_everything_and_protection_holds_in_between(
    make_lab: Callable[..., Lab],
) -> None:
    """charon stopped and started again (all of its state lost): while it is down the daemon
    retries with growing back-off (a few log lines, little CPU; no busy loop) and our block
    policies stay in the kernel, untouched; once charon is back every connection, secret and trap
    is reloaded within the check interval plus the back-off, and a tunnel comes up again."""
    lab = two_tunnels(make_lab, f"--reconcile-interval={CHECK:g}")
    a, b = lab.hosts
    before = charon_state(a)
    guard = protection(a)
    pid = a.daemon_pid
    assert pid is not None
    log = LogCursor(a)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    a.stop_charon()
    # The gap: charon is gone. Sample our policies while the daemon keeps failing to reach it.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert protection(a) == guard, "protection policies changed while charon was down"
        time.sleep(0.1)
    gap = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    gap_log = log.new()

    a.start_charon()
    started = time.monotonic()
    # Until events land, an outage is noticed by the periodic check (CHECK), and once noticed the
    # retry that finds charon back may be one back-off step away: the daemon retries after 0.25,
    # 0.5, 1, 2... s (at most 8), so the step is at most about the outage so far.
    bound = max(CHECK, min(8.0, gap)) + 0.5
    wait_for(lambda: charon_state(a) == before, bound + 5, what="everything reloaded")
    took = time.monotonic() - started
    assert took <= bound, f"reloaded {took:.2f} s after charon came back (bound {bound:.1f} s)"
    assert protection(a) == guard, "protection policies were replaced"
    assert a.send_probe(b.ipv4, "gre") == "sent"
    wait_for(lambda: established(a, f"ovs-{b.ipv4}"), 10, what="IKE_SA after the restart")

    # How the daemon waited: a few retries with growing delays, not a busy loop.
    retries = re.findall(r"charon unreachable \(.*\); retrying in ([0-9.]+) s", gap_log)
    assert retries, f"no retry logged while charon was down:\n{gap_log[-3000:]}"
    delays = [float(d) for d in retries]
    assert delays == sorted(delays) and delays[-1] > delays[0], f"no back-off: {delays}"
    lines = len(gap_log.splitlines())
    assert cpu < 0.2 * gap and lines < 200, (
        f"busy loop while charon was down: {cpu:.2f} s CPU and {lines} log lines in "
        f"{gap:.1f} s, for {len(retries)} retries; first lines:\n"
        + "\n".join(gap_log.splitlines()[:8])
    )


def test_external_wipe_and_manual_unload_are_restored_by_the_periodic_check(
    make_lab: Callable[..., Lab],
) -> None:
    """`swanctl --load-all` with an empty swanctl.conf unloads every VICI connection and secret,
    ours included; the periodic check notices and loads them again within its interval. A manual
    `unload-conn` of one of ours is restored the same way. Our block policies are never touched."""
    lab = two_tunnels(make_lab, f"--reconcile-interval={CHECK:g}")
    a = lab.hosts[0]
    before = charon_state(a)
    guard = protection(a)
    empty = os.path.join(a.dir, "wipe", "swanctl.conf")
    os.makedirs(os.path.dirname(empty))
    open(empty, "w").close()

    out = a.swanctl("--load-all", "--noprompt", "--file", empty)
    wiped = time.monotonic()
    assert re.search(r"no connections found, 2 unloaded", out), out
    wait_for(lambda: charon_state(a) == before, CHECK + 5, what="restored after the wipe")
    took = time.monotonic() - wiped
    assert took <= CHECK + 1.0, f"restored {took:.2f} s after the wipe (interval {CHECK:g} s)"
    assert protection(a) == guard

    conn = "ovs-10.77.0.99"
    log = LogCursor(a)
    with a.vici() as v:
        v.unload_conn({"name": conn})
    unloaded = time.monotonic()
    assert conn not in conn_names(a)
    wait_for(lambda: charon_state(a) == before, CHECK + 5, what="restored after unload-conn")
    took = time.monotonic() - unloaded
    assert took <= CHECK + 1.0, f"restored {took:.2f} s after unload-conn (interval {CHECK:g} s)"
    assert charon_actions(log.new(), beside_restarts=True) == [f"loaded connection {conn}"]
    assert protection(a) == guard


def test_periodic_check_changes_nothing_when_nothing_changed(
    make_lab: Callable[..., Lab],
) -> None:
    """With nothing changed anywhere, two dozen periodic checks load, unload and replace nothing:
    no connection or secret is sent to charon again and no policy is replaced. (charon's `stats`
    derives its start time from two clocks rounded to seconds, so it can differ by one second
    from one call to the next; that is not a restart. An interval that is not a whole number of
    seconds samples every phase of that rounding.)"""
    interval = 0.37
    lab = make_lab(1, daemon_args=[f"--reconcile-interval={interval:g}"])
    a = lab.hosts[0]
    add_tunnel(a, "t1", "gre", "10.77.0.91", psk="one")
    add_tunnel(a, "t2", "vxlan", "fd77::92", psk="two")
    wait_loaded(a, "ovs-10.77.0.91", {"ovs-t1"})
    wait_loaded(a, "ovs-fd77::92", {"ovs-t2-in", "ovs-t2-out"})
    time.sleep(interval + 0.2)
    policies = frozenset(xfrm_policies(a))
    log = LogCursor(a)
    charon_log = len(a.charon_log())
    time.sleep(24 * interval)
    new = log.new()
    checks = a.charon_log()[charon_log:].count("requests: stats")
    assert checks >= 12, f"only {checks} periodic checks in {24 * interval:.1f} s"
    ours_lines = [line for line in new.splitlines() if "| ovs-monitor-ipsec |" in line]
    assert charon_actions(new) == [], "\n".join(ours_lines[:20])
    assert "charon restarted" not in new, "\n".join(ours_lines[:20])
    assert frozenset(xfrm_policies(a)) == policies, "policies replaced in steady state"


def test_periodic_check_never_replaces_a_trap_of_a_peer_without_route(
    make_lab: Callable[..., Lab],
) -> None:
    """A tunnel without local_ip to a peer the host has no route to (yet): charon cannot resolve
    its own address and installs the trap as `0.0.0.0/0 <-> peer/32`. Our fail-closed blocks for
    the same peer and protocol are the two /1 halves of that `0.0.0.0/0`, so the kernel (which
    keys policies by selector, direction and mark, not priority) holds both side by side: neither
    overwrites the other. Periodic checks leave charon's trap and our blocks in place, the same
    kernel objects (traffic, once a route exists, hits the trap and is held for IKE instead of
    failing with EPERM), and when the tunnel turns invalid its plaintext is blocked at once by the
    blocks that were there all along, not only at a later check."""
    lab = make_lab(1, daemon_args=["--reconcile-interval=0.5"])
    a = lab.hosts[0]
    peer = "10.88.1.1"
    add_tunnel(a, "t1", "gre", peer, psk="one")
    wait_loaded(a, f"ovs-{peer}", {"ovs-t1"})
    trap_selectors = {
        f"src 0.0.0.0/0 dst {peer}/32 proto gre uid 0",
        f"src {peer}/32 dst 0.0.0.0/0 proto gre uid 0",
    }
    block_selectors = fail_closed_selectors(peer, "proto gre")
    wait_for(
        lambda: {p.selector for p in traps(a, peer)} == trap_selectors
        and {p.selector for p in protection(a)} == block_selectors,
        5, what="charon's no-route trap and our four fail-closed blocks side by side",
    )  # fmt: skip
    trap, guard = traps(a, peer), protection(a)
    assert {(p.dir, p.action, p.priority) for p in guard} == {
        (d, "block", FAIL_CLOSED_PRIORITY) for d in ("out", "in")
    }, guard
    assert all(p.action != "block" and p.priority < FAIL_CLOSED_PRIORITY for p in trap), trap

    # Three periodic checks (each asks charon for its stats), with both in the kernel.
    log = LogCursor(a)
    charon_log = len(a.charon_log())
    wait_for(lambda: a.charon_log()[charon_log:].count("requests: stats") >= 3, 10,
             what="three periodic checks")  # fmt: skip
    now = sorted((p.selector, p.dir, p.action, p.priority) for p in xfrm_policies(a))
    assert traps(a, peer) == trap, f"charon's trap was replaced; policies now {now}"
    assert protection(a) == guard, f"our blocks were replaced; policies now {now}"
    new = log.new()
    assert "behind our back" not in new, new
    assert not re.search(r"(installed|removed) \d+ protection polic", new), new
    a.run(["ip", "route", "add", "10.88.0.0/16", "dev", "eth0"])
    assert a.send_probe(peer, "gre") == "sent", "plaintext to a loaded tunnel blocked, not trapped"

    a.vsctl("set", "interface", "t1", 'options:psk=""')
    wait_for(lambda: f"ovs-{peer}" not in conn_names(a), 5, what="connection unloaded")
    assert a.send_probe(peer, "gre") == "EPERM", (
        f"an invalid tunnel's plaintext is not blocked: policies {xfrm_policies(a)}"
    )
    assert protection(a) == guard, "our blocks were replaced when the tunnel turned invalid"
    assert not traps(a, peer), traps(a, peer)


# A periodic check lists the policies when the kernel's policy counts moved, and at least every
# LISTING_EVERY-th check anyway: a change that keeps every count (one of ours replaced in place,
# or swapped for another policy) is restored within LISTING_EVERY + 1 checks.
FAST_CHECK = 0.5


@pytest.mark.parametrize(
    "tamper",
    ["delete", "update", "swap"],
)
def test_periodic_check_restores_our_blocks_changed_behind_our_back(
    make_lab: Callable[..., Lab], tamper: str
) -> None:
    """One of our fail-closed blocks goes behind the daemon's back: deleted; replaced in place
    (same kernel key) by an allow policy with `ip xfrm policy update`; or deleted while an
    unrelated policy is added, so that every policy count stays the same. Within a few periodic
    checks it is back, and the daemon says so in its log. A policy someone else put in the key's
    place is theirs (issue 15, item 15): it is reported and left alone, and ours returns once it
    is gone."""
    lab = make_lab(1, daemon_args=[f"--reconcile-interval={FAST_CHECK:g}"])
    a = lab.hosts[0]
    peer = "10.77.0.91"
    add_tunnel(a, "t1", "gre", peer, psk="one")
    wait_loaded(a, f"ovs-{peer}", {"ovs-t1"})
    expected = fail_closed_selectors(peer, "proto gre")
    wait_for(lambda: {p.selector for p in protection(a)} == expected, 5, what="t1's blocks")
    guard = frozenset(p.key for p in protection(a))

    def checks_since(offset: int) -> int:
        return a.charon_log()[offset:].count("requests: stats")

    start = len(a.charon_log())
    wait_for(lambda: checks_since(start) >= 2, 10, what="periodic checks after the install")
    log = LogCursor(a)
    victim = f"src 0.0.0.0/1 dst {peer}/32 proto gre dir out".split()
    if tamper == "update":
        a.run(["ip", "xfrm", "policy", "update", *victim, "action", "allow", "priority", "5"])
    else:
        a.run(["ip", "xfrm", "policy", "delete", *victim])
    if tamper == "swap":
        a.run(["ip", "xfrm", "policy", "add", "src", "10.9.9.9/32", "dst", "10.9.9.8/32",
               "dir", "out", "action", "allow", "priority", "7"])  # fmt: skip
    assert len(protection(a)) == 3
    if tamper == "update":
        wait_for(lambda: "not ours holds this key" in log.new(), LISTING_EVERY * FAST_CHECK * 3,
                 what="the foreign policy in our block's place reported")  # fmt: skip
        assert len(protection(a)) == 3  # theirs is left alone
        a.run(["ip", "xfrm", "policy", "delete", *victim])
    start = len(a.charon_log())
    checks = LISTING_EVERY + 1
    wait_for(lambda: len(protection(a)) == 4 or checks_since(start) >= checks,
             checks * FAST_CHECK * 3,
             what=f"our block restored, or {checks} periodic checks")  # fmt: skip
    assert frozenset(p.key for p in protection(a)) == guard, (
        f"not restored after {checks_since(start)} periodic checks: "
        f"{sorted(map(str, protection(a)))}\n"
        f"{log.new()}"
    )
    assert "behind our back" in log.new()


def test_refresh_restores_at_once_and_never_touches_protection(
    make_lab: Callable[..., Lab],
) -> None:
    """`ovs-appctl refresh` re-lists charon and restores a connection unloaded behind the
    daemon's back at once (well before the periodic check), every time it is asked; our block
    policies stay in the kernel, the same objects, throughout."""
    lab = two_tunnels(make_lab)  # default interval (15 s): only refresh can restore in time
    a = lab.hosts[0]
    before = charon_state(a)
    guard = protection(a)
    for attempt in range(3):
        with a.vici() as v:
            v.unload_conn({"name": "ovs-10.77.0.99"})
        a.appctl("refresh")
        wait_for(lambda: charon_state(a) == before, 2, what=f"refresh #{attempt + 1} restored")
        assert protection(a) == guard, (
            f"refresh #{attempt + 1} changed our protection policies: "
            f"missing {sorted(p.selector for p in guard - protection(a))}"
        )


# -- 3. OVSDB -------------------------------------------------------------------------------------


def test_ovsdb_server_away_tears_nothing_down_and_reconnect_applies_only_differences(
    make_lab: Callable[..., Lab],
) -> None:
    """ovsdb-server stopped: while it is away (several periodic checks) every connection, secret
    and block policy stays, and the daemon keeps answering. A change made to the database file
    meanwhile (offline, with ovsdb-tool) is applied once ovsdb-server is back, and only it: the
    one changed connection is loaded, nothing else is loaded, unloaded or replaced. (The old
    port's fail-closed blocks leave at once: --protection-linger=0.)"""
    lab = make_lab(1, daemon_args=[f"--reconcile-interval={CHECK:g}", "--protection-linger=0"])
    a = lab.hosts[0]
    add_tunnel(a, "t1", "gre", "10.77.0.91", psk="one")
    add_tunnel(a, "t2", "vxlan", "10.77.0.92", psk="two")
    add_tunnel(a, "t3", "geneve", "10.77.0.93", psk="three")
    for n, children in ((1, {"ovs-t1"}), (2, {"ovs-t2-in", "ovs-t2-out"}),
                        (3, {"ovs-t3-in", "ovs-t3-out"})):  # fmt: skip
        wait_loaded(a, f"ovs-10.77.0.9{n}", children)
    wait_for(lambda: len(protection(a)) == 12, 5, what="fail-closed policies")
    before = charon_state(a)
    guard = protection(a)
    log = LogCursor(a)

    a.stop_ovsdb()
    deadline = time.monotonic() + 3 * CHECK + 0.5
    while time.monotonic() < deadline:
        assert charon_state(a) == before, "charon state changed while ovsdb-server was away"
        assert protection(a) == guard, "protection changed while ovsdb-server was away"
        time.sleep(0.2)
    assert a.appctl("version")
    status = json.loads(a.appctl("ipsec/status"))
    assert set(status) == {"t1", "t2", "t3"}, status
    assert charon_actions(log.new(), beside_restarts=True) == []

    a.run(["ovsdb-tool", "transact", os.path.join(a.dir, "conf.db"), json.dumps([
        "Open_vSwitch",
        {"op": "mutate", "table": "Interface", "where": [["name", "==", "t2"]],
         "mutations": [["options", "insert", ["map", [["dst_port", "4790"]]]]]},
    ])])  # fmt: skip
    log.mark()
    a.start_ovsdb()
    # The IDL reconnects with its own back-off (up to 8 s).
    wait_for(lambda: any("dport 4790" in p.selector for p in traps(a, "10.77.0.92")), 12,
             what="t2's new dst_port applied")  # fmt: skip
    time.sleep(CHECK + 0.5)  # a periodic check after the reconnect adds nothing either
    actions = charon_actions(log.new(), beside_restarts=True)
    assert actions == ["loaded connection ovs-10.77.0.92"], actions
    after = protection(a)
    unchanged = {p for p in guard if "10.77.0.92" not in p.selector}
    assert unchanged <= after, "the other tunnels' block policies were replaced"
    new_blocks = fail_closed_selectors("10.77.0.92", "proto udp dport 4790")
    assert {p.selector for p in after - guard} == new_blocks
    # ... and the blocks for the old port went with it.
    assert {p.selector for p in after if "10.77.0.92" in p.selector} == new_blocks
    for n in (1, 3):
        assert conns(a)[f"ovs-10.77.0.9{n}"] == before[0][f"ovs-10.77.0.9{n}"]


# -- 4. a hung charon -----------------------------------------------------------------------------


def test_hung_charon_never_freezes_the_control_socket_and_converges_on_resume(
    make_lab: Callable[..., Lab],
) -> None:
    """charon SIGSTOPped while an OVSDB change is pending: `ovs-appctl version` and `ipsec/status`
    keep answering within a second; after --command-timeout the daemon reports charon unreachable
    (tunnels/show, ipsec/status, log); the new tunnel's block policies go in regardless. After
    SIGCONT the daemon converges: the pending tunnel is loaded and charon is reachable again."""
    timeout = 2.0
    lab = make_lab(1, daemon_args=[f"--reconcile-interval={CHECK:g}",
                                   f"--command-timeout={timeout:g}"])  # fmt: skip
    a = lab.hosts[0]
    add_tunnel(a, "t1", "gre", "10.77.0.91", psk="one")
    wait_loaded(a, "ovs-10.77.0.91", {"ovs-t1"})
    pid = a.charon_pid
    assert pid is not None
    log = LogCursor(a)

    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        add_tunnel(a, "t2", "vxlan", "10.77.0.92", psk="two")
        worst = 0.0
        reported_at = None
        while time.monotonic() - stopped < CHECK + timeout + 3:
            for command in ("version", "ipsec/status"):
                t = time.monotonic()
                a.appctl(command, timeout=5)
                worst = max(worst, time.monotonic() - t)
            if reported_at is None and "charon unreachable" in a.appctl("tunnels/show"):
                reported_at = time.monotonic() - stopped
            time.sleep(0.1)
        assert worst < 1.0, f"the control socket took {worst:.2f} s to answer"
        assert reported_at is not None, "charon never reported unreachable"
        assert reported_at <= CHECK + timeout + 1.5, f"reported after {reported_at:.1f} s"
        status = json.loads(a.appctl("ipsec/status"))
        assert "charon unreachable" in status["t2"]["reason"], status
        assert "charon unreachable" in log.new()
        assert any("10.77.0.92" in p.selector for p in protection(a)), (
            "the new tunnel's fail-closed policies wait for charon"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_loaded(a, "ovs-10.77.0.92", {"ovs-t2-in", "ovs-t2-out"}, timeout=15)
    wait_for(lambda: "charon unreachable" not in a.appctl("tunnels/show"), 5,
             what="charon reachable again")  # fmt: skip
    took = time.monotonic() - resumed
    # charon answers the call the daemon is waiting in, or the next retry is one back-off step
    # away: after a hang of about 6 s that step is at most 1 s.
    assert took <= 3.0, f"converged {took:.1f} s after SIGCONT"
    status = json.loads(a.appctl("ipsec/status"))
    assert {name: s["state"] for name, s in status.items()} == {
        "t1": "configured",
        "t2": "configured",
    }, status
