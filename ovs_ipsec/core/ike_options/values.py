"""The value parsers the option table's rows use: yes/no, durations, volumes, whole numbers,
percentages and choices, each checked against the limits charon and the kernel accept.

Each takes a cleaned value (stripped, ASCII, no control characters, non-empty) and returns its
translation or raises `Refused` with a reason for the operator.

May import: parse, stdlib.
"""

from __future__ import annotations

import re

from ovs_ipsec.core.parse import parse_bool, quoted

DAY = 86400
MAX_VOLUME = 10**15 - 1  # charon reads byte/packet counts into a 16-byte buffer
MAX_FUZZ = 1000  # percent


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DURATION = re.compile(r"([0-9]{1,12})\s*([smhd]?)", re.ASCII | re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}
_VOLUME = re.compile(r"([0-9]{1,16})\s*([kmg]?)", re.ASCII | re.IGNORECASE)
_VOLUME_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_INTEGER = re.compile(r"[0-9]{1,12}", re.ASCII)
_PERCENT = re.compile(r"([0-9]{1,6})\s*%?", re.ASCII)


def boolean(value: str) -> bool:
    flag = parse_bool(value)
    if flag is None:
        raise Refused(f"expected yes or no, got {quoted(value)}")
    return flag


def yes_no(value: str) -> str:
    return "yes" if boolean(value) else "no"


def duration(value: str, *, maximum: int, minimum: int = 1) -> int:
    """Seconds from `30s`, `20m`, `1h`, `1d` or plain seconds; 0 allowed (means "off")."""
    if value.startswith("-"):
        raise Refused(f"must not be negative, got {quoted(value)}")
    match = _DURATION.fullmatch(value)
    if not match:
        raise Refused(
            f"expected a duration such as 30s, 20m, 1h, 1d or plain seconds, got {quoted(value)}"
        )
    seconds = int(match.group(1)) * _UNIT[match.group(2).lower()]
    if seconds > maximum:
        raise Refused(f"{quoted(value)} is longer than the maximum of {human(maximum)}")
    if 0 < seconds < minimum:
        raise Refused(
            f"{quoted(value)} is shorter than {minimum}s (0 turns it off); SAs would be "
            "renewed continuously"
        )
    return seconds


def human(seconds: int) -> str:
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def as_seconds(seconds: int) -> str:
    return f"{seconds}s"


def volume(value: str) -> int:
    """Bytes or packets: plain number or with charon's k/m/g (1024-based) suffix."""
    if value.startswith("-"):
        raise Refused(f"must not be negative, got {quoted(value)}")
    match = _VOLUME.fullmatch(value)
    if not match:
        raise Refused(f"expected a number (optionally with k, m or g), got {quoted(value)}")
    number = int(match.group(1)) * _VOLUME_UNIT[match.group(2).lower()]
    if number > MAX_VOLUME:
        raise Refused(f"{quoted(value)} is larger than charon accepts ({MAX_VOLUME})")
    return number


def integer(value: str, low: int, high: int) -> int:
    if value.startswith("-"):
        raise Refused(f"must not be negative, got {quoted(value)}")
    if not _INTEGER.fullmatch(value):
        raise Refused(f"expected a whole number, got {quoted(value)}")
    number = int(value)
    if not low <= number <= high:
        raise Refused(f"must be between {low} and {high}, got {number}")
    return number


def percent(value: str) -> int:
    match = _PERCENT.fullmatch(value)
    if not match:
        raise Refused(f"expected a percentage such as 100%, got {quoted(value)}")
    number = int(match.group(1))
    if number > MAX_FUZZ:
        raise Refused(f"must be at most {MAX_FUZZ}%, got {number}%")
    return number


def choice(value: str, mapping: dict[str, str | None], what: str) -> str | None:
    """Look `value` up (case-insensitively); mapped to None means refused (reason in `what`)."""
    word = value.lower()
    if word not in mapping:
        accepted = ", ".join(k for k, v in mapping.items() if v is not None)
        raise Refused(f"expected one of {accepted}, got {quoted(value)}")
    result = mapping[word]
    if result is None:
        raise Refused(what.format(value=quoted(value)))
    return result
