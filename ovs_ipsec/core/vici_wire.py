"""VICI on the wire, as strongSwan's vici plugin defines it: messages, packets and frames. Pure
codec (bytes in, bytes or plain values out); the socket I/O that uses it is
adapters/vici_socket.py, for the command session (charon.py) and the event session (events.py)
alike.

* A **message** is a section of keys: values (str or bytes), lists of them, nested sections.
  `encode_message` writes one byte for byte as the vici package's `Message.serialize` does;
  `decode_message` reads one back with every value as str (undecodable bytes replaced).
* A **packet** is a type byte, for named types a one-byte-length name, then a message:
  `request_packet`, `register_packet`, `unregister_packet`, and `decode_packet`.
* A **frame** is a 4-byte big-endian length and a packet: `frame`, and `next_packet`, which
  takes one complete packet off the front of a receive buffer.

May import: stdlib.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class PacketType(enum.IntEnum):
    CMD_REQUEST = 0  # named request message
    CMD_RESPONSE = 1  # unnamed response message for a request
    CMD_UNKNOWN = 2  # unnamed response if the requested command is unknown
    EVENT_REGISTER = 3  # named event registration request
    EVENT_UNREGISTER = 4  # named event de-registration request
    EVENT_CONFIRM = 5  # unnamed confirmation of an event (de-)registration
    EVENT_UNKNOWN = 6  # unnamed response if an event (de-)registration failed
    EVENT = 7  # named event message


_NAMED = frozenset({PacketType.CMD_REQUEST, PacketType.EVENT_REGISTER,
                    PacketType.EVENT_UNREGISTER, PacketType.EVENT})  # fmt: skip

# Message elements (strongSwan's vici plugin, "Message format").
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = range(1, 7)

HEADER_SIZE = 4
# charon's own limit for one VICI message is 512 KiB (VICI_MESSAGE_SIZE_MAX, vici_socket.h): a
# longer frame from charon is a broken stream, not a big message, and charon drops the session
# of a client that announces a longer one. Each pipelined request is one message.
MAX_PACKET = 512 * 1024
MAX_NAME = 0xFF  # a name's length is one byte
MAX_VALUE = 0xFFFF  # a value's length is two bytes


class Unsendable(ValueError):
    """What VICI cannot carry: text that is not UTF-8 (a lone surrogate, as JSON may hold), or
    (TooLarge) a name, a value or a whole message over its limit. Said before anything is sent,
    so it costs one request, never the session."""


class TooLarge(Unsendable):
    pass


# -- messages -------------------------------------------------------------------------------


def encode_message(message: Mapping[str, Any]) -> bytes:
    """A message body, byte for byte as the vici package's `Message.serialize` writes it.
    Connection bodies are kept in this form: a few hundred bytes each instead of four dicts
    and a list."""
    out = bytearray()
    _encode_section(message, out, "")
    return bytes(out)


def section(name: str, body: bytes) -> bytes:
    """`{name: <the section body already encoded>}`, encoded: a load-conn message."""
    return _named(SECTION_START, name) + body + bytes((SECTION_END,))


def section_size(name: str, body: bytes) -> int:
    """The length of `section(name, body)`, without building it."""
    return 2 + len(name.encode("utf-8")) + len(body) + 1


def check_request(command: str, message_size: int) -> None:
    """TooLarge if a request of `command` with a message of `message_size` bytes would be
    longer than charon takes."""
    size = 2 + len(command.encode("utf-8")) + message_size
    if size > MAX_PACKET:
        raise TooLarge(f"a {command} request of {size} bytes; charon takes at most {MAX_PACKET}")


def decode_message(data: bytes) -> dict[str, Any]:
    """`encode_message`'s inverse, every value as str. ValueError if malformed."""
    sections: list[dict[str, Any]] = [{}]
    items: list[str] | None = None
    pos = 0
    while pos < len(data):
        kind = data[pos]
        pos += 1
        if kind in (SECTION_START, KEY_VALUE, LIST_START) and items is None:
            if pos >= len(data) or pos + 1 + data[pos] > len(data):
                raise ValueError("malformed VICI message: name runs past the end")
            size = data[pos]
            name = data[pos + 1 : pos + 1 + size].decode("utf-8", "replace")
            pos += 1 + size
            if kind == SECTION_START:
                child: dict[str, Any] = {}
                sections[-1][name] = child
                sections.append(child)
            elif kind == LIST_START:
                items = sections[-1][name] = []
            else:
                sections[-1][name], pos = _blob(data, pos)
        elif kind == LIST_ITEM and items is not None:
            # A list's items come in a run, read here in one loop: get-conns and get-shared
            # list thousands of names at each periodic check.
            size = len(data)
            while True:
                end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
                if pos + 2 > size or end > size:
                    raise ValueError("malformed VICI message: value runs past the end")
                items.append(data[pos + 2 : end].decode("utf-8", "replace"))
                pos = end
                if pos >= size or data[pos] != LIST_ITEM:
                    break
                pos += 1
        elif kind == LIST_END and items is not None:
            items = None
        elif kind == SECTION_END and len(sections) > 1 and items is None:
            sections.pop()
        else:
            raise ValueError(f"malformed VICI message: element {kind} at byte {pos - 1}")
    if len(sections) != 1 or items is not None:
        raise ValueError("malformed VICI message: unterminated section or list")
    return sections[0]


def bytes_to_text(value: Any) -> Any:
    """bytes -> str, recursively through dicts and lists (undecodable bytes are replaced): what
    the vici package returns, as `decode_message` would have returned it (tools and tests)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): bytes_to_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bytes_to_text(v) for v in value]
    return value


# -- packets and frames -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    type: int  # a PacketType, or whatever number charon sent
    name: str = ""  # the event's name for EVENT
    payload: bytes = b""  # the encoded message


def request_packet(command: str, message: Mapping[str, Any] | bytes | None = None) -> bytes:
    """A CMD_REQUEST; `message` a mapping, or a message already encoded."""
    if isinstance(message, Mapping):
        message = encode_message(message)
    check_request(command, len(message or b""))
    return _named(PacketType.CMD_REQUEST, command) + (message or b"")


def register_packet(event: str) -> bytes:
    return _named(PacketType.EVENT_REGISTER, event)


def unregister_packet(event: str) -> bytes:
    return _named(PacketType.EVENT_UNREGISTER, event)


def decode_packet(packet: bytes) -> Packet:
    """A packet's type, name (for named types) and undecoded payload. ValueError if short."""
    if not packet:
        raise ValueError("malformed VICI packet: empty")
    kind = packet[0]
    if kind not in _NAMED:
        return Packet(kind, "", packet[1:])
    if len(packet) < 2 or len(packet) < 2 + packet[1]:
        raise ValueError("malformed VICI packet: name runs past the end")
    end = 2 + packet[1]
    return Packet(kind, packet[2:end].decode("utf-8", "replace"), packet[end:])


def frame(packet: bytes) -> bytes:
    return len(packet).to_bytes(HEADER_SIZE, "big") + packet


def next_packet(buffer: bytearray) -> bytes | None:
    """Take one complete packet off the front of `buffer` (None: not all there yet).
    ValueError for a frame longer than charon would ever send."""
    packet, end = packet_at(buffer, 0)
    if packet is not None:
        del buffer[:end]
    return packet


def packet_at(buffer: bytes | bytearray, start: int) -> tuple[bytes | None, int]:
    """The complete packet framed at `start` of `buffer` and where the next frame starts; (None,
    `start`) when it has not all arrived. A reader that keeps its place this way instead of
    deleting each packet off the front does not move the rest of a large buffer per packet.
    ValueError for a frame longer than charon would ever send."""
    if len(buffer) - start < HEADER_SIZE:
        return None, start
    length = int.from_bytes(buffer[start : start + HEADER_SIZE], "big")
    if length > MAX_PACKET:
        raise ValueError(f"message of {length} bytes announced")
    end = start + HEADER_SIZE + length
    if len(buffer) < end:
        return None, start
    return bytes(buffer[start + HEADER_SIZE : end]), end


def packet_buffered(buffer: bytes | bytearray, start: int = 0) -> bool:
    """Whether `buffer` holds at least one complete frame at `start`."""
    if len(buffer) - start < HEADER_SIZE:
        return False
    length = int.from_bytes(buffer[start : start + HEADER_SIZE], "big")
    return len(buffer) - start >= HEADER_SIZE + length


# -- helpers --------------------------------------------------------------------------------


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Unsendable(f"{what} is not valid unicode ({exc.reason})") from None


def _named(kind: int, name: str) -> bytes:
    raw = _utf8(name, "a name")
    if len(raw) > MAX_NAME:
        raise TooLarge(f"a name of {len(raw)} bytes; VICI names hold at most {MAX_NAME}")
    return bytes((kind, len(raw))) + raw


def _value(value: Any, key: str) -> bytes:
    raw = value if isinstance(value, bytes) else _utf8(str(value), f"{key}: a value")
    if len(raw) > MAX_VALUE:
        raise TooLarge(f"{key}: a value of {len(raw)} bytes; VICI values hold at most {MAX_VALUE}")
    return len(raw).to_bytes(2, "big") + raw


def _blob(data: bytes, pos: int) -> tuple[str, int]:
    size = int.from_bytes(data[pos : pos + 2], "big")
    end = pos + 2 + size
    if pos + 2 > len(data) or end > len(data):
        raise ValueError("malformed VICI message: value runs past the end")
    return data[pos + 2 : end].decode("utf-8", "replace"), end


def _encode_section(message: Mapping[str, Any], out: bytearray, path: str) -> None:
    """`path`: the keys leading here (`remote.certs`), for TooLarge to name."""
    for key, value in message.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, Mapping):
            out += _named(SECTION_START, key)
            _encode_section(value, out, where)
            out.append(SECTION_END)
        elif isinstance(value, list):
            out += _named(LIST_START, key)
            for item in value:
                out.append(LIST_ITEM)
                out += _value(item, where)
            out.append(LIST_END)
        else:
            out += _named(KEY_VALUE, key) + _value(value, where)
