"""Cheap observations for the benchmark: kernel XFRM policy counts of a namespace, charon's
connections over VICI, and a process's CPU, context switches and memory from /proc.

The policy count is one netlink XFRM_MSG_GETSPDINFO request (what `ip xfrm policy count` sends):
constant cost whatever the number of policies, so polling it does not slow down the system being
measured. The netlink socket is opened inside the namespace (setns in this thread, then back), so
no process is started per poll. A full `ip xfrm policy` listing costs ~0.1 s at 4,000 policies;
it is used only once per measurement, to confirm what the counts mean.

May import: stdlib, vici.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

import vici
import vici.exception

CLONE_NEWNET = 0x40000000
NETLINK_XFRM = 6
XFRM_MSG_NEWSPDINFO = 36
XFRM_MSG_GETSPDINFO = 37
XFRMA_SPD_INFO = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in network namespace `ns` (this thread returns to its own at once)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


class SpdCounter:
    """`ip -n NS xfrm policy count` without a process: (in, out, fwd) main policies."""

    def __init__(self, ns: str) -> None:
        self.sock = netns_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def counts(self) -> tuple[int, int, int]:
        self.seq += 1
        payload = struct.pack("=I", 0xFFFFFFFF)
        header = struct.pack(
            "=IHHII", 16 + len(payload), XFRM_MSG_GETSPDINFO, NLM_F_REQUEST, self.seq, 0
        )
        self.sock.send(header + payload)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if seq == self.seq:
                    if mtype == NLMSG_ERROR:
                        (errno,) = struct.unpack_from("=i", data, offset + 16)
                        raise OSError(-errno, "XFRM_MSG_GETSPDINFO failed")
                    if mtype == XFRM_MSG_NEWSPDINFO:
                        return _parse_spdinfo(data[offset + 16 : offset + length])
                offset += (length + 3) & ~3

    def total(self) -> int:
        return sum(self.counts())


def _parse_spdinfo(body: bytes) -> tuple[int, int, int]:
    offset = 4  # u32 flags
    while offset + 4 <= len(body):
        rta_len, rta_type = struct.unpack_from("=HH", body, offset)
        if rta_len < 4:
            break
        if rta_type == XFRMA_SPD_INFO:
            incnt, outcnt, fwdcnt = struct.unpack_from("=III", body, offset + 4)
            return incnt, outcnt, fwdcnt
        offset += (rta_len + 3) & ~3
    raise OSError("no XFRMA_SPD_INFO in the reply")


@dataclass(frozen=True)
class PolicyCensus:
    total: int
    trap: int  # policies with an ESP template: charon's trap (or IPsec) policies
    block: int  # action block: the daemon's own protection policies


def policy_census(ns: str) -> PolicyCensus:
    text = subprocess.run(
        ["ip", "-n", ns, "xfrm", "policy"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    # Per-socket policies (charon's IKE socket bypasses) are not in the SPD counts either.
    blocks = [b for b in text.split("\nsrc ") if b.strip() and "\tsocket " not in b]
    return PolicyCensus(
        total=len(blocks),
        trap=sum(1 for b in blocks if "proto esp" in b),
        block=sum(1 for b in blocks if "action block" in b),
    )


def flush_xfrm(ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "xfrm", "policy", "flush"], check=True, timeout=60)
    subprocess.run(["ip", "-n", ns, "xfrm", "state", "flush"], check=True, timeout=60)


# -- VICI -------------------------------------------------------------------------------------


class Vici:
    """A VICI command session to a charon socket (by path; works across network namespaces)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(path)
        self.sock = sock
        self.session = vici.Session(sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def count_conns(self, prefix: bytes = b"ovs-") -> int:
        """VICI-loaded connections whose name starts with `prefix` (get-conns: names only)."""
        return sum(1 for name in self.session.get_conns()["conns"] if name.startswith(prefix))

    def conn(self, name: str) -> dict | None:
        """The one connection `name` (list-conns filtered by name), or None."""
        for item in self.session.list_conns({"ike": name}):
            if name in item:
                return item[name]
        return None

    def has_conn(self, name: str, remote: str | None = None) -> bool:
        conn = self.conn(name)
        if conn is None:
            return False
        if remote is None:
            return True
        return remote.encode() in conn.get("remote_addrs", [])


def wait_socket(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no listener on {path} after {timeout:g} s") from None
        time.sleep(0.02)


# -- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    t: float
    cpu_self: float  # utime + stime, seconds
    cpu_children: float  # cutime + cstime (reaped children, e.g. `ip` runs), seconds
    vcsw: int  # voluntary context switches: the process blocked and was woken
    nvcsw: int
    rss_kib: int
    hwm_kib: int

    @property
    def cpu(self) -> float:
        return self.cpu_self + self.cpu_children


def proc_sample(pid: int) -> ProcSample:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14 -> index 11.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    status: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return ProcSample(
        t=time.monotonic(),
        cpu_self=(utime + stime) / CLK_TCK,
        cpu_children=(cutime + cstime) / CLK_TCK,
        vcsw=int(status["voluntary_ctxt_switches"]),
        nvcsw=int(status["nonvoluntary_ctxt_switches"]),
        rss_kib=int(status.get("VmRSS", "0 kB").split()[0]),
        hwm_kib=int(status.get("VmHWM", "0 kB").split()[0]),
    )


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
