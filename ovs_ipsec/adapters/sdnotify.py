"""systemd's readiness protocol (sd_notify) with the standard library: one datagram to
$NOTIFY_SOCKET. A no-op when not started by systemd with Type=notify.

The watchdog: with WatchdogSec= set, systemd passes WATCHDOG_USEC (and WATCHDOG_PID) and
restarts a service that sends no WATCHDOG=1 for that long. The loop sends it at half the
interval, from its own turns only, so a loop stuck in a call is noticed and restarted.

May import: stdlib.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to systemd; False when there is nobody to
    tell or the socket refused it (systemd then just never sees readiness; we keep running)."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 (half of systemd's WatchdogSec), or None when systemd
    watches no process of ours or another one (WATCHDOG_PID names the process it watches)."""
    env = environ if environ is not None else os.environ
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Watchdog:
    """WATCHDOG=1 every `interval` seconds, sent from `run()` (each turn of the loop, and while
    it waits for charon) and kept in time by `wait()`'s timer."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next = clock()

    def run(self) -> None:
        now = self.clock()
        if now >= self._next:
            notify("WATCHDOG=1")
            self._next = now + self.interval

    def wait(self, poller: Any) -> None:
        poller.timer_wait(max(0, int((self._next - self.clock()) * 1000)))
