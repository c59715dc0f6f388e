"""The netlink messages for our block policies, laid out as <linux/xfrm.h> says (decoded here
field by field), and the ack parser. The kernel's answers to them are tested in
tests/integration/test_xfrm_kernel.py."""

from __future__ import annotations

import socket
import struct

from ovs_ipsec.adapters.xfrm import netlink as nl
from ovs_ipsec.core.block_policies import PolicySpec

GRE, UDP = 47, 17
BLOCK_V4 = PolicySpec("out", 4, "0.0.0.0/1", "10.0.0.2/32", GRE, None, None, 0, 0, 430001)
MARK0_V6 = PolicySpec("in", 6, "::/0", "fd00::2/128", UDP, None, 6081, 0, 1, 430003)


def decode_selector(data: bytes) -> dict:
    dport, dmask, sport, smask = struct.unpack("!HHHH", data[32:40])
    family, plen_d, plen_s, proto, ifindex, user = struct.unpack("=HBBB3xiI", data[40:56])
    return {
        "daddr": data[0:16], "saddr": data[16:32], "dport": (dport, dmask),
        "sport": (sport, smask), "family": family, "prefixlen": (plen_d, plen_s),
        "proto": proto, "ifindex": ifindex, "user": user,
    }  # fmt: skip


def test_update_message_layout() -> None:
    msg = nl.update_message(BLOCK_V4, 7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 25, 0x5, 7, 0)
    assert length == 16 + 168  # nlmsghdr + xfrm_userpolicy_info; no mark: no attribute
    sel = decode_selector(msg[16:72])
    assert sel["daddr"] == socket.inet_aton("10.0.0.2") + bytes(12)
    assert sel["saddr"] == bytes(16)
    assert sel["dport"] == (0, 0) and sel["sport"] == (0, 0)
    assert (sel["family"], sel["prefixlen"], sel["proto"]) == (socket.AF_INET, (32, 1), GRE)
    lft = struct.unpack_from("=8Q", msg, 72)
    assert lft[:4] == (nl.XFRM_INF,) * 4 and lft[4:] == (0, 0, 0, 0)
    priority, index, direction, action, pflags, share = struct.unpack_from("=IIBBBB", msg, 168)
    assert (priority, index, direction, action, pflags, share) == (430001, 0, 1, 1, 0, 0)


def test_zero_valued_marks_are_sent_exactly() -> None:
    """`mark 0 mask 1` is a mark: iproute2 leaves it out of a delete, we never do."""
    update = nl.update_message(MARK0_V6, 1)
    delete = nl.delete_by_index_message(MARK0_V6, 0x1238, 2)
    for msg, body in ((update, 168), (delete, 64)):
        assert len(msg) == 16 + body + 12
        attr_len, attr_type, value, mask = struct.unpack_from("=HHII", msg, 16 + body)
        assert (attr_len, attr_type, value, mask) == (12, 21, 0, 1)
    sel = decode_selector(update[16:72])
    assert sel["daddr"] == socket.inet_pton(socket.AF_INET6, "fd00::2")
    assert sel["dport"] == (6081, 0xFFFF) and sel["prefixlen"] == (128, 0)
    assert sel["family"] == socket.AF_INET6


def test_new_get_and_delete_by_index_messages() -> None:
    """Creation is XFRM_MSG_NEWPOLICY (EEXIST where a key is held, never a silent replace); a
    key is looked up with XFRM_MSG_GETPOLICY (no ack asked: the policy or an error is the
    answer); a removal deletes by the index the lookup found, carrying the mark."""
    new = nl.new_message(MARK0_V6, 3)
    assert struct.unpack_from("=IHHII", new)[1:4] == (19, 0x5, 3)
    assert new[16:] == nl.update_message(MARK0_V6, 3)[16:]
    get = nl.get_message(MARK0_V6, 4)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", get)
    assert (length, kind, flags, seq) == (len(get), 21, 0x1, 4)
    assert get[16:72] == nl.selector(MARK0_V6)
    assert struct.unpack_from("=IB", get, 72) == (0, 0)
    assert struct.unpack_from("=HHII", get, 80) == (12, 21, 0, 1)
    delete = nl.delete_by_index_message(MARK0_V6, 0x1238, 5)
    assert struct.unpack_from("=IHHII", delete)[1:4] == (20, 0x5, 5)
    assert struct.unpack_from("=IB", delete, 72) == (0x1238, 0)
    assert struct.unpack_from("=HHII", delete, 80) == (12, 21, 0, 1)
    body = bytearray(nl.update_message(BLOCK_V4, 1)[16:])
    struct.pack_into("=I", body, 56 + 8 * 8 + 4 * 8 + 4, 0x4321)
    assert nl.policy_index(bytes(body)) == 0x4321


def test_parse_spdinfo() -> None:
    body = struct.pack("=I", 0) + struct.pack("=HH6I", 28, 1, 3, 4, 0, 0, 0, 0)
    assert nl.parse_spdinfo(body) == (3, 4, 0, 0, 0, 0)


def _policy_body(spec: PolicySpec) -> bytearray:
    """What a dump sends for `spec`: an update request's body is the same xfrm_userpolicy_info
    and attributes."""
    return bytearray(nl.update_message(spec, 1)[nl.HEADER.size :])


def test_dumped_policies_read_back_as_the_specs_written() -> None:
    allow = PolicySpec("in", 4, "10.0.0.0/8", "0.0.0.0/0", UDP, 4500, 500, 5, 7, 12, "allow")
    for spec in (BLOCK_V4, MARK0_V6, allow):
        assert nl.parse_policy(bytes(_policy_body(spec))) == spec


def test_dumped_policies_with_what_a_spec_cannot_say_are_none() -> None:
    selector_tail = 40  # family, prefix lengths, proto, padding, ifindex, user
    info = 56 + nl._POLICY_INFO_TAIL.size

    def changed(spec: PolicySpec, at: int, value: bytes) -> bytes:
        body = _policy_body(spec)
        body[at : at + len(value)] = value
        return bytes(body)

    icmp = PolicySpec("out", 4, "0.0.0.0/1", "10.0.0.2/32", 1, None, None, 0, 0, 430001)
    cases = {
        "device": changed(BLOCK_V4, selector_tail + 8, struct.pack("=i", 3)),
        "user": changed(BLOCK_V4, selector_tail + 12, struct.pack("=I", 1000)),
        "flags": changed(BLOCK_V4, info - 6, b"\x01"),
        "fwd": changed(BLOCK_V4, info - 8, b"\x02"),
        "socket policy": changed(BLOCK_V4, info - 8, b"\x04"),
        "half port mask": changed(MARK0_V6, 34, struct.pack("!H", 0xFF00)),
        "icmp type": changed(icmp, 36, struct.pack("!HH", 8, 0xFFFF)),
        "gre key": changed(BLOCK_V4, 32, struct.pack("!HH", 7, 0xFFFF)),
        "host bits": changed(BLOCK_V4, 16, socket.inet_aton("10.0.0.1")),
        "family": changed(BLOCK_V4, selector_tail, struct.pack("=H", 99)),
        "template": bytes(_policy_body(BLOCK_V4)) + struct.pack("=HH", 8, 5) + bytes(4),
        "sub type": bytes(_policy_body(BLOCK_V4)) + struct.pack("=HHB3x", 8, 16, 1),
    }
    assert {name: nl.parse_policy(body) for name, body in cases.items()} == dict.fromkeys(cases)
    main_type = bytes(_policy_body(BLOCK_V4)) + struct.pack("=HHB3x", 8, 16, 0)
    assert nl.parse_policy(main_type) == BLOCK_V4


def test_dump_request_asks_for_the_whole_table() -> None:
    length, kind, flags, seq, _pid = nl.HEADER.unpack_from(nl.dump_request(9))
    assert (kind, flags & nl.NLM_F_DUMP, seq) == (nl.XFRM_MSG_GETPOLICY, nl.NLM_F_DUMP, 9)
    assert length == len(nl.dump_request(9)) == nl.HEADER.size + 64
