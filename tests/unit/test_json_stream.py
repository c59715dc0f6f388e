"""adapters/json_stream.py finds JSON-RPC messages in a stream and decodes them as ovs.json's
pure-Python parser does (the oracle here), whatever the pieces they arrive in."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import ovs.json
import pytest

from ovs_ipsec.adapters.json_stream import StreamParser

MESSAGES = [
    '{"id":1,"method":"monitor_cond","params":["Open_vSwitch",null,{}]}',
    '{"id":null,"method":"update2","params":[null,{"Interface":{"0b1c":{"modify":{'
    '"options":["map",[["psk","a]b}c{[\\"x\\\\"],["remote_ip","10.0.0.1"]]]}}}}]}',
    '{"result":{"x":[1,-0,0.5,1.0,1e2,-2.5e-3,9223372036854775807,9223372036854775808,'
    '-9223372036854775809,123456789012345678901234]},"error":null,"id":7}',
    '{"s":"ünïcode ✓ \\n\\t\\/ \\"quoted\\" back\\\\slash","e":"","t":true,"f":false,"n":null}',
    '[1,[2,[3,{"a":[]}]],{}]',
    '{"escaped":"\\u00e9 and \\ud83d\\ude00"}',
    "  \n\t{}",
]
BROKEN = [
    '{"nul":"\\u0000"}',  # the library refuses NUL
    '{"lone":"\\ud800x"}',  # and a lone surrogate
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":1,}',
    '{"a" 1}',
    '{"a":[1,2}',
    '{"a":"raw\x01control"}',
    '{"a":1e999999999999999999999}',
    "[" * 1500 + "]" * 1500,
]


def _run(make: Callable[[], Any], chunks: list[str]) -> list[Any]:
    """What ovs.jsonrpc.Connection.recv does with its parser, chunk by chunk, until the first
    error (after which the connection reads no more)."""
    values: list[Any] = []
    parser = None
    pending = ""
    for chunk in chunks:
        pending += chunk
        while pending:
            if parser is None:
                parser = make()
            pending = pending[parser.feed(pending) :]
            if not parser.is_done():
                break
            values.append(parser.finish())
            parser = None
            if isinstance(values[-1], str):
                return values
    return values


def _chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def _errors_as_errors(values: list[Any]) -> list[Any]:
    return ["<error>" if isinstance(v, str) else v for v in values]


@pytest.mark.parametrize("seed", range(40))
def test_same_messages_as_the_library_in_any_pieces(seed: int) -> None:
    rng = random.Random(seed)
    stream = "".join(rng.choice(MESSAGES) for _ in range(6))
    chunks = _chunks(stream, rng)
    ours = _run(StreamParser, chunks)
    assert ours == _run(ovs.json.Parser, chunks)
    library = _run(ovs.json.Parser, [stream])
    assert all(type(a) is type(b) for a, b in zip(ours, library, strict=True))


@pytest.mark.parametrize("text", BROKEN)
def test_a_broken_message_is_an_error_text_as_in_the_library(text: str) -> None:
    library = _run(ovs.json.Parser, [text])
    ours = _run(StreamParser, [text])
    assert _errors_as_errors(ours) == _errors_as_errors(library)
    assert ours and isinstance(ours[0], str)


def test_one_byte_at_a_time_and_all_at_once() -> None:
    stream = "".join(MESSAGES)
    one_by_one = _run(StreamParser, list(stream))
    assert one_by_one == _run(StreamParser, [stream]) == _run(ovs.json.Parser, [stream])
    assert len(one_by_one) == len(MESSAGES)


def test_a_big_update_is_decoded_by_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_library_parser() -> None:
        raise AssertionError("the library's pure-Python parser was used")

    monkeypatch.setattr(ovs.json, "Parser", no_library_parser)
    rows = {
        f"{i:08x}-0000-0000-0000-000000000000": {
            "initial": {"name": f"t{i}", "options": ["map", [["remote_ip", f"10.0.{i}.1"]]]}
        }
        for i in range(200)
    }
    text = json.dumps({"id": 3, "result": {"Interface": rows}, "error": None})
    assert _run(StreamParser, _chunks(text, random.Random(1))) == [json.loads(text)]
