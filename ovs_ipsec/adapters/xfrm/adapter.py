"""Kernel XFRM: observe, change and count the daemon's own block policies over netlink
(`xfrm_netlink`); list the whole table through iproute2 for display.

`ip` runs through `proc.run` (bounded by `timeout`), for status commands and when netlink fails;
everything acts in the network namespace the process runs in. The text parsers
(`parse_policies`, `parse_xfrm_stat`, `redact_states`) are pure and tested on captured output;
`Xfrm` is the thin I/O shell around them.

iproute2 facts this relies on (6.1, checked on kernel 6.18):
* `ip xfrm policy` prints `action block` but omits `action allow`, prints `mark V/M` only when the
  mask is not 0, `socket in|out` instead of `dir` for per-socket policies, and protocol names from
  /etc/protocols (number when unnamed).
* The kernel stores a policy mark as `value & mask`.

May import: errors, naming, proc, block_policies, xfrm.netlink, stdlib.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ovs_ipsec.adapters.xfrm import netlink as xfrm_netlink
from ovs_ipsec.core import naming
from ovs_ipsec.core.block_policies import PROTOCOL_NUMBERS, PolicySpec, is_owned, parse_prefix
from ovs_ipsec.errors import CommandError, XfrmError

if TYPE_CHECKING:
    from ovs_ipsec.adapters import proc

XFRM_STAT_PATH = "/proc/net/xfrm_stat"


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


def parse_policies(text: str) -> list[ObservedPolicy]:
    """Parse `ip [-s] xfrm policy [list]` output. Unrecognisable blocks are skipped."""
    return list(iter_policies(text))


def iter_policies(text: str) -> Iterator[ObservedPolicy]:
    """`parse_policies`, one policy at a time: a caller that keeps few of thousands never holds
    them all (their peak would stay in the process's resident memory)."""
    block: list[str] = []
    for line in _lines(text):
        if line.startswith("src "):
            if block and (policy := _parse_block(block)) is not None:
                yield policy
            block = [line]
        elif block and line[:1].isspace():
            block.append(line)
        elif line.strip():
            if block and (policy := _parse_block(block)) is not None:
                yield policy
            block = []  # stray top-level text: not a policy
    if block and (policy := _parse_block(block)) is not None:
        yield policy


def _lines(text: str) -> Iterator[str]:
    """text.splitlines(), lazily (without a list, or a copy, of the whole text)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


def _parse_block(lines: list[str]) -> ObservedPolicy | None:
    head = lines[0].split()
    if len(head) < 4 or head[2] != "dst":
        return None
    src, dst = _prefix(head[1]), _prefix(head[3])
    if src is None or dst is None or src[0] != dst[0]:
        return None
    family = src[0]
    proto = sport = dport = None
    selector_extra: list[str] = []
    rest = head[4:]
    i = 0
    while i < len(rest):
        word = rest[i]
        value = rest[i + 1] if i + 1 < len(rest) else ""
        if word == "proto" and value:
            proto = PROTOCOL_NUMBERS.get(value)
            if proto is None:
                proto = int(value) if value.isdigit() else None
                if proto is None:
                    selector_extra.append(f"proto {value}")
        elif word in ("sport", "dport") and value.isdigit():
            if word == "sport":
                sport = int(value)
            else:
                dport = int(value)
        elif word == "uid" and value.isdigit():
            pass  # printed with -s only; not a selector the daemon sets
        else:
            selector_extra.append(f"{word} {value}".strip())
        i += 2

    direction = action = ptype = None
    priority = index = None
    socket = False
    mark = mask = 0
    templates: list[str] = []
    extra: list[str] = []
    body = lines[1:]
    j = 0
    while j < len(body):
        stripped = body[j].strip()
        words = stripped.split()
        j += 1
        if not words:
            continue
        if words[0] in ("dir", "socket") and len(words) >= 2:
            socket = words[0] == "socket"
            direction = words[1]
            fields, flags = _dir_fields(words[2:])
            action = fields.get("action", "allow")
            ptype = fields.get("ptype", "main")
            if flags:
                extra.append(f"flag {flags}")
            try:
                priority = int(fields.get("priority", ""))
                index = int(fields["index"]) if "index" in fields else None
            except ValueError:
                return None
        elif words[0] == "mark" and len(words) == 2 and "/" in words[1]:
            value_text, _, mask_text = words[1].partition("/")
            try:
                mark, mask = int(value_text, 0), int(mask_text, 0)
            except ValueError:
                extra.append(stripped)
        elif words[0] in ("tmpl", "lifetime"):
            # A template (or, with -s, a lifetime block) is its first line plus the more deeply
            # indented lines after it.
            depth = _indent(body[j - 1])
            parts = [stripped]
            while j < len(body) and _indent(body[j]) > depth:
                parts.append(body[j].strip())
                j += 1
            if words[0] == "tmpl":
                templates.append(" ".join(parts))
            # Lifetimes are not shown without -s, so they never decide ownership.
        else:
            extra.append(stripped)
    if direction is None or priority is None:
        return None
    return ObservedPolicy(
        direction=direction,
        family=family,
        src=src[1],
        dst=dst[1],
        proto=proto,
        sport=sport,
        dport=dport,
        action=action or "allow",
        priority=priority,
        ptype=ptype or "main",
        socket=socket,
        mark=mark,
        mask=mask,
        index=index,
        templates=tuple(templates),
        selector_extra=tuple(selector_extra),
        extra=tuple(extra),
        text="\n".join(lines),
    )


def _dir_fields(words: list[str]) -> tuple[dict[str, str], str]:
    """`action block priority 5 ptype main [flag localok icmp]` -> (fields, non-zero flags)."""
    fields: dict[str, str] = {}
    for i in range(0, len(words), 2):
        if words[i] == "flag":
            flags = " ".join(words[i + 1 :])
            return fields, "" if flags in ("", "(0x00000000)") else flags
        fields[words[i]] = words[i + 1] if i + 1 < len(words) else ""
    return fields, ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _prefix(text: str) -> tuple[int, str] | None:
    if naming.is_canonical_ipv4_host(text):
        return 4, text  # thousands of these in a listing: no parse, no cache entry each
    parsed = parse_prefix(text)
    return None if parsed is None else (parsed[0], parsed[1])


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """`/proc/net/xfrm_stat` (`XfrmOutPolBlock   3` per line) as a dict."""
    stats = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit():
            stats[words[0]] = int(words[1])
    return stats


# Key material as `ip xfrm state` prints it: `enc cbc(aes) 0x0011...`, `auth-trunc hmac(sha256)
# 0x... 128`, `aead rfc4106(gcm(aes)) 0x... 128`, `auth ...`.
_KEY_LINE = re.compile(r"^(\s*(?:enc|auth|auth-trunc|aead)\s+\S+\s+)0x[0-9a-fA-F]+", re.MULTILINE)


def redact_states(text: str) -> str:
    """`ip xfrm state` output with every key replaced by `<redacted>`."""
    return _KEY_LINE.sub(r"\1<redacted>", text)


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


class XfrmApplyError(XfrmError):
    """Some policy changes failed; every other change was still made."""

    def __init__(self, failures: Sequence[PolicyFailure], attempted: int) -> None:
        self.failures = tuple(failures)
        self.attempted = attempted
        listed = "; ".join(f.describe() for f in self.failures)
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
        """Install `add` (create or replace by key), then delete `remove`, over netlink.

        All additions go before any removal, and a removal with the same kernel key as an
        addition is dropped (the update replaced it). A removal whose policy is already gone
        counts as done. Failures are per policy: the others are still applied, then
        XfrmApplyError lists what failed. If netlink itself fails or times out, XfrmError at
        once (the table is then in an unknown state; observe again).
        """
        adds = list(add)
        added_keys = {spec.key() for spec in adds}
        # A removal with the key of an addition would delete what the update just put in place.
        removes = [spec for spec in remove if spec.key() not in added_keys]
        ops = [Operation("add", s) for s in adds] + [Operation("remove", s) for s in removes]
        if not ops:
            return
        try:
            errors = xfrm_netlink.send_policy_ops([(o.kind, o.spec) for o in ops], self.timeout)
        except OSError as exc:
            raise XfrmError(f"netlink: {exc.strerror or exc}") from exc
        failures = [
            PolicyFailure(op, os.strerror(error))
            for op, error in zip(ops, errors, strict=True)
            if error and not (op.kind == "remove" and error == errno.ENOENT)
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


def owned_specs(policies: Iterable[ObservedPolicy]) -> frozenset[PolicySpec]:
    """The daemon's own policies among `policies` (`is_owned` and expressible as a PolicySpec)."""
    owned = set()
    for policy in policies:
        if is_owned(policy):
            spec = policy.to_spec()
            if spec is not None:
                owned.add(spec)
    return frozenset(owned)


def _error_text(result: proc.Result) -> str:
    text = result.stderr.strip() or result.stdout.strip()
    return f"exit code {result.returncode}: {text}" if text else f"exit code {result.returncode}"
