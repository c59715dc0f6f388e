"""adapters/log_lines.py builds exactly the lines ovs.vlog builds, much faster."""

from __future__ import annotations

import datetime as real_datetime
import logging
import socket
import types
from collections.abc import Iterator
from pathlib import Path

import ovs.vlog
import pytest

from ovs_ipsec.adapters import log_lines
from ovs_ipsec.adapters.log_lines import (
    SyslogPresent,
    Vlog,
    compile_pattern,
    lighten_records,
)

# The library calls threading.currentThread(), deprecated since 3.10.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MESSAGES = [
    "Tunnel t1 appeared in OVSDB",
    "",
    "with %p and %c and %m inside, \\1 \\g<0> and a backslash \\",
    "trailing spaces and a newline  \n",
    "  leading spaces",
    "ünïcode ✓",
]
PATTERNS = [
    *ovs.vlog.PATTERNS.values(),  # the defaults: console, file, syslog
    "%D{%Y-%m-%dT%H:%M:%S.###Z}|%05N|%c%T|%p|%m",
    "%d{%H:%M:%S}|%c|%m",
    "%D|%5N|%p|%A %m",
    "%d %m",
    "%m",
    "%D{%H.##}|%0c|%9p|%m",
    "x%D{}y|%N|%m",
    "%A%c%N%p%T",
    "plain text",
    "%05N %m %c",  # %m not last: the library's builder
    "%t %P %n %m",  # fields only the library builds
    "%-5c %m",
    "100%% %m",
    "%D{%%c}|%m",
    "%D{2}|%m",
    "%m|%D{%H}",
    "%c|%D{%H}|%D{%M}|%m",
]


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[real_datetime.datetime]]:
    """Both builders read the same fixed clock (utcnow and now)."""
    now: list[real_datetime.datetime] = [real_datetime.datetime(2026, 12, 7, 15, 36, 1)]

    class Clock(real_datetime.datetime):
        @classmethod
        def utcnow(cls) -> real_datetime.datetime:  # type: ignore[override]
            return now[0]

        @classmethod
        def now(cls, tz: real_datetime.tzinfo | None = None) -> real_datetime.datetime:  # type: ignore[override]
            return now[0]

    fake = types.SimpleNamespace(datetime=Clock, date=real_datetime.date)
    monkeypatch.setattr(ovs.vlog, "datetime", fake)
    monkeypatch.setattr(log_lines, "datetime", fake)
    yield now


def library_line(vlog: Vlog, message: str, destination: str, level: str, number: int) -> str:
    line: str = ovs.vlog.Vlog._build_message(vlog, message, destination, level, number)
    return line


def _vlog(name: str) -> Vlog:
    vlog = Vlog.__new__(Vlog)  # no registration: vlog may be initialised already
    vlog.name = name
    return vlog


@pytest.mark.parametrize("pattern", PATTERNS)
def test_lines_are_the_librarys(
    pattern: str, frozen: list[real_datetime.datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ovs.vlog.PATTERNS, "file", pattern)
    vlog = _vlog("ovs-monitor-ipsec")
    for micro in (0, 3000, 56000, 143123, 999999):
        frozen[0] = frozen[0].replace(microsecond=micro)
        for message in MESSAGES:
            for level, number in (("INFO", 1), ("DBG", 1010), ("WARN", 123456)):
                ours = vlog._build_message(message, "file", level, number)
                assert ours == library_line(vlog, message, "file", level, number)


def test_patterns_it_builds_itself() -> None:
    for pattern in ovs.vlog.PATTERNS.values():
        assert compile_pattern(pattern) is not None
    for pattern in ("%05N %m %c", "%r %m", "%-5c %m", "100%% %m", "%D{%%c}|%m", "%D{2}|%m"):
        assert compile_pattern(pattern) is None


def test_syslog_lines_go_out_only_while_its_socket_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = logging.LogRecord("syslog", logging.INFO, "", 0, "a line", None, None)
    present = SyslogPresent()
    handler = types.SimpleNamespace(address=str(tmp_path / "log"))
    monkeypatch.setattr(ovs.vlog, "syslog_handler", handler)
    assert not present.filter(record)  # no socket: the handler would fail to connect
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(handler.address)
        assert present.filter(record)
    monkeypatch.setattr(ovs.vlog, "syslog_handler", types.SimpleNamespace(address=("h", 514)))
    assert present.filter(record)  # UDP syslog: always handed over
    monkeypatch.setattr(ovs.vlog, "syslog_handler", "")  # none yet (the library's initial "")
    assert present.filter(record)


def test_lighten_records_installs_its_syslog_filter_once() -> None:
    syslog = logging.getLogger("syslog")
    before = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    srcfile = logging._srcfile  # type: ignore[attr-defined]
    try:
        lighten_records()
        lighten_records()
        assert sum(isinstance(f, SyslogPresent) for f in syslog.filters) == 1
    finally:
        for f in [f for f in syslog.filters if isinstance(f, SyslogPresent)]:
            syslog.removeFilter(f)
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = before
        logging._srcfile = srcfile  # type: ignore[attr-defined]
