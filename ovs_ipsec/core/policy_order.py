"""When each block-policy change of a pass happens relative to charon: protect before, unprotect
after. Pure.

A pass changes the kernel's block policies and charon's connections. Every policy it adds (or
replaces in place) goes in before charon is touched: a new tunnel is blocked before its
connection (and the trap policy that would take its traffic) exists, and a tunnel that moves
to another peer is blocked towards the new peer before it is loaded there. Every policy it
removes leaves only after charon's side changed: the blocks of a tunnel that is going stay until
its connection was unloaded. So at every moment of a pass, a tunnel's traffic meets charon's
policy or our block, or is what the operator asked to flow in clear.

May import: block_policies, stdlib.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ovs_ipsec.core.block_policies import PolicySpec, not_replaced


@dataclass(frozen=True)
class PolicyChanges:
    """One pass's block-policy changes, in the order they must happen (each part sorted)."""

    before_charon: tuple[PolicySpec, ...] = ()  # added, or replaced in place by kernel key
    after_charon: tuple[PolicySpec, ...] = ()  # removed

    def __bool__(self) -> bool:
        return bool(self.before_charon or self.after_charon)


def order_policy_changes(
    to_add: Iterable[PolicySpec], to_remove: Iterable[PolicySpec]
) -> PolicyChanges:
    """Additions before charon is touched, removals after. A removal of a policy that is also
    added, or that has the kernel key of an addition (`ip xfrm policy update` replaced it in
    place, and deleting by key would delete the new one), is no removal."""
    adds = set(to_add)
    removes = not_replaced((spec for spec in to_remove if spec not in adds), adds)
    return PolicyChanges(
        before_charon=tuple(sorted(adds, key=PolicySpec.sort_key)),
        after_charon=tuple(sorted(removes, key=PolicySpec.sort_key)),
    )
