"""The kernel's XFRM objects as read back (`ip xfrm policy` / `ip xfrm state`, foreign ones
included): plain data that the adapter that reads them builds and that the core compares
(`ObservedPolicy.to_spec`) and renders (render_xfrm). Pure.

May import: block_policies, stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovs_ipsec.core.block_policies import PolicySpec


@dataclass(frozen=True)
class ObservedPolicy:
    """One policy as `ip xfrm policy list` shows it, foreign ones included.

    `selector_extra`/`extra` hold whatever the parser does not model (ICMP type, GRE key, device,
    if_id, security context, unknown lines); a policy with any of it cannot be a PolicySpec.
    """

    direction: str  # in, out, fwd
    family: int
    src: str  # canonical `addr/len`; host bits kept if the kernel has them
    dst: str
    proto: int | None
    sport: int | None
    dport: int | None
    action: str  # allow, block
    priority: int
    ptype: str  # main, sub
    socket: bool  # a per-socket policy (`socket in|out` line)
    mark: int
    mask: int
    index: int | None  # printed by `ip -s` only
    templates: tuple[str, ...]
    selector_extra: tuple[str, ...]
    extra: tuple[str, ...]
    text: str

    def to_spec(self) -> PolicySpec | None:
        """This policy as a PolicySpec, or None if it has anything a PolicySpec cannot express."""
        if (
            self.socket
            or self.templates
            or self.selector_extra
            or self.extra
            or self.ptype != "main"
            or self.direction not in ("in", "out")
            or self.proto is None
        ):
            return None
        try:
            return PolicySpec(
                direction=self.direction,
                family=self.family,
                src=self.src,
                dst=self.dst,
                proto=self.proto,
                sport=self.sport,
                dport=self.dport,
                mark=self.mark,
                mask=self.mask,
                priority=self.priority,
                action=self.action,
            )
        except ValueError:
            return None  # for example host bits set in a prefix


@dataclass(frozen=True)
class ObservedState:
    """One SA as `ip xfrm state` shows it (keys already redacted); `text` is its whole block."""

    src: str | None
    dst: str | None
    proto: str | None
    spi: str | None
    reqid: int | None
    mode: str | None
    selector: str | None
    text: str
