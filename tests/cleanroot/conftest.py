"""The clean-root tier's report: how long each root and each run took, printed at the end of the
session whatever the outcome (`make test` must say how long the tier took)."""

from __future__ import annotations

import pytest

_REPORT: list[str] = []
_SECONDS: list[float] = []  # set-up, call and tear-down of every test of the tier


@pytest.fixture(scope="session")
def cleanroot_report() -> list[str]:
    """Lines for the session's closing summary."""
    return _REPORT


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "cleanroot" in report.keywords:
        _SECONDS.append(report.duration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SECONDS:
        return
    took = sum(_SECONDS)
    terminalreporter.section("clean-root tier")
    for line in _REPORT:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"clean-root tier took {took:.0f} s ({took / 60:.1f} min)")
