"""Kernel XFRM: observe, change and count the daemon's own block policies over netlink
(`xfrm.netlink`); list the whole table through iproute2 for display (parsed by
`xfrm.iproute2`).

`ip` runs through `proc.run` (bounded by `timeout`), for status commands and when netlink fails;
everything acts in the network namespace the process runs in. `Xfrm` is the thin I/O shell.

May import: errors, proc, log_text, block_policies, xfrm.iproute2, xfrm.netlink, stdlib.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovs_ipsec.adapters.xfrm import netlink as xfrm_netlink
from ovs_ipsec.adapters.xfrm.iproute2 import (
    iter_policies,
    owned_specs,
    parse_xfrm_stat,
    redact_states,
)
from ovs_ipsec.core.block_policies import PolicySpec, is_owned, not_replaced
from ovs_ipsec.errors import CommandError, XfrmError

if TYPE_CHECKING:
    from ovs_ipsec.adapters import proc

XFRM_STAT_PATH = "/proc/net/xfrm_stat"


@dataclass(frozen=True)
class Operation:
    kind: str  # "add" or "remove"
    spec: PolicySpec


@dataclass(frozen=True)
class PolicyFailure:
    operation: Operation
    error: str

    def describe(self) -> str:
        return f"{self.operation.kind} {self.operation.spec.describe()}: {self.error}"


# An error names this many failed changes and counts the rest by error: the kernel refusing
# thousands of policies (EPERM without CAP_NET_ADMIN) would otherwise make one log line, and
# one control reply, of hundreds of kilobytes at every retry.
SHOWN_FAILURES = 3


class XfrmApplyError(XfrmError):
    """Some policy changes failed; every other change was still made. `failures` holds them
    all; the message names the first few and counts the rest."""

    def __init__(self, failures: Sequence[PolicyFailure], attempted: int) -> None:
        self.failures = tuple(failures)
        self.attempted = attempted
        listed = "; ".join(f.describe() for f in self.failures[:SHOWN_FAILURES])
        rest = len(self.failures) - SHOWN_FAILURES
        if rest > 0:
            by_error = Counter(f.error for f in self.failures).most_common()
            counted = ", ".join(f"{n} {error}" for error, n in by_error)
            listed += f"; and {rest} more (in all: {counted})"
        super().__init__(
            f"{len(self.failures)} of {attempted} XFRM policy changes failed: {listed}"
        )


class Xfrm:
    """The kernel's XFRM policy table in this process's network namespace: listed through
    iproute2, changed and counted over netlink."""

    def __init__(
        self,
        timeout: float = 10.0,
        *,
        ip: str = "ip",
        stat_path: str = XFRM_STAT_PATH,
    ) -> None:
        self.timeout = timeout
        self._ip = ip
        self._stat_path = stat_path

    # -- reading ----------------------------------------------------------------------------

    def policies_text(self) -> str:
        """`ip xfrm policy` as printed, for display."""
        return self._ip_text("xfrm", "policy", "list")

    def states_text(self) -> str:
        """`ip xfrm state` as printed, keys redacted, for display."""
        return redact_states(self._ip_text("xfrm", "state", "list"))

    def observe(self) -> frozenset[PolicySpec]:
        """The daemon's own policies (`is_owned`); foreign ones are never returned.

        A block at our priority that carries something we never set (a device, a template, a
        sub policy type, an ICMP type...) is not something we created, so it is not ours either.
        Dumped over netlink, one message at a time (no `ip` process, no listing text of
        thousands of policies held at once); through `ip` if netlink fails.
        """
        try:
            return frozenset(
                spec for spec in xfrm_netlink.dump_policies(self.timeout) if is_owned(spec)
            )
        except OSError:
            # Ours are all blocks: `ip` leaves everything else (charon's traps and SAs'
            # policies, thousands of them) out before we parse.
            blocks = self._ip_text("xfrm", "policy", "list", "action", "block")
            return owned_specs(iter_policies(blocks))

    def read_xfrm_stat(self) -> dict[str, int]:
        try:
            with open(self._stat_path, encoding="ascii") as handle:
                return parse_xfrm_stat(handle.read())
        except OSError as exc:
            raise XfrmError(f"cannot read {self._stat_path}: {exc.strerror or exc}") from exc

    # -- changing ---------------------------------------------------------------------------

    def apply(self, add: Iterable[PolicySpec] = (), remove: Iterable[PolicySpec] = ()) -> None:
        """Install `add` (create, or replace one of ours with the same key), then delete `remove`
        (only ours), over netlink (`xfrm_netlink.send_policy_ops`).

        All additions go before any removal, and a removal with the same kernel key as an
        addition is dropped (the update replaced it). A removal whose policy is already gone
        counts as done. Failures are per policy: the others are still applied, then
        XfrmApplyError lists what failed. If netlink itself fails or times out, XfrmError at
        once (the table is then in an unknown state; observe again).
        """
        adds = list(add)
        removes = list(remove)
        kept = not_replaced(removes, adds)
        removes = [spec for spec in removes if spec in kept]  # in the caller's order
        # Plain pairs: an Operation is made only for a failure.
        ops = [("add", s) for s in adds] + [("remove", s) for s in removes]
        if not ops:
            return
        try:
            errors = xfrm_netlink.send_policy_ops(ops, self.timeout)
        except OSError as exc:
            raise XfrmError(f"netlink: {exc.strerror or exc}") from exc
        failures = [
            PolicyFailure(Operation(kind, spec), _describe_error(error))
            for (kind, spec), error in zip(ops, errors, strict=True)
            if error and not (kind == "remove" and error == errno.ENOENT)
        ]
        if failures:
            raise XfrmApplyError(failures, len(ops))

    # -- plumbing ---------------------------------------------------------------------------

    def policy_count(self) -> str:
        """The kernel's policy counters: a cheap fingerprint. A periodic check lists every
        policy only when this changed since the last listing. Asked over netlink (what `ip xfrm
        policy count` sends, without starting a process); through `ip` if that fails."""
        try:
            return " ".join(str(n) for n in xfrm_netlink.spd_counts(self.timeout))
        except OSError:
            return " ".join(self._ip_text("xfrm", "policy", "count").split())

    def _ip_text(self, *args: str) -> str:
        result = self._ip_run(list(args), None)
        if result.returncode != 0:
            raise XfrmError(f"ip {' '.join(args)}: {_error_text(result)}")
        return result.stdout

    def _ip_run(self, args: list[str], stdin: str | None) -> proc.Result:
        # Loaded when `ip` is first needed (a status command, a netlink failure): the daemon's
        # own work is all over netlink, and subprocess is half a MiB of its memory.
        from ovs_ipsec.adapters import proc

        try:
            return proc.run([self._ip, *args], timeout=self.timeout, input=stdin, check=False)
        except CommandError as exc:
            raise XfrmError(f"ip {' '.join(args)}: {exc.stderr or exc}") from exc


def _describe_error(error: int) -> str:
    if error == xfrm_netlink.FOREIGN_POLICY:
        return "a policy that is not ours holds this key (selector, direction, mark); left alone"
    return os.strerror(error)


def _error_text(result: proc.Result) -> str:
    # stderr only: stdout is what was asked for, and `ip xfrm state` prints every SA's keys.
    from ovs_ipsec.adapters.proc import error_text

    text = error_text(result.stderr)
    return f"exit code {result.returncode}: {text}" if text else f"exit code {result.returncode}"
