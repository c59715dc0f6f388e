"""JSON-RPC messages from a stream, decoded by the standard library's C decoder.

`ovs.jsonrpc.Connection` feeds what it reads to an `ovs.json.Parser`. PyPI's `ovs` has no C
parser, and the pure-Python one lexes character by character: about 2 µs a character here, so
the first OVSDB contents at N = 1,000 tunnels (a quarter of a megabyte) took 0.12 s of a 0.9 s
restart, 0.6 s at N = 5,000. `StreamParser` has the same interface (`feed` returns how much of
the text belongs to the current message, `is_done`, `finish` returns the value or an error
text) and only finds where a message ends: one regular expression steps over whole strings and
counts brackets. The message is then decoded by `json`, with the numbers converted as the
library converts them (1.0 and 1e2 are integers there) and the constants it rejects
(NaN, Infinity) rejected. A message with a `\\u` escape (NUL and surrogates are the library's
to judge), a top-level value that is not an object or array, or the library's C parser being
available, go to the library as before.

May import: ovs.json, stdlib.
"""

from __future__ import annotations

import json
import re
from typing import Any

import ovs.json

# A whole string, a bracket, or the opening quote of a string that has not ended yet.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|"', re.DOTALL)
_OPENING = frozenset("{[")
_CLOSES = {"}": "{", "]": "["}
_WHITESPACE = " \t\r\n"


def available() -> bool:
    """The library's C parser (Debian's python3-openvswitch) is as fast: it stays."""
    return ovs.json.PARSER != ovs.json.PARSER_C


class StreamParser:
    """One JSON-RPC message, fed in pieces (see the module docstring)."""

    def __init__(self) -> None:
        self._text = ""
        self._scanned = 0  # _text before this is scanned and outside any string
        self._open: list[str] = []  # the brackets open there
        self._error: str | None = None
        self._library: Any = None  # ovs.json.Parser, for a value that does not start a message
        self._done = False

    def feed(self, text: str) -> int:
        """Take `text`; returns how many of its characters belong to this message."""
        if self._library is not None:
            consumed: int = self._library.feed(text)
            return consumed
        if self._done:
            return 0
        if not self._text:
            start = text.lstrip(_WHITESPACE)
            if not start:
                return len(text)
            if start[0] not in _OPENING:
                self._library = ovs.json.Parser()
                return self.feed(text)
        offset = len(self._text)
        self._text += text
        whole = self._text
        opened = self._open
        for token in _TOKEN.finditer(whole, self._scanned):
            at = token.start()
            char = whole[at]
            if char == '"':
                if token.end() - at == 1:  # a string still open: look again with more text
                    self._scanned = at
                    return len(text)
            elif char in _OPENING:
                opened.append(char)
            else:
                last = opened.pop()
                if last != _CLOSES[char]:
                    self._error = f"syntax error: {char} at character {at} while {last} is open"
            if not opened or self._error is not None:
                end = token.end()
                self._text = whole[:end]
                self._done = True
                return end - offset
        self._scanned = len(whole)
        return len(text)

    def is_done(self) -> bool:
        if self._library is not None:
            done: bool = self._library.is_done()
            return done
        return self._done

    def finish(self) -> Any:
        """The message's value, or an error text (as ovs.json.Parser.finish)."""
        if self._library is not None:
            return self._library.finish()
        if not self._done:
            return "unexpected end of input"
        if self._error is not None:
            return self._error
        if "\\u" in self._text:
            return _library_value(self._text)
        try:
            return json.loads(
                self._text,
                parse_int=_integer,
                parse_float=_library_number,
                parse_constant=_rejected,
            )
        except (ValueError, RecursionError) as exc:
            return f"syntax error: {exc}"


def _library_value(text: str) -> Any:
    parser = ovs.json.Parser()
    parser.feed(text)
    return parser.finish()


def _library_number(literal: str) -> Any:
    """A number as the library converts it (an integral value is an int, outside 64 bits a
    float; an exponent or value out of range is an error)."""
    value = _library_value(f"[{literal}]")
    if isinstance(value, str):
        raise ValueError(value)
    return value[0]


def _integer(literal: str) -> Any:
    # Up to 18 digits always fits in 64 bits; longer ones the library may make a float.
    return int(literal) if len(literal) <= 18 else _library_number(literal)


def _rejected(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
