"""SIGTERM as a request to stop between two turns of the loop, not in the middle of one.

`systemctl stop` and `restart` send SIGTERM. The ovs library's handler exits at once, wherever
the loop is, possibly with requests to charon in flight; stopping at the end of the turn
instead lets the daemon hand its record to the next one (core/handover.py), knowing exactly what
charon was given. The handler only sets a flag; the byte the interpreter writes to its wake-up
fd wakes the poll. A second SIGTERM goes to the ovs library's handler: stop now.

SIGHUP, the same way, is a request to reload (`systemctl reload`, logrotate): the loop reopens
the log file and re-reads the certificate files and charon, as `refresh` does. Left to the ovs
library, SIGHUP ended the daemon with a status systemd counts as clean (no restart).

May import: ovs, stdlib.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import ovs.poller


class StopSignal:
    def __init__(self) -> None:
        self.received = False
        self._hangup = False
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = signal.signal(signal.SIGTERM, self._handle)
        self._previous: Any = signal.SIG_DFL if previous is None else previous
        signal.signal(signal.SIGHUP, self._handle_hangup)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, self._previous)

    def _handle_hangup(self, signum: int, frame: FrameType | None) -> None:
        self._hangup = True

    def take_hangup(self) -> bool:
        """True once per SIGHUP burst: a reload is due."""
        hangup, self._hangup = self._hangup, False
        return hangup

    def wait(self, poller: ovs.poller.Poller) -> None:
        if self.received or self._hangup:
            poller.immediate_wake()
        else:
            poller.fd_wait(self._read, ovs.poller.POLLIN)

    def run(self) -> None:
        """Drain the wake-up bytes (any signal's: SIGCHLD of a child process too)."""
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass
