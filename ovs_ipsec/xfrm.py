"""Kernel XFRM through iproute2: observe and change the daemon's own block policies (the
policy counters, a fingerprint polled by periodic checks, come straight from netlink).

Everything runs through `proc.run` (bounded by `timeout`) and acts in the network namespace the
process runs in. The text parsers (`parse_policies`, `parse_xfrm_stat`, `redact_states`) are pure
and tested on captured output; `Xfrm` is the thin I/O shell around them.

iproute2 facts this relies on (6.1, checked on kernel 6.18):
* `ip xfrm policy` prints `action block` but omits `action allow`, prints `mark V/M` only when the
  mask is not 0, `socket in|out` instead of `dir` for per-socket policies, and protocol names from
  /etc/protocols (number when unnamed).
* The kernel stores a policy mark as `value & mask`.
* In `ip -batch`, the xfrm commands exit(2) at the first netlink error, with or without `-force`,
  and print no line number. `apply` therefore re-observes after a failed batch, runs the first
  operation that has not taken effect on its own (which yields its own error) and continues
  with the rest in a new batch.
* `ip xfrm policy delete|get ... mark 0 mask M` does not send the mark when its value is 0
  (iproute2 tests `value & mask`), and the kernel matches marks exactly on delete: such a
  command deletes the *unmarked* policy with that selector, someone else's, and reports success.
  So a policy whose mark value is 0 (ipsec_skb_mark `0/1`) is removed with
  `ip xfrm policy deleteall SELECTOR dir D priority P action block index N`: deleteall dumps the
  table, filters it here (index from `ip -s xfrm policy`) and deletes with the dumped mark.
  deleteall exits the process when done, so each one runs on its own, never inside a batch.

May import: errors, proc, protection, stdlib.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ovs_ipsec import proc
from ovs_ipsec.errors import CommandError, XfrmError
from ovs_ipsec.protection import PolicySpec, is_owned

XFRM_STAT_PATH = "/proc/net/xfrm_stat"

# Protocol names as iproute2 prints them (/etc/protocols); anything else is printed as a number.
_PROTO_NUMBERS = {
    "ip": 0,
    "icmp": 1,
    "igmp": 2,
    "ipencap": 4,
    "tcp": 6,
    "udp": 17,
    "ipv6": 41,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "dccp": 33,
    "ipcomp": 108,
    "sctp": 132,
    "mobility-header": 135,
    "udplite": 136,
}
# `ip xfrm policy delete` fails like this when the key is already gone.
_NOT_FOUND = "No such file or directory"


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
            proto = _PROTO_NUMBERS.get(value)
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


@functools.lru_cache(maxsize=4096)
def _prefix(text: str) -> tuple[int, str] | None:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    return iface.version, f"{iface.ip.compressed}/{iface.network.prefixlen}"


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


def selector_args(spec: PolicySpec) -> list[str]:
    """The iproute2 selector of `spec`."""
    args = ["src", spec.src, "dst", spec.dst, "proto", str(spec.proto)]
    if spec.sport is not None:
        args += ["sport", str(spec.sport)]
    if spec.dport is not None:
        args += ["dport", str(spec.dport)]
    return args


def policy_args(spec: PolicySpec) -> list[str]:
    """The iproute2 selector, direction and mark of `spec` (its kernel key)."""
    args = [*selector_args(spec), "dir", spec.direction]
    if spec.mask:
        args += ["mark", f"{spec.mark:#x}", "mask", f"{spec.mask:#x}"]
    return args


@dataclass(frozen=True)
class Operation:
    kind: str  # "add" or "remove"
    spec: PolicySpec

    @property
    def by_index(self) -> bool:
        """A removal `ip xfrm policy delete` cannot do right (mark value 0; module docstring)."""
        return self.kind == "remove" and self.spec.mask != 0 and self.spec.mark == 0

    def argv(self) -> list[str]:
        """`ip` arguments for an addition or a removal by key (not for `by_index` ones)."""
        if self.kind == "add":
            return [
                *("xfrm", "policy", "update", *policy_args(self.spec)),
                *("action", self.spec.action, "priority", str(self.spec.priority)),
            ]
        if self.by_index:
            raise ValueError(f"{self.spec.describe()}: remove it with deleteall_argv")
        return ["xfrm", "policy", "delete", *policy_args(self.spec)]

    def batch_line(self) -> str:
        return " ".join(self.argv())

    def deleteall_argv(self, index: int) -> list[str]:
        """`ip` arguments that delete exactly this policy, found by its current index."""
        return [
            *("xfrm", "policy", "deleteall", *selector_args(self.spec), "dir", self.spec.direction),
            *("priority", str(self.spec.priority), "action", self.spec.action),
            *("index", str(index)),
        ]


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
    """The kernel's XFRM policy table in this process's network namespace, through iproute2."""

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

    def observe_all(self) -> list[ObservedPolicy]:
        """Every policy in the table, foreign ones included."""
        return parse_policies(self.policies_text())

    def observe(self) -> frozenset[PolicySpec]:
        """The daemon's own policies (`is_owned`); foreign ones are never returned.

        A block at our priority that carries something we never set (a device, a template, a
        sub policy type, an ICMP type...) is not something we created, so it is not ours either.
        """
        # Ours are all blocks: `ip` leaves everything else (charon's traps and SAs' policies,
        # thousands of them) out before we parse.
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
        """Install `add` (create or replace by key), then delete `remove`.

        One `ip -batch -` does the additions and the removals by key; a removal of a policy
        whose mark value is 0 takes one `ip xfrm policy deleteall` each (see the module
        docstring), after the batch.

        All additions run before any removal, and a removal with the same kernel key as an
        addition is dropped (the update replaced it). A removal whose policy is already gone
        counts as done. Failures are per policy: the others are still applied, then
        XfrmApplyError lists what failed. A timeout, or an `ip` that cannot run, raises
        XfrmError at once (the table is then in an unknown state; observe again).
        """
        adds = list(add)
        added_keys = {spec.key() for spec in adds}
        # A removal with the key of an addition would delete what `update` just put in place.
        removes = [spec for spec in remove if spec.key() not in added_keys]
        ops = [Operation("add", s) for s in adds] + [Operation("remove", s) for s in removes]
        failures = self._apply_batch([o for o in ops if not o.by_index])
        failures += self._remove_by_index([o for o in ops if o.by_index])
        if failures:
            raise XfrmApplyError(failures, len(ops))

    def _apply_batch(self, ops: list[Operation]) -> list[PolicyFailure]:
        failures: list[PolicyFailure] = []
        pending = ops
        while pending:
            script = "".join(f"{o.batch_line()}\n" for o in pending)
            if self._ip_run(["-batch", "-"], script).returncode == 0:
                break
            # The batch stopped at its first failing line and does not say which one. Everything
            # before it took effect; run the first operation that has not taken effect alone.
            observed = self.observe()
            pending = [o for o in pending if not _took_effect(o, observed)]
            if not pending:
                break  # the failure was a removal of something already gone
            first, pending = pending[0], pending[1:]
            single = self._ip_run(first.argv(), None)
            if single.returncode != 0 and not _tolerated(first, single.stderr):
                failures.append(PolicyFailure(first, _error_text(single)))
        return failures

    def _remove_by_index(self, ops: list[Operation]) -> list[PolicyFailure]:
        if not ops:
            return []
        indexes = {}
        for policy in parse_policies(self._ip_text("-s", "xfrm", "policy", "list")):
            spec = policy.to_spec() if is_owned(policy) else None
            if spec is not None and policy.index is not None:
                indexes[spec] = policy.index
        failures = []
        for op in ops:
            index = indexes.get(op.spec)
            if index is None:
                continue  # already gone
            result = self._ip_run(op.deleteall_argv(index), None)
            if result.returncode != 0:
                failures.append(PolicyFailure(op, _error_text(result)))
        return failures

    # -- plumbing ---------------------------------------------------------------------------

    def policy_count(self) -> str:
        """The kernel's policy counters: a cheap fingerprint. A periodic check lists every
        policy only when this changed since the last listing. Asked over netlink (what `ip xfrm
        policy count` sends, without starting a process); through `ip` if that fails."""
        try:
            return " ".join(str(n) for n in spd_counts(self.timeout))
        except OSError:
            return " ".join(self._ip_text("xfrm", "policy", "count").split())

    def _ip_text(self, *args: str) -> str:
        result = self._ip_run(list(args), None)
        if result.returncode != 0:
            raise XfrmError(f"ip {' '.join(args)}: {_error_text(result)}")
        return result.stdout

    def _ip_run(self, args: list[str], stdin: str | None) -> proc.Result:
        try:
            return proc.run([self._ip, *args], timeout=self.timeout, input=stdin, check=False)
        except CommandError as exc:
            raise XfrmError(f"ip {' '.join(args)}: {exc.stderr or exc}") from exc


NETLINK_XFRM = 6
XFRM_MSG_NEWSPDINFO = 36
XFRM_MSG_GETSPDINFO = 37
XFRMA_SPD_INFO = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSG_HEADER = struct.Struct("=IHHII")


def spd_counts(timeout: float) -> tuple[int, ...]:
    """XFRM_MSG_GETSPDINFO in this network namespace: the policy counts (in, out, fwd and the
    per-socket ones), whatever the size of the table."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        payload = struct.pack("=I", 0xFFFFFFFF)
        sock.send(_NLMSG_HEADER.pack(16 + len(payload), XFRM_MSG_GETSPDINFO, NLM_F_REQUEST, 1, 0)
                  + payload)  # fmt: skip
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
                if length < 16:
                    raise OSError("malformed netlink reply")
                if seq == 1 and kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-errno, "XFRM_MSG_GETSPDINFO failed")
                if seq == 1 and kind == XFRM_MSG_NEWSPDINFO:
                    return parse_spdinfo(data[offset + 16 : offset + length])
                offset += (length + 3) & ~3


def parse_spdinfo(body: bytes) -> tuple[int, ...]:
    """The XFRMA_SPD_INFO counters of an XFRM_MSG_NEWSPDINFO body (after its u32 flags)."""
    offset = 4
    while offset + 4 <= len(body):
        rta_len, rta_type = struct.unpack_from("=HH", body, offset)
        if rta_len < 4:
            break
        if rta_type == XFRMA_SPD_INFO and rta_len >= 4 + 24:
            return struct.unpack_from("=6I", body, offset + 4)
        offset += (rta_len + 3) & ~3
    raise OSError("no XFRMA_SPD_INFO in the netlink reply")


def owned_specs(policies: Iterable[ObservedPolicy]) -> frozenset[PolicySpec]:
    """The daemon's own policies among `policies` (`is_owned` and expressible as a PolicySpec)."""
    owned = set()
    for policy in policies:
        if is_owned(policy):
            spec = policy.to_spec()
            if spec is not None:
                owned.add(spec)
    return frozenset(owned)


def _took_effect(op: Operation, observed: frozenset[PolicySpec]) -> bool:
    return (op.spec in observed) == (op.kind == "add")


def _tolerated(op: Operation, stderr: str) -> bool:
    return op.kind == "remove" and _NOT_FOUND in stderr


def _error_text(result: proc.Result) -> str:
    text = result.stderr.strip() or result.stdout.strip()
    return f"exit code {result.returncode}: {text}" if text else f"exit code {result.returncode}"
