"""VICI values as the rest of the daemon sees them: charon sends bytes everywhere, we use str.

May import: stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def decode(value: Any) -> Any:
    """bytes -> str, recursively through dicts and lists (undecodable bytes are replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


# VICI message elements (strongSwan's vici plugin, "Message format").
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = range(1, 7)


def encode(message: Mapping[str, Any]) -> bytes:
    """A VICI message body, byte for byte as the vici package's `Message.serialize` writes it
    (values str or bytes, lists of them, nested sections). Connection bodies are kept in this
    form: a few hundred bytes each instead of four dicts and a list."""
    out = bytearray()
    _encode_section(message, out)
    return bytes(out)


def section(name: str, body: bytes) -> bytes:
    """`{name: <the section body already encoded>}`, encoded: a load-conn message."""
    return _named(SECTION_START, name) + body + bytes((SECTION_END,))


def parse(data: bytes) -> dict[str, Any]:
    """`encode`'s inverse, values as str (as `decode` gives charon's)."""
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
            item, pos = _blob(data, pos)
            items.append(item)
        elif kind == LIST_END and items is not None:
            items = None
        elif kind == SECTION_END and len(sections) > 1 and items is None:
            sections.pop()
        else:
            raise ValueError(f"malformed VICI message: element {kind} at byte {pos - 1}")
    if len(sections) != 1 or items is not None:
        raise ValueError("malformed VICI message: unterminated section or list")
    return sections[0]


def _named(kind: int, name: str) -> bytes:
    raw = name.encode("utf-8")
    return bytes((kind, len(raw))) + raw


def _value(value: Any) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _blob(data: bytes, pos: int) -> tuple[str, int]:
    size = int.from_bytes(data[pos : pos + 2], "big")
    end = pos + 2 + size
    if pos + 2 > len(data) or end > len(data):
        raise ValueError("malformed VICI message: value runs past the end")
    return data[pos + 2 : end].decode("utf-8", "replace"), end


def _encode_section(message: Mapping[str, Any], out: bytearray) -> None:
    for key, value in message.items():
        if isinstance(value, Mapping):
            out += _named(SECTION_START, key)
            _encode_section(value, out)
            out.append(SECTION_END)
        elif isinstance(value, list):
            out += _named(LIST_START, key)
            for item in value:
                out.append(LIST_ITEM)
                out += _value(item)
            out.append(LIST_END)
        else:
            out += _named(KEY_VALUE, key) + _value(value)
