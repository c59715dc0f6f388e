"""Kernel XFRM policies over netlink (NETLINK_XFRM): adding, deleting and counting them without
starting a process.

The message builders and the reply parsers are pure (bytes in, bytes out; laid out as
<linux/xfrm.h> says); `send_policy_ops`, `dump_policies` and `spd_counts` are the socket I/O, in
the network namespace the process runs in, bounded by a timeout.

Why netlink rather than `ip xfrm policy`: a change of one tunnel cost a process start (about 2 ms,
most of a change's own work), and `ip -batch` stops a thousand policies at the first error without
saying which; here every policy gets its own answer. It also sends the mark exactly as asked:
iproute2 drops a mark whose value is 0 (`mark 0 mask 1`) from a delete request, which then removes
the *unmarked* policy with that selector, someone else's.

May import: block_policies, stdlib.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence

from ovs_ipsec.core.block_policies import PolicySpec, is_owned

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error acks without a copy of the request

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300

XFRM_MSG_NEWPOLICY = 19
XFRM_MSG_DELPOLICY = 20
XFRM_MSG_GETPOLICY = 21
XFRM_MSG_UPDPOLICY = 25
XFRM_MSG_NEWSPDINFO = 36
XFRM_MSG_GETSPDINFO = 37
XFRMA_SPD_INFO = 1
XFRMA_POLICY_TYPE = 16
XFRMA_MARK = 21
XFRM_POLICY_TYPE_MAIN = 0

POLICY_DIRS = {"in": 0, "out": 1}
POLICY_ACTIONS = {"allow": 0, "block": 1}
_DIRECTIONS = {number: name for name, number in POLICY_DIRS.items()}
_ACTIONS = {number: name for name, number in POLICY_ACTIONS.items()}
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}
# Protocols whose "ports" carry something else: ICMP type and code, the GRE key, the
# Mobility Header type. A policy with any of it set is not one a PolicySpec describes.
_PORTLESS = frozenset({1, 47, 58, 135})
XFRM_INF = 0xFFFFFFFFFFFFFFFF

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
# struct xfrm_selector after the two 16-byte addresses (daddr, saddr) and the four be16 port
# fields (dport, dport_mask, sport, sport_mask): family, prefixlen_d, prefixlen_s, proto,
# 3 bytes of padding, ifindex, user.
_SELECTOR_TAIL = struct.Struct("=HBBB3xiI")
# struct xfrm_userpolicy_info after the selector: xfrm_lifetime_cfg (soft/hard byte and packet
# limits, then four expiry times), xfrm_lifetime_cur (4 x u64), priority, index, dir, action,
# flags, share, padding to a multiple of 8.
_POLICY_INFO_TAIL = struct.Struct("=8Q4QIIBBBB4x")
# struct xfrm_userpolicy_id after the selector: index, dir, padding.
_POLICY_ID_TAIL = struct.Struct("=IB3x")
_MARK_ATTR = struct.Struct("=HHII")  # struct rtattr, then struct xfrm_mark {v, m}

# send_policy_ops' answer for an addition whose key a policy not ours holds: left in place.
FOREIGN_POLICY = -1

# Requests in flight before their acks are read: every ack holds a slice of the socket's
# receive buffer until read, and a full buffer drops acks.
WINDOW = 64


def selector(spec: PolicySpec) -> bytes:
    """struct xfrm_selector of `spec` (56 bytes)."""
    src, dst = ipaddress.ip_network(spec.src), ipaddress.ip_network(spec.dst)
    family = socket.AF_INET if spec.family == 4 else socket.AF_INET6
    ports = struct.pack(
        "!HHHH",
        spec.dport or 0,
        0 if spec.dport is None else 0xFFFF,
        spec.sport or 0,
        0 if spec.sport is None else 0xFFFF,
    )
    return (
        dst.network_address.packed.ljust(16, b"\0")
        + src.network_address.packed.ljust(16, b"\0")
        + ports
        + _SELECTOR_TAIL.pack(family, dst.prefixlen, src.prefixlen, spec.proto, 0, 0)
    )


def _message(kind: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _mark(spec: PolicySpec) -> bytes:
    # The kernel keys a policy by its mark exactly (value and mask); no attribute means 0/0.
    if not spec.mask:
        return b""
    return _MARK_ATTR.pack(_MARK_ATTR.size, XFRMA_MARK, spec.mark, spec.mask)


def update_message(spec: PolicySpec, seq: int) -> bytes:
    """XFRM_MSG_UPDPOLICY: create the policy, or replace the one with its key in place."""
    return _policy_message(XFRM_MSG_UPDPOLICY, spec, seq)


def new_message(spec: PolicySpec, seq: int) -> bytes:
    """XFRM_MSG_NEWPOLICY: create the policy; EEXIST if a policy holds its key."""
    return _policy_message(XFRM_MSG_NEWPOLICY, spec, seq)


def get_message(spec: PolicySpec, seq: int) -> bytes:
    """XFRM_MSG_GETPOLICY by key (selector, direction, mark): the policy that holds it, as an
    XFRM_MSG_NEWPOLICY reply, or an error (ENOENT). No ack is asked for: the reply is one."""
    tail = _POLICY_ID_TAIL.pack(0, POLICY_DIRS[spec.direction])
    body = selector(spec) + tail + _mark(spec)
    return HEADER.pack(HEADER.size + len(body), XFRM_MSG_GETPOLICY, NLM_F_REQUEST, seq, 0) + body


def delete_by_index_message(spec: PolicySpec, index: int, seq: int) -> bytes:
    """XFRM_MSG_DELPOLICY of the one policy with this index (found by `get_message`): never
    another policy that took the key meanwhile."""
    tail = _POLICY_ID_TAIL.pack(index, POLICY_DIRS[spec.direction])
    return _message(XFRM_MSG_DELPOLICY, seq, bytes(56) + tail + _mark(spec))


def _policy_message(kind: int, spec: PolicySpec, seq: int) -> bytes:
    tail = _POLICY_INFO_TAIL.pack(
        *(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0),  # no limits, no expiry
        *(0, 0, 0, 0),
        spec.priority,
        0,  # index: the kernel picks one
        POLICY_DIRS[spec.direction],
        POLICY_ACTIONS[spec.action],
        0,  # flags
        0,  # share: XFRM_SHARE_ANY
    )
    return _message(kind, seq, selector(spec) + tail + _mark(spec))


def dump_request(seq: int) -> bytes:
    """XFRM_MSG_GETPOLICY as a dump of the whole table (the body, a zeroed
    xfrm_userpolicy_id, is what the kernel's size check wants; a dump ignores it)."""
    body = bytes(56) + _POLICY_ID_TAIL.pack(0, 0)
    return HEADER.pack(HEADER.size + len(body), XFRM_MSG_GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP,
                       seq, 0) + body  # fmt: skip


def parse_policy(body: bytes) -> PolicySpec | None:
    """An XFRM_MSG_NEWPOLICY body (struct xfrm_userpolicy_info, then attributes) as a
    PolicySpec, or None when the policy has anything a PolicySpec cannot express (a device, a
    template, a security context, an interface id, a sub policy type, flags, ICMP type or GRE
    key, partial port masks, a socket policy, host bits in a prefix...): such a policy was not
    made by this daemon, whatever its priority."""
    head = 56 + _POLICY_INFO_TAIL.size
    if len(body) < head:
        raise OSError("truncated xfrm_userpolicy_info")
    daddr, saddr = body[:16], body[16:32]
    dport, dport_mask, sport, sport_mask = struct.unpack_from("!HHHH", body, 32)
    family_number, bits_d, bits_s, proto, ifindex, user = _SELECTOR_TAIL.unpack_from(body, 40)
    *_lifetimes, priority, _index, direction, action, flags, _share = _POLICY_INFO_TAIL.unpack_from(
        body, 56
    )
    mark = mask = 0
    offset = head
    while offset + 4 <= len(body):
        rta_len, rta_type = struct.unpack_from("=HH", body, offset)
        if rta_len < 4 or offset + rta_len > len(body):
            raise OSError("malformed netlink attribute")
        if rta_type == XFRMA_MARK and rta_len >= 12:
            mark, mask = struct.unpack_from("=II", body, offset + 4)
        elif rta_type == XFRMA_POLICY_TYPE and rta_len >= 5:
            if body[offset + 4] != XFRM_POLICY_TYPE_MAIN:
                return None
        else:
            return None  # a template, context, if_id... something we never set
        offset += (rta_len + 3) & ~3
    family = _FAMILIES.get(family_number)
    ports = (_port(sport, sport_mask), _port(dport, dport_mask))
    if (
        family is None
        or direction not in _DIRECTIONS
        or action not in _ACTIONS
        or ifindex
        or user
        or flags
        or (proto in _PORTLESS and (sport_mask or dport_mask))
        or False in ports
    ):
        return None
    size = 4 if family == 4 else 16
    try:
        return PolicySpec(
            direction=_DIRECTIONS[direction],
            family=family,
            src=f"{ipaddress.ip_address(saddr[:size]).compressed}/{bits_s}",
            dst=f"{ipaddress.ip_address(daddr[:size]).compressed}/{bits_d}",
            proto=proto,
            sport=ports[0],
            dport=ports[1],
            mark=mark,
            mask=mask,
            priority=priority,
            action=_ACTIONS[action],
        )
    except ValueError:
        return None  # host bits set in a prefix, a port without a port protocol


def _port(value: int, mask: int) -> int | None | bool:
    """A selector port: None for any, the port for an exact match, False otherwise."""
    if mask == 0:
        return None if value == 0 else False
    return value if mask == 0xFFFF and value else False


def dump_policies(timeout: float) -> list[PolicySpec]:
    """Every policy in the table that a PolicySpec describes (`parse_policy`), parsed one
    message at a time. Raises OSError when netlink fails or the dump does not end within
    `timeout`."""
    policies: list[PolicySpec] = []
    with _socket(timeout) as sock:
        sock.send(dump_request(1))
        while True:
            for kind, seq, body in iter_messages(sock.recv(1 << 16)):
                if seq != 1:
                    continue
                if kind == NLMSG_DONE:
                    return policies
                if kind == NLMSG_ERROR:
                    raise OSError(_errno(body), "XFRM_MSG_GETPOLICY dump failed")
                if kind == XFRM_MSG_NEWPOLICY:
                    spec = parse_policy(body)
                    if spec is not None:
                        policies.append(spec)


def iter_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, body) of every netlink message in one datagram. OSError if malformed."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            raise OSError("malformed netlink reply")
        yield kind, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _errno(error_body: bytes) -> int:
    """The errno of an NLMSG_ERROR body (the kernel sends it negated; 0 is an ack)."""
    (error,) = struct.unpack_from("=i", error_body)
    return -error


def policy_index(body: bytes) -> int:
    """The kernel's index of the policy in an XFRM_MSG_NEWPOLICY body."""
    return _POLICY_INFO_TAIL.unpack_from(body, 56)[13]


def send_policy_ops(ops: Sequence[tuple[str, PolicySpec]], timeout: float) -> list[int]:
    """Carry out ("add" | "remove", spec), additions before removals; the kernel's errno for
    each (0: done; FOREIGN_POLICY: an addition whose key a policy not ours holds).

    Only our own policies are ever replaced or deleted (`is_owned`): an addition is a
    NEWPOLICY, and where a policy already holds the key it is looked at and replaced only if
    ours; a removal looks the key up first and deletes that policy by its index only if it is
    exactly the one asked for (a foreign policy in its place means ours is gone: ENOENT).

    Raises OSError when netlink itself fails or an answer does not come within `timeout`: what
    happened to the rest is then unknown."""
    results = [0] * len(ops)
    with _socket(timeout) as sock:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        seqs = itertools.count(1)
        # Each request is built as it is sent: at 20,000 policies, all of them at once were
        # the largest transient of a bulk add (about 8 MiB).
        first = _exchange(
            sock,
            ((i, (new_message if kind == "add" else get_message)(spec, next(seqs)))
             for i, (kind, spec) in enumerate(ops)),
        )  # fmt: skip
        taken: list[int] = []  # additions whose key is held: by ours or someone else's?
        deletions: list[tuple[int, bytes]] = []
        for i, (kind, spec) in enumerate(ops):
            error, body = first[i]
            if kind == "add":
                if error == errno.EEXIST:
                    taken.append(i)
                else:
                    results[i] = error
            elif error:
                results[i] = error
            elif parse_policy(body) == spec:
                deletions.append((i, delete_by_index_message(spec, policy_index(body), next(seqs))))
            else:
                results[i] = errno.ENOENT  # another policy holds the key: ours is not there
        holders = _exchange(sock, ((i, get_message(ops[i][1], next(seqs))) for i in taken))
        replace = []
        for i in taken:
            error, body = holders[i]
            holder = None if error else parse_policy(body)
            if error or (holder is not None and is_owned(holder)):
                replace.append((i, update_message(ops[i][1], next(seqs))))  # gone, or ours
            else:
                results[i] = FOREIGN_POLICY
        for i, (error, _) in _exchange(sock, deletions + replace).items():
            results[i] = error
    return results


def _exchange(
    sock: socket.socket, requests: Iterable[tuple[int, bytes]]
) -> dict[int, tuple[int, bytes]]:
    """Send each (key, request) and collect its one answer, at most WINDOW in flight: key ->
    (errno, b"") for an ack or error, (0, body) for a policy. Requests carry distinct seqs."""
    answers: dict[int, tuple[int, bytes]] = {}
    pending: dict[int, int] = {}  # seq -> key
    for key, request in requests:
        sock.send(request)
        pending[HEADER.unpack_from(request)[3]] = key
        while len(pending) >= WINDOW:
            _receive(sock, pending, answers)
    while pending:
        _receive(sock, pending, answers)
    return answers


# An ack or error carries only its errno: one answer per errno, shared, rather than one tuple
# per request (20,000 at a bulk load, a transient whose memory the daemon kept; issue 14).
_ACKS: dict[int, tuple[int, bytes]] = {}


def _receive(
    sock: socket.socket, pending: dict[int, int], answers: dict[int, tuple[int, bytes]]
) -> None:
    """Read what one recv brings: each answer of a pending seq goes to its key's."""
    for kind, seq, body in iter_messages(sock.recv(65536)):
        if seq not in pending:
            continue
        if kind == NLMSG_ERROR:
            error = _errno(body)
            answers[pending.pop(seq)] = _ACKS.get(error) or _ACKS.setdefault(error, (error, b""))
        elif kind == XFRM_MSG_NEWPOLICY:
            answers[pending.pop(seq)] = (0, body)


def _socket(timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    try:
        sock.settimeout(timeout)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def spd_counts(timeout: float) -> tuple[int, ...]:
    """XFRM_MSG_GETSPDINFO: the policy counts (in, out, fwd and the per-socket ones), whatever
    the size of the table."""
    with _socket(timeout) as sock:
        payload = struct.pack("=I", 0xFFFFFFFF)
        sock.send(HEADER.pack(HEADER.size + len(payload), XFRM_MSG_GETSPDINFO, NLM_F_REQUEST, 1, 0)
                  + payload)  # fmt: skip
        while True:
            for kind, seq, body in iter_messages(sock.recv(65536)):
                if seq == 1 and kind == NLMSG_ERROR:
                    raise OSError(_errno(body), "XFRM_MSG_GETSPDINFO failed")
                if seq == 1 and kind == XFRM_MSG_NEWSPDINFO:
                    return parse_spdinfo(body)


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
