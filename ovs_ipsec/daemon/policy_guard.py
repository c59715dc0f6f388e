"""The PolicyGuard: the daemon's block policies in the kernel.

It alone holds what the daemon believes the kernel has of ours (`policies`), the changes of the
desired state not carried out yet, the linger of a deleted port's blocks, the retry after an
XFRM failure, and the decision whether the kernel must be listed again (`moved`). A pass calls
`protect` before charon is touched and `unprotect` after (`order_policy_changes` says which
change goes where); a pass of its own (a retry, a linger's end) calls both, without charon.

Listing and comparing thousands of policies cost, so a periodic check does neither when
nothing moved. Measured through the real netlink adapter in a network namespace on this
2-core machine (`timeit`, best of 7, two runs at different loads): at N = 1,000 tunnels (4,000
policies) `observe()` takes 50-82 ms and `policies_to_add_and_remove` (desired vs. held)
3.7-7.6 ms; at N = 5,000 (20,000 policies) 251-257 ms and 25-26 ms; `policy_count()` 0.02 ms at
both. Idle, the daemon runs four checks a minute and spends 0.03 CPU-s on them at N = 1,000
(README), against a bar of 0.1 CPU-s: listing at every check would add 0.20-0.33 CPU-s,
comparing at every check 0.015-0.03 (half the figure or all of it again). Both are therefore
skipped while nothing moved, by these rules:

* The kernel is listed (`moved`) when `policies` is unknown (start, an XFRM failure), when the
  kernel's SPD counts differ from those read just before the last listing, or at every
  LISTING_EVERY-th check (a change that keeps every count: one of ours replaced in place by
  someone's `ip xfrm policy update`). After a pass whose start found the counts as recorded,
  the counts at its end are recorded instead: what moved them in between was that pass (our
  writes, which `policies` follows, and the trap policies charon added or removed for the
  connections it loaded or unloaded, which are not ours; someone else's change to ours in
  that window waits for the LISTING_EVERY-th check). Without this, the first check after
  every change would list everything: 0.05-0.08 CPU-s more in an idle minute that starts
  within 15 s of a change at N = 1,000, twice the figure or more, and at the bar.
* Desired and held are compared at a check only when either moved since they were last found
  equal: a change of the desired state (`note`), a listing that found something else, or a
  write of our own clears `_in_line`. Between checks, a change is applied in time proportional
  to it (`policies_to_add_and_remove_for_change`).

All of this state changes only inside this class; nothing else has a counter to bump.

May import: core.block_policies, core.policy_order, core.desired, adapters.xfrm.adapter,
daemon.health, errors, stdlib.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.core.block_policies import (
    FAIL_CLOSED_PRIORITY,
    PolicySpec,
    policies_to_add_and_remove,
    policies_to_add_and_remove_for_change,
)
from ovs_ipsec.core.desired import Delta, Planner
from ovs_ipsec.core.policy_order import order_policy_changes
from ovs_ipsec.daemon.health import BULK_ACTIONS, Health, vlog
from ovs_ipsec.errors import XfrmError

# Lingering blocks' deadlines are rounded up to this many seconds, so that a burst of removals
# expires in one pass instead of waking the loop once per port.
LINGER_GRAIN = 5.0
LISTING_EVERY = 20
# After an XFRM failure the guard tries again this soon, then twice as late each time.
FIRST_RETRY = 1.0
MAX_RETRY = 8.0


class PolicyGuard:
    def __init__(
        self,
        xfrm: Xfrm,
        planner: Planner,
        health: Health,
        clock: Callable[[], float],
        *,
        linger: float,
    ) -> None:
        self.xfrm = xfrm
        self.planner = planner
        self.health = health
        self.clock = clock
        self._linger_seconds = linger
        # Our block policies in the kernel as last listed or written, updated in place (a copy
        # per change would cost a pass over thousands); None: unknown, list first. The keys of
        # a dict rather than a set: a set grown to 20,000 policies (N = 5,000) by updates has a
        # 2 MiB table, the dict 0.6 MiB (bench: 0.3 KiB less RSS per added tunnel).
        self._policies: dict[PolicySpec, None] | None = None
        self._lingering: dict[PolicySpec, float] = {}  # fail-closed blocks kept until then
        # Changes of the desired state not carried out yet. Additions go in at the next pass of
        # any kind; removals wait for a pass that touched charon.
        self._added: set[PolicySpec] = set()
        self._removed: set[PolicySpec] = set()
        self._of_deleted: set[PolicySpec] = set()  # removed because their port was deleted
        self._unprotect: tuple[PolicySpec, ...] = ()  # this pass's removals
        # The kernel's SPD counts when `policies` was last known to be the kernel's; those at
        # the start of this pass (None: not read, or not worth following).
        self._counts: str | None = None
        self._counts_at_start: str | None = None
        self._checks_since_listing = 0
        self._in_line = False  # desired and held found equal, and neither moved since
        self._failed = False  # an XFRM failure in this pass
        self._retry_at: float | None = None
        self._backoff = 0.0

    @property
    def policies(self) -> AbstractSet[PolicySpec] | None:
        """Our block policies in the kernel as last listed or written; None: unknown."""
        return None if self._policies is None else self._policies.keys()

    @property
    def lingering(self) -> int:
        return len(self._lingering)

    def note(self, delta: Delta) -> None:
        """The policies a change of the desired state added and removed."""
        added, removed = delta.policies_added, delta.policies_removed
        if not added and not removed:
            return
        self._in_line = False
        for spec in added:
            self._lingering.pop(spec, None)  # wanted again: it stays
        self._added = (self._added - removed) | added
        self._removed = (self._removed - added) | removed
        self._of_deleted = (self._of_deleted - added) | delta.policies_of_deleted

    def moved(self, counts: str | None) -> bool:
        """Must the kernel be listed before `policies` is trusted, given its SPD counts now?"""
        return (
            self.policies is None
            or counts is None
            or counts != self._counts
            or self._checks_since_listing >= LISTING_EVERY
        )

    def deadline(self) -> float | None:
        """When the guard wants a pass: after an XFRM failure, at its retry (which lists the
        kernel first); otherwise at once for additions not made yet, or at the end of a linger
        (None: never)."""
        if self._retry_at is not None:
            return self._retry_at
        if self._added:
            return self.clock()
        return min(self._lingering.values(), default=None)

    def due(self) -> bool:
        deadline = self.deadline()
        return deadline is not None and self.clock() >= deadline

    # -- one pass ---------------------------------------------------------------------------

    def protect(self, pass_id: int, *, check: bool) -> None:
        """Before charon is touched: list the kernel if it moved (at a check, or when what it
        holds is unknown), then put in every block that is missing."""
        self._failed = False
        self._counts_at_start = None
        self._unprotect = ()
        counts = self._count()
        if check:
            self._checks_since_listing += 1
        listed = False
        if self.policies is None or (check and self.moved(counts)):
            listed = self._list(pass_id, counts)
            if not listed:
                # Unknown kernel state: (re)add everything desired, remove nothing.
                self._added = set()
                self._write(pass_id, add=sorted(self.planner.policies, key=PolicySpec.sort_key))
                return
        self._counts_at_start = counts
        if (listed or check) and not self._in_line:
            to_add, to_remove = self._compare()
            self._in_line = not to_add and not to_remove
        elif listed or check:
            to_add, to_remove = (), ()  # nothing moved since they were found equal
        else:
            to_add, to_remove = policies_to_add_and_remove_for_change(
                self._held(), self._added, self._removed
            )
        self._added = set()
        changes = order_policy_changes(to_add, to_remove)
        self._unprotect = changes.after_charon
        self._write(pass_id, add=changes.before_charon)

    def unprotect(self, pass_id: int, *, after_charon: bool) -> None:
        """Remove what is no longer wanted, lingering blocks excepted. A policy the desired
        state dropped waits for a pass that touched charon (`after_charon`); a pass of the
        guard's own removes only what no such change is behind (a failed removal, an expired
        linger, a policy found in the kernel that nothing wants)."""
        held_back = () if after_charon else self._removed
        remove = self._linger(tuple(s for s in self._unprotect if s not in held_back))
        self._unprotect = ()
        if after_charon:
            self._removed = set()
            self._of_deleted = set()
        self._write(pass_id, remove=remove)
        if (
            not self._failed
            and self._counts_at_start is not None
            and self._counts_at_start == self._counts
        ):
            self._counts = self._count()  # this pass's own doing, and charon's for it
        self._settle()

    def remove_all_but_wanted(self) -> tuple[int, int]:
        """`exit` without --no-cleanup: every block policy of ours leaves the kernel but those
        the desired state still wants, which stay (and go in if missing): the fail-closed
        blocks of ports that carry IPsec options (unless ipsec_fail_open) and the
        ipsec_skb_mark blocks, so that stopping the daemon never lets out in clear what OVSDB
        says must be encrypted. (removed, kept). Raises XfrmError."""
        owned = self.xfrm.observe()
        wanted = frozenset(self.planner.policies)
        remove = owned - wanted
        self.xfrm.apply(add=sorted(wanted - owned, key=PolicySpec.sort_key),
                        remove=sorted(remove, key=PolicySpec.sort_key))  # fmt: skip
        self._policies = dict.fromkeys(wanted)
        self._lingering = {}
        return len(remove), len(wanted)

    # -- steps ------------------------------------------------------------------------------

    def _held(self) -> AbstractSet[PolicySpec]:
        assert self.policies is not None
        return self.policies

    def _compare(self) -> tuple[tuple[PolicySpec, ...], tuple[PolicySpec, ...]]:
        """Desired vs. held. Held is made of the desired state's own objects (what `_list` and
        `_write` put in), so when both hold the very same objects they are equal, which is
        told by their identities without hashing every spec: at N = 5,000 (20,000 policies)
        the first check after a change spent 30 ms comparing them spec by spec."""
        desired, held = self.planner.policies, self._held()
        if len(desired) == len(held) and {id(s) for s in desired} == {id(s) for s in held}:
            return (), ()
        return policies_to_add_and_remove(desired, held)

    def _count(self) -> str | None:
        try:
            return self.xfrm.policy_count()
        except XfrmError:
            return None

    def _list(self, pass_id: int, counts: str | None) -> bool:
        try:
            observed = self.xfrm.observe()
        except XfrmError as exc:
            self._fail(pass_id, "listing policies", exc)
            return False
        if observed != self.policies:
            if self.policies is not None:
                vlog.warn(f"[{pass_id}] protection policies changed behind our back; restoring")
            self._in_line = False
        # The wanted policies' own objects stand for the equal observed ones, so that thousands
        # of policies are not held twice.
        wanted = self.planner.policies
        self._policies = dict.fromkeys(spec for spec in wanted if spec in observed)
        self._policies.update(dict.fromkeys(spec for spec in observed if spec not in wanted))
        self._counts = counts  # read before the listing: a change during it shows next time
        self._checks_since_listing = 0
        return True

    def _linger(self, to_remove: tuple[PolicySpec, ...]) -> tuple[PolicySpec, ...]:
        """The fail-closed blocks of ports deleted from OVSDB leave only `linger` seconds
        later; every other removal (a port made plain, fail-open set, a remote_ip changed) is
        what the operator asked for, and happens now. Blocks whose linger ended leave too."""
        now = self.clock()
        remove = []
        for spec in to_remove:
            if (
                spec.priority != FAIL_CLOSED_PRIORITY
                or self._linger_seconds <= 0
                or (spec not in self._of_deleted and spec not in self._lingering)
            ):
                remove.append(spec)
                continue
            due = now + self._linger_seconds
            deadline = self._lingering.setdefault(
                spec, math.ceil(due / LINGER_GRAIN) * LINGER_GRAIN
            )
            if now >= deadline:
                del self._lingering[spec]
                remove.append(spec)
        if self.policies is None:
            return tuple(remove)  # unknown: the ended lingers wait for the listing
        for spec, deadline in list(self._lingering.items()):
            if now < deadline:
                continue
            del self._lingering[spec]
            if spec in self.policies:
                remove.append(spec)
        return tuple(remove)

    def _write(
        self, pass_id: int, add: Iterable[PolicySpec] = (), remove: Iterable[PolicySpec] = ()
    ) -> None:
        add, remove = tuple(add), tuple(remove)
        if not add and not remove:
            return
        try:
            self.xfrm.apply(add=add, remove=remove)
        except XfrmError as exc:
            self._fail(pass_id, "changing policies", exc)
            return
        self._in_line = False
        if self._policies is not None:
            self._policies.update(dict.fromkeys(add))
            for spec in remove:
                self._policies.pop(spec, None)
        verb = "installed" if add else "removed"
        held = "" if self.policies is None else f" ({len(self.policies)} in place)"
        vlog.info(f"[{pass_id}] {verb} {len(add or remove)} protection policies{held}")
        if len(add or remove) > BULK_ACTIONS:
            described = "; ".join(spec.describe() for spec in add or remove)
            vlog.dbg(f"[{pass_id}]   {verb}: {described}")
        else:
            for spec in add or remove:
                vlog.dbg(f"[{pass_id}]   {verb}: {spec.describe()}")

    def _fail(self, pass_id: int, what: str, exc: XfrmError) -> None:
        self._failed = True
        self.health.xfrm_error = str(exc)
        self._policies = None  # look again at the retry
        self._in_line = False
        vlog.err(f"[{pass_id}] kernel XFRM: {what} failed: {exc}")

    def _settle(self) -> None:
        """After a pass: retry soon after a failure (backing off), whatever charon does."""
        if self._failed:
            self._backoff = min(MAX_RETRY, max(FIRST_RETRY, self._backoff * 2))
            self._retry_at = self.clock() + self._backoff
        else:
            self._backoff = 0.0
            self._retry_at = None
            self.health.xfrm_error = ""
