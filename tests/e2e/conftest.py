"""The full-kernel e2e tier: registers the `e2e` marker (see e2e/README.md)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: boots a Debian kernel under qemu and runs the full-kernel scenarios (e2e/run.py)",
    )
