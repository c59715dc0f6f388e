"""vici_wire's message encoder and decoder against the vici package's own serializer."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import vici.protocol
from hypothesis import given
from hypothesis import strategies as st

from ovs_ipsec.core import vici_wire

_NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(
    lambda n: len(n.encode()) < 256
)
_VALUES = st.text(st.characters(codec="utf-8"), max_size=40)
_BODIES = st.recursive(
    st.dictionaries(_NAMES, st.one_of(_VALUES, st.lists(_VALUES, max_size=4)), max_size=5),
    lambda inner: st.dictionaries(
        _NAMES, st.one_of(_VALUES, st.lists(_VALUES, max_size=4), inner), max_size=5
    ),
    max_leaves=20,
)


@given(_BODIES)
def test_encode_is_what_vici_sends_and_parse_reads_it_back(body: dict[str, Any]) -> None:
    wire = vici_wire.encode_message(body)
    assert wire == vici.protocol.Message.serialize(body)
    assert vici_wire.decode_message(wire) == body
    stream = vici.protocol.FiniteStream(wire)
    assert vici_wire.decode_message(wire) == vici_wire.bytes_to_text(
        vici.protocol.Message.deserialize(stream)
    )


@given(_NAMES, _BODIES)
def test_a_section_around_an_encoded_body_is_the_message_of_both(
    name: str, body: dict[str, Any]
) -> None:
    assert vici_wire.section(name, vici_wire.encode_message(body)) == vici_wire.encode_message(
        {name: body}
    )


@given(st.binary(max_size=200))
def test_parse_refuses_malformed_bytes_with_value_error_only(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        vici_wire.decode_message(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x01a",
        b"\x04\x01a\x05\x00\x01x",
        b"\x03\x01a\x00\x05ab",
        b"\x02",
        b"\x07",
        b"\x05",
        b"\x04\x01a\x05\x00\x01x\x05\x00\x05ab\x06",
        b"\x04\x01a\x05\x00\x01x\x05\x00",
        b"\x04\x01a\x05\x00\x01x\x05",
    ],
    ids=[
        "open-section",
        "open-list",
        "short-value",
        "stray-end",
        "unknown",
        "stray-item",
        "short-second-item",
        "item-without-length",
        "item-without-value",
    ],
)
def test_truncated_or_misplaced_elements_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        vici_wire.decode_message(data)


# -- packets and frames -------------------------------------------------------------------------


@given(_NAMES, _BODIES)
def test_packets_are_what_vici_sends_and_read_back(name: str, body: dict[str, Any]) -> None:
    message = vici.protocol.Message.serialize(body)
    assert vici_wire.request_packet(name, body) == vici.protocol.Packet.request(name, message)
    assert vici_wire.request_packet(name, message) == vici.protocol.Packet.request(name, message)
    assert vici_wire.register_packet(name) == vici.protocol.Packet.register_event(name)
    assert vici_wire.unregister_packet(name) == vici.protocol.Packet.unregister_event(name)
    packet = vici_wire.decode_packet(vici.protocol.Packet.request(name, message))
    assert (packet.type, packet.name, packet.payload) == (vici_wire.PacketType.CMD_REQUEST,
                                                          name, message)  # fmt: skip
    reply = vici_wire.decode_packet(bytes([vici.protocol.Packet.CMD_RESPONSE]) + message)
    assert (reply.type, reply.name, reply.payload) == (vici_wire.PacketType.CMD_RESPONSE, "",
                                                       message)  # fmt: skip


def test_frames_come_off_a_buffer_whole_and_one_at_a_time() -> None:
    first, second = vici_wire.register_packet("log"), bytes([vici_wire.PacketType.EVENT_CONFIRM])
    data = vici_wire.frame(first) + vici_wire.frame(second)
    buffer = bytearray(data[:3])
    assert vici_wire.next_packet(buffer) is None and not vici_wire.packet_buffered(buffer)
    buffer += data[3:6]
    assert vici_wire.next_packet(buffer) is None
    buffer += data[6:]
    assert vici_wire.packet_buffered(buffer)
    assert vici_wire.next_packet(buffer) == first
    assert vici_wire.next_packet(buffer) == second
    assert buffer == bytearray()


def test_a_frame_longer_than_charon_sends_and_a_short_packet_are_refused() -> None:
    with pytest.raises(ValueError, match="announced"):
        vici_wire.next_packet(bytearray((vici_wire.MAX_PACKET + 1).to_bytes(4, "big")))
    for short in (b"", bytes([vici_wire.PacketType.EVENT, 5]) + b"ab"):
        with pytest.raises(ValueError):
            vici_wire.decode_packet(short)
