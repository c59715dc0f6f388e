"""The pure parts of the charon adapter: the --vici URI and the decoding of VICI replies."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from ovs_ipsec.adapters.charon import DEFAULT_VICI_URI, vici_path
from ovs_ipsec.core.vici_wire import bytes_to_text as decode


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("unix:///var/run/charon.vici", "/var/run/charon.vici"),
        ("unix:///tmp/lab/h1/charon.vici", "/tmp/lab/h1/charon.vici"),
        (DEFAULT_VICI_URI, "/var/run/charon.vici"),
    ],
)
def test_vici_path_accepts_unix_absolute_paths(uri: str, path: str) -> None:
    """`unix:///abs/path` gives the absolute socket path."""
    assert vici_path(uri) == path


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/var/run/charon.vici",
        "charon.vici",
        "unix:",
        "unix://",
        "unix:relative/charon.vici",
        "unix://var/run/charon.vici",  # "var" is a host, not part of the path
        "unix://host/var/run/charon.vici",
        "tcp://127.0.0.1:4502",
        "tcp:127.0.0.1:4502",
        "file:///var/run/charon.vici",
    ],
)
def test_vici_path_rejects_everything_else(uri: str) -> None:
    """Anything but a unix URI with an absolute path is refused with a ValueError that names
    the option."""
    with pytest.raises(ValueError, match="--vici"):
        vici_path(uri)


@pytest.mark.parametrize("uri", ["unix:///tmp/a?b", "unix:///tmp/a#b", "unix:///tmp/a;b"])
def test_vici_path_never_silently_drops_part_of_the_path(uri: str) -> None:
    """A URI whose text after the path would be dropped by URL parsing is either taken whole
    or refused, never turned into a different socket path."""
    try:
        path = vici_path(uri)
    except ValueError:
        return
    assert path == uri[len("unix://") :]


def test_decode_nested_reply() -> None:
    """decode turns every bytes value (in sections, lists and lists in sections) into str,
    keeps the structure, and turns vici's OrderedDicts into plain dicts."""
    reply = OrderedDict(
        [
            ("daemon", b"charon-systemd"),
            (
                "ovs-192.0.2.2",
                OrderedDict(
                    [
                        ("local_addrs", [b"%any"]),
                        (
                            "children",
                            OrderedDict([("ovs-gre0", OrderedDict([("mode", b"TRANSPORT")]))]),
                        ),
                    ]
                ),
            ),
            ("empty", []),
            ("section", OrderedDict()),
        ]
    )
    decoded = decode(reply)
    assert decoded == {
        "daemon": "charon-systemd",
        "ovs-192.0.2.2": {
            "local_addrs": ["%any"],
            "children": {"ovs-gre0": {"mode": "TRANSPORT"}},
        },
        "empty": [],
        "section": {},
    }
    assert type(decoded) is dict
    assert type(decoded["ovs-192.0.2.2"]["children"]) is dict


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", ""),
        (b"caf\xc3\xa9", "café"),
        (b"\xff\xfe", "\ufffd\ufffd"),  # invalid UTF-8 is replaced, never raises
        ([b"a", [b"b", {"c": b"d"}]], ["a", ["b", {"c": "d"}]]),
        (None, None),
        (5, 5),
        ("already str", "already str"),
    ],
)
def test_decode_values(value: object, expected: object) -> None:
    """Bytes become str (invalid UTF-8 replaced); other values pass through unchanged."""
    assert decode(value) == expected


def test_complete_utf8_never_splits_a_character() -> None:
    """The OVSDB stream wrapper hands on only whole UTF-8 characters, whatever the cut."""
    from ovs_ipsec.adapters.ovsdb import complete_utf8

    text = "aé€😀z".encode()
    for cut in range(len(text) + 1):
        head = text[:cut]
        keep = complete_utf8(head)
        head[:keep].decode("utf-8")  # never raises
        assert cut - keep < 4
