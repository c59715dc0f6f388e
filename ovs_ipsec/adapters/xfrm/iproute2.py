"""`ip xfrm` text as iproute2 prints it, parsed for display and as the fall-back when netlink
fails: policies (`parse_policies`, `iter_policies`, and the daemon's own among them,
`owned_specs`), states (`parse_states`, keys redacted first by `redact_states`), and the
kernel's counters in /proc/net/xfrm_stat (`parse_xfrm_stat`). Pure: text in, values out, tested
on captured output.

iproute2 facts this relies on (6.1, checked on kernel 6.18):
* `ip xfrm policy` prints `action block` but omits `action allow`, prints `mark V/M` only when the
  mask is not 0, `socket in|out` instead of `dir` for per-socket policies, and protocol names from
  /etc/protocols (number when unnamed).
* The kernel stores a policy mark as `value & mask`.

May import: addresses, block_policies, observed, stdlib.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ovs_ipsec.core.addresses import is_canonical_ipv4_host, parse_prefix
from ovs_ipsec.core.block_policies import PROTOCOL_NUMBERS, PolicySpec, is_owned
from ovs_ipsec.core.observed import ObservedPolicy, ObservedState


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
    if is_canonical_ipv4_host(text):
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


_STATE_HEAD = re.compile(r"^src (?P<src>\S+) dst (?P<dst>\S+)")
_STATE_IDS = re.compile(
    r"proto (?P<proto>\S+) spi (?P<spi>0x[0-9a-fA-F]+)(?: reqid (?P<reqid>\d+))?"
    r"(?: mode (?P<mode>\S+))?"
)
_STATE_SEL = re.compile(r"^\s*sel (?P<sel>.+?)\s*$", re.MULTILINE)


def parse_states(text: str) -> list[ObservedState]:
    """`ip xfrm state` output, one SA per block starting with `src `; other lines are dropped."""
    states = []
    for block in _state_blocks(text):
        head = _STATE_HEAD.match(block)
        ids = _STATE_IDS.search(block)
        sel = _STATE_SEL.search(block)
        states.append(
            ObservedState(
                src=head["src"] if head else None,
                dst=head["dst"] if head else None,
                proto=ids["proto"] if ids else None,
                spi=ids["spi"] if ids else None,
                reqid=int(ids["reqid"]) if ids and ids["reqid"] else None,
                mode=ids["mode"] if ids else None,
                selector=sel["sel"] if sel else None,
                text=block,
            )
        )
    return states


def _state_blocks(text: str) -> list[str]:
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks]


def owned_specs(policies: Iterable[ObservedPolicy]) -> frozenset[PolicySpec]:
    """The daemon's own policies among `policies` (`is_owned` and expressible as a PolicySpec)."""
    owned = set()
    for policy in policies:
        if is_owned(policy):
            spec = policy.to_spec()
            if spec is not None and is_owned(spec):
                owned.add(spec)
    return frozenset(owned)
