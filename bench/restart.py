"""Observers for the restart figure: our daemon restarted while charon and the kernel already
hold everything. How long until it says READY, and what did it write meanwhile, counted from
outside the daemon:

- **READY**: `Readiness` binds a datagram socket and is passed to the daemon as NOTIFY_SOCKET,
  the way systemd (Type=notify) would; the daemon sends `READY=1` once its first pass has
  converged (cli.run_loop). What systemd orders dependants after, so the figure that counts.
- **writes to charon**: charon's own log. At `cfg` level 2 (the lab's charon.log) the vici
  plugin logs every request it dispatches, `vici client N requests: CMD`, before running it, so
  a request from any client (ours, or anyone's) is counted by its command name. Reads (`get-*`,
  `list-*`, `version`, `stats`) are reported apart from writes.
- **writes to the kernel**: `ip xfrm monitor` in the namespace: every XFRM netlink notification
  (policy and SA added, updated, deleted, flushed), whoever wrote it (our block policies,
  charon's trap policies). A canary policy in TEST-NET-1 is added and deleted before the window
  opens and again after it closes; seeing both canaries proves the monitor listened for the
  whole window. The canaries' own events are not counted.

May import: stdlib.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

CHARON_WRITES = frozenset({
    "load-conn", "unload-conn", "load-shared", "unload-shared", "load-key", "unload-key",
    "load-token", "load-cert", "load-authority", "unload-authority", "clear-creds",
    "flush-certs", "load-pool", "unload-pool", "initiate", "terminate", "install", "uninstall",
    "rekey", "redirect", "reload-settings",
})  # fmt: skip
_REQUEST = re.compile(r"vici client \d+ requests: ([\w-]+)")
CANARY_SRC = "192.0.2.1"  # TEST-NET-1: never one of the benchmark's addresses


def charon_requests(log_slice: str) -> tuple[Counter[str], Counter[str]]:
    """(writes, reads) by VICI command, from a slice of charon's cfg-level-2 log."""
    writes: Counter[str] = Counter()
    reads: Counter[str] = Counter()
    for command in _REQUEST.findall(log_slice):
        (writes if command in CHARON_WRITES else reads)[command] += 1
    return writes, reads


def xfrm_events(text: str) -> Counter[str]:
    """`ip xfrm monitor` output -> counts such as {"policy add": 2, "policy delete": 1}. Each
    notification starts on an unindented line; "Deleted"/"Updated" prefix deletes and updates.
    The canary's events are left out."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and blocks:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    counts: Counter[str] = Counter()
    for block in blocks:
        whole = " ".join(" ".join(block).split())  # continuation lines start with a tab
        if f"src {CANARY_SRC}/32" in whole:
            continue
        head = block[0]
        verb = (
            "delete" if head.startswith("Deleted")
            else "update" if head.startswith("Updated")
            else "flush" if head.startswith("Flushed")
            else "add"
        )  # fmt: skip
        kind = "policy" if " dir " in whole else "sa" if " spi " in whole else "other"
        counts[f"{kind} {verb}"] += 1
    return counts


class XfrmMonitor:
    """`ip -n NS xfrm monitor` into a file, fenced by canaries (see the module docstring)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        fd, self.path = tempfile.mkstemp(prefix="bench-xfrm-monitor-")
        os.close(fd)
        self._out = open(self.path, "w")  # noqa: SIM115 - closed in close()
        self._text = ""
        self.proc = subprocess.Popen(
            ["ip", "-n", ns, "xfrm", "monitor"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._canary(1)

    def _read(self) -> str:
        with open(self.path) as f:
            return f.read()

    def _canary(self, k: int) -> None:
        """Add and delete a canary policy until the monitor has reported both: the monitor
        subscribes some time after it starts, and what happens before is never reported."""
        dst = f"192.0.2.{10 + k}/32"
        sel = ["src", f"{CANARY_SRC}/32", "dst", dst, "dir", "out"]
        deadline = time.monotonic() + 10
        while True:
            subprocess.run(
                ["ip", "-n", self.ns, "xfrm", "policy", "add", *sel, "priority", "1",
                 "action", "block"],
                check=True,
            )  # fmt: skip
            seen = self._wait(f"dst {dst}", 0.2)
            subprocess.run(["ip", "-n", self.ns, "xfrm", "policy", "delete", *sel], check=True)
            if seen and self._wait(f"Deleted src {CANARY_SRC}/32 dst {dst}", 10):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"ip xfrm monitor in {self.ns} did not report a canary")

    def _wait(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self._read():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> Counter[str]:
        """Close the window (second canary), stop the monitor, return the event counts."""
        self._canary(2)
        self.close()
        return xfrm_events(self._text)

    def close(self) -> None:
        """Stop the monitor and remove its file (again: a no-op)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        if not self._out.closed:
            self._out.close()
            self._text = self._read()
            os.unlink(self.path)


@dataclass
class Readiness:
    """A datagram socket standing in for systemd's notify socket."""

    path: str = field(init=False)
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="bench-notify-")
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_ready(self, timeout: float) -> float | None:
        """time.monotonic() at which READY=1 arrived; None after `timeout` s without it."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()
        return None

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self._dir)
