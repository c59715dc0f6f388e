"""policy_order.py: which block-policy changes of a pass go in before charon is touched and
which leave after (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ovs_ipsec.core.block_policies import (
    FAIL_CLOSED_PRIORITY,
    SKB_MARK_PRIORITY,
    PolicySpec,
    policies_to_add_and_remove,
)
from ovs_ipsec.core.policy_order import PolicyChanges, order_policy_changes


def block(peer: str, direction: str = "out", proto: int = 47) -> PolicySpec:
    host = f"{peer}/32"
    src, dst = ("0.0.0.0/1", host) if direction == "out" else (host, "0.0.0.0/1")
    return PolicySpec(direction, 4, src, dst, proto, None, None, 0, 0, FAIL_CLOSED_PRIORITY)


def test_additions_go_before_charon_and_removals_after() -> None:
    new, old = block("10.0.0.9"), block("10.0.0.3")
    changes = order_policy_changes([new], [old])
    assert changes == PolicyChanges(before_charon=(new,), after_charon=(old,))
    assert changes


def test_nothing_to_change_is_false() -> None:
    assert not order_policy_changes([], [])
    assert order_policy_changes([], []) == PolicyChanges()


def test_a_policy_replaced_in_place_is_not_removed_after() -> None:
    """The kernel keys a policy by selector, direction and mark, not priority: the addition
    replaces the old one in place, and a removal by key afterwards would delete the new one."""
    old = block("10.0.0.3")
    new = old.replace(priority=SKB_MARK_PRIORITY)
    assert order_policy_changes([new], [old]) == PolicyChanges(before_charon=(new,))


def test_a_policy_both_added_and_removed_stays() -> None:
    spec = block("10.0.0.3")
    assert order_policy_changes([spec], [spec]) == PolicyChanges(before_charon=(spec,))


def test_each_part_is_sorted() -> None:
    specs = [block(f"10.0.0.{i}", d) for i in (9, 3, 5) for d in ("in", "out")]
    changes = order_policy_changes(specs, [block("10.0.1.7"), block("10.0.1.2")])
    assert list(changes.before_charon) == sorted(specs, key=PolicySpec.sort_key)
    assert changes.after_charon == (block("10.0.1.2"), block("10.0.1.7"))


PEERS = st.sampled_from([f"10.0.0.{i}" for i in range(1, 7)])
SPECS = st.builds(block, PEERS, st.sampled_from(["in", "out"]), st.sampled_from([47, 17]))


@given(st.frozensets(SPECS), st.frozensets(SPECS))
def test_applying_the_ordered_changes_reaches_the_desired_set(
    desired: frozenset[PolicySpec], held: frozenset[PolicySpec]
) -> None:
    """Before charon, the kernel holds the old and the new; after, exactly the desired."""
    changes = order_policy_changes(*policies_to_add_and_remove(desired, held))
    during = held | set(changes.before_charon)
    assert desired <= during and held <= during
    assert during - set(changes.after_charon) == desired
