"""Our log lines, built the way `ovs.vlog` builds them, at a fraction of the cost.

`ovs.vlog.Vlog._build_message` re-parses the destination's pattern for every line and every
destination, with a dozen regular-expression substitutions each: about 80 µs a destination on
this machine, so a line at INFO (console, syslog and file) costs a quarter of a millisecond
before anything is written. A restart at a thousand tunnels logs two thousand lines (upstream's
"Tunnel ... appeared" and each tunnel's state), a remote_ip change about twenty: the builder was
half of the first and a fifth of the second.

`Vlog` here compiles each pattern once into literal parts and fields and fills them in per line.
It produces the library's output exactly (quirks included: the `###` milliseconds of a float
cut to width, the padding of each field, the stripped line ends); `tests/unit/test_log_lines.py`
compares both over the default patterns and others. A pattern it does not handle exactly (a
field other than %A %c %N %p %T %m, %m not last, a stray `%`, a second time directive) goes to the
library's own builder. Levels, destinations, handlers, filters (adapters/log_guard.py),
`vlog/set` and `vlog/reopen` are the library's, untouched.

`lighten_records`, called once at start-up, spares every record two costs that no log shows:
the caller lookup, and a syslog handler's failing connects when there is no syslog socket.

May import: ovs.vlog, ovs.util, stdlib.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import threading
from collections.abc import Callable

import ovs.util
import ovs.vlog

# The library's own expressions (ovs/vlog.py): its time directive, its fields, their flags.
_TIME = re.compile(r"(%(0?[1-9]?[dD])(\{(.*)\})?)")
_FIELD = re.compile("(%-?[0]?[0-9]?[AcmNnpPrtT])")
_FLAGS = re.compile("^%(0)?([1-9])?")
_HASHES = re.compile("#+")
_SUPPORTED = frozenset("AcNpTm")

# One line's values: (module name, message, level, message number).
Part = Callable[[str, str, str, int], str]


def _padder(directive: str) -> Callable[[str], str]:
    """The library's `_format_field` padding for `directive`, as a function of the value."""
    flags = _FLAGS.match(directive)
    assert flags is not None
    centre = not flags.group(1)
    width = int(flags.group(2)) if flags.group(2) else 0

    def pad(value: str) -> str:
        if centre and value != "":
            value = value.center(len(value) + 2)
        if width and len(value) < width:
            value = value.center(width)
        return value

    return pad


def _time_part(directive: str, utc: bool, strftime: str | None) -> Part:
    pad = _padder(directive)
    hashes = _HASHES.search(strftime) if strftime is not None else None
    width = len(hashes.group(0)) if hashes else 0

    def part(name: str, message: str, level: str, number: int) -> str:
        now = datetime.datetime.utcnow() if utc else datetime.datetime.now()
        if strftime is None:
            text = datetime.datetime.isoformat(now.replace(microsecond=0))
        else:
            text = datetime.date.strftime(now, strftime)
            if width:
                msec = "{0:0>{i}.{i}}".format(str(now.microsecond / 1000), i=width)
                text = _HASHES.sub(msec, text)
        return pad(text)

    return part


def _field_part(directive: str) -> Part:
    pad = _padder(directive)
    kind = directive[-1]
    if kind == "A":
        return lambda name, message, level, number: pad(ovs.util.PROGRAM_NAME)
    if kind == "c":
        return lambda name, message, level, number: pad(name)
    if kind == "N":
        return lambda name, message, level, number: pad(str(number))
    if kind == "p":
        return lambda name, message, level, number: pad(level.upper())
    if kind == "m":
        return lambda name, message, level, number: pad(message)

    def thread(name: str, message: str, level: str, number: int) -> str:
        current = threading.current_thread().name
        return pad("" if current == "MainThread" else f"({current})")

    return thread


@functools.lru_cache(maxsize=16)
def compile_pattern(pattern: str) -> tuple[str | Part, ...] | None:
    """`pattern` as literal parts and fields, or None when only the library builds it exactly."""
    time = _TIME.search(pattern)
    if time is None:
        return _fields(pattern)
    directive, strftime = time.group(1), time.group(4)
    try:
        # The library substitutes the directive's text used as an expression: it must stand for
        # itself alone. A `%%` in the time format would put a `%` before the fields are read.
        literal = re.sub(directive, "", pattern) == pattern.replace(directive, "", 1)
    except re.error:
        return None
    if not literal or (strftime is not None and "%%" in strftime):
        return None
    before, after = pattern.split(directive, 1)
    head, tail = _fields(before), _fields(after)
    if head is None or tail is None or (head and "m" in _kinds(before)):
        return None  # %m before the time: the time would be read into the message
    return (*head, _time_part(directive, time.group(2)[-1] == "D", strftime), *tail)


def _kinds(text: str) -> str:
    return "".join(directive[-1] for directive in _FIELD.findall(text))


def _fields(text: str) -> tuple[str | Part, ...] | None:
    """Literal text and fields; None when a field is not handled, a `%` is left in the text or
    a field follows %m (the library would substitute it inside the message too)."""
    kinds = _kinds(text)
    if not set(kinds) <= _SUPPORTED or "m" in kinds[:-1]:
        return None
    out: list[str | Part] = []
    for i, piece in enumerate(_FIELD.split(text)):
        if i % 2 == 1:
            if "-" in piece:
                return None
            out.append(_field_part(piece))
        elif "%" in piece:
            return None
        elif piece:
            out.append(piece)
    return tuple(out)


class Vlog(ovs.vlog.Vlog):
    """`ovs.vlog.Vlog` with each destination's pattern compiled once (see the module doc)."""

    def _build_message(self, message: str, destination: str, level: str, msg_num: int) -> str:
        parts = compile_pattern(ovs.vlog.PATTERNS[destination])
        if parts is None or "%" in self.name or "%" in ovs.util.PROGRAM_NAME:
            built: str = super()._build_message(message, destination, level, msg_num)
            return built
        name = self.name
        return "".join(
            p if isinstance(p, str) else p(name, message, level, msg_num) for p in parts
        ).strip()


def lighten_records() -> None:
    """Two costs per line that buy nothing, switched off once at start-up:

    * No vlog handler shows where a record was made (they format the message alone; vlog's
      patterns have no such field): the logging module is told, with its documented switches,
      not to look up the caller's frame, thread and process for every record.
    * Without a syslog socket (no /dev/log: a container, this lab), the library's syslog
      handler tries to connect, twice, for every line and fails: 70 µs a line here. Lines for
      syslog go to the handler only while its socket file exists (`SyslogPresent`); where it
      does (systemd, rsyslog), every line goes as before."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    syslog = logging.getLogger("syslog")
    if not any(isinstance(f, SyslogPresent) for f in syslog.filters):
        syslog.addFilter(SyslogPresent())


class SyslogPresent(logging.Filter):
    """Passes a record only when the syslog handler's socket file exists (see lighten_records):
    without it the handler could not deliver the line anyway. A check costs one stat()."""

    def filter(self, record: logging.LogRecord) -> bool:
        address = getattr(ovs.vlog, "syslog_handler", None)
        address = getattr(address, "address", None)
        return not isinstance(address, str) or os.path.exists(address)
