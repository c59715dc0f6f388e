"""The clean-root tier's report: how long each root and each run took, printed at the end of the
session whatever the outcome (`make test` must say how long the tier took)."""

from __future__ import annotations

import time

import pytest

_REPORT: list[str] = []
_STARTED: list[float] = []


@pytest.fixture(scope="session")
def cleanroot_report() -> list[str]:
    """Lines for the session's closing summary; the first use starts the tier's clock."""
    if not _STARTED:
        _STARTED.append(time.monotonic())
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _STARTED:
        return
    took = time.monotonic() - _STARTED[0]
    terminalreporter.section("clean-root tier")
    for line in _REPORT:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"clean-root tier took {took:.0f} s ({took / 60:.1f} min)")
