"""Plaintext protection end to end (issue 4): OVSDB -> daemon -> kernel XFRM block policies.

test_xfrm_kernel.py checks the policies themselves; these tests check what the *daemon* makes of
OVSDB: which policies it owns at each moment, and what that means for real packets between lab
hosts. Packets are sent from sockets opened inside a host's namespace (setns); SO_MARK stands in
for the skb mark OVS would set. Outbound, a block policy fails sendto() with EPERM and raises
XfrmOutPolBlock; a charon trap lets sendto() succeed, raises XfrmOutNoStates and puts nothing on
the wire. Inbound, a block raises XfrmInPolBlock and the receiving socket gets nothing. "Never on
the wire" is checked with tcpdump on the peer's eth0, which sees packets before the peer's own
XFRM policies could drop them; each capture ends with an unprotected control packet that must be
in it, so an empty result cannot come from a dead or late capture.

The daemon's own policies are recognised here by their priorities (430001 fail-closed, 430003
ipsec_skb_mark) in plain `ip xfrm policy` output, independently of the product's parser.

Over 400 lines: one test per moment of a tunnel's life at which plaintext could leak, sharing the
packet probes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from resilience_lab import others, own, policy_blocks

from ovs_ipsec.daemon.policy_guard import LINGER_GRAIN
from ovs_ipsec.tools.lab import Host, Lab, in_netns, wait_for

pytestmark = pytest.mark.lab

FAIL_CLOSED, SKB_MARK = 430001, 430003
GRE_HEADER = b"\0\0\x65\x58"  # no flags, transparent Ethernet bridging
CONTROL_PORT = 7777  # never a tunnel port: the unprotected control
CUSTOM_PORT = 5555  # dst_port of a plain VXLAN tunnel: ipsec_skb_mark must cover it
WAIT = 10.0
FAST = ["--reconcile-interval=1"]
# Fail-closed blocks of a port that went away linger (--protection-linger, 30 s by default);
# tests about what the daemon owns right after a removal turn that off, and
# test_removed_ports_blocks_linger_then_go checks the linger itself.
NO_LINGER = ["--protection-linger=0"]


# --- policies as `ip xfrm policy` prints them -----------------------------------------------------


def _any_halves(addr: str) -> tuple[str, str]:
    """Any address, as the daemon's fail-closed policies spell it: two /1 halves, never the /0
    that charon uses for a trap when it cannot tell its own address."""
    return ("::/1", "8000::/1") if ":" in addr else ("0.0.0.0/1", "128.0.0.0/1")


def _hostnet(addr: str) -> str:
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def _sel(target: str | int) -> str:
    """`gre`, a UDP port, or `tcp/PORT` (STT)."""
    if target == "gre":
        return "proto gre"
    if isinstance(target, str) and target.startswith("tcp/"):
        return f"proto tcp dport {target[4:]}"
    return f"proto udp dport {target}"


def block(direction: str, src: str, dst: str, target: str | int, prio: int, mark: str = "") -> str:
    text = f"src {src} dst {dst} {_sel(target)} dir {direction} action block priority {prio}"
    return f"{text} ptype main" + (f" mark {mark}" if mark else "")


def fail_closed(remote: str, target: str | int) -> set[str]:
    """The four policies the daemon owns for one IPsec tunnel to `remote`: out and in, each for
    both halves of the address space."""
    return {
        policy
        for half in _any_halves(remote)
        for policy in (
            block("out", half, _hostnet(remote), target, FAIL_CLOSED),
            block("in", _hostnet(remote), half, target, FAIL_CLOSED),
        )
    }


def skb_mark(mark: str, ports: tuple[int, ...] = (4789, 6081)) -> set[str]:
    """The ipsec_skb_mark policies: IPv4 and IPv6, GRE, every tunnel UDP port and STT's TCP 7471,
    outbound only (a received packet meets the inbound policy check with mark 0, whatever OVS
    would do)."""
    return {
        block("out", anynet, anynet, target, SKB_MARK, mark)
        for anynet in ("0.0.0.0/0", "::/0")
        for target in ("gre", *ports, "tcp/7471")
    }


def wait_own(host: Host, expected: set[str], timeout: float = WAIT) -> list[str]:
    """Wait until the daemon's policies in `host` are exactly `expected` (no duplicates)."""
    want = sorted(expected)
    try:
        wait_for(lambda: own(host) == want, timeout, what="policies")
        return want
    except TimeoutError:
        got = own(host)
        extra = sorted(set(got) - expected)
        missing = sorted(expected - set(got))
        dups = [b for b, n in collections.Counter(got).items() if n > 1]
        raise AssertionError(
            f"{host.name}: own policies not as expected after {timeout} s\n"
            f"extra: {extra}\nmissing: {missing}\nduplicates: {dups}\n"
            f"--- daemon log tail ---\n{log_tail(host)}"
        ) from None


def log_tail(host: Host, lines: int = 40) -> str:
    keep = [
        line
        for line in host.daemon_log().splitlines()
        if "| poller |" not in line and "| jsonrpc |" not in line and "| reconnect |" not in line
    ]
    return "\n".join(keep[-lines:])


def diag(host: Host) -> str:
    """What to look at when a probe did not get the expected outcome."""
    return (
        f"--- {host.name}: ip xfrm policy ---\n{host.xfrm_policies()}"
        f"--- {host.name}: xfrm_stat ---\n{host.xfrm_stat()}\n"
        f"--- {host.name}: daemon log ---\n{log_tail(host)}"
    )


def ip_xfrm(host: Host, spec: str) -> None:
    host.run(["ip", "xfrm", "policy", *spec.split()])


# --- OVSDB and charon ---------------------------------------------------------------------------


def add_tunnel(host: Host, name: str, kind: str, remote: str, **options: str) -> None:
    opts = [f"options:{k}={v}" for k, v in {"remote_ip": remote, **options}.items()]
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, f"type={kind}", *opts)


def set_global(host: Host, key: str, value: str | None) -> None:
    if value is None:
        host.vsctl("remove", "Open_vSwitch", ".", "other_config", key)
    else:
        host.vsctl("set", "Open_vSwitch", ".", f"other_config:{key}={value}")


def conns(host: Host) -> dict[str, Any]:
    with host.vici() as v:
        found: dict[str, Any] = {}
        for entry in v.list_conns():
            found.update(entry)
        return found


def wait_conns(host: Host, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
    def ok() -> bool:
        try:
            return predicate(conns(host))
        except OSError:
            return False  # charon (re)starting

    wait_for(ok, WAIT, what=f"{host.name}: {what}")


def established(host: Host, conn: str) -> bool:
    with host.vici() as v:
        return any(
            sa[conn]["state"] == b"ESTABLISHED" for sa in v.list_sas({"ike": conn}) if conn in sa
        )


def exit_daemon_with(host: Host, action: Callable[[], object]) -> None:
    """Run `action` (which makes the daemon exit) and wait until the process is gone."""
    action()
    wait_for(lambda: host.daemon_pid is None, WAIT, what=f"{host.name}: daemon exit")


# --- sockets inside a host --------------------------------------------------------------------


def inside(host: Host) -> contextlib.AbstractContextManager[None]:
    """New sockets made in this block belong to `host`'s network namespace."""
    return in_netns(host.ns)


class Net:
    """Sockets in lab hosts, cached and closed at teardown; probes and counters."""

    def __init__(self) -> None:
        self._socks: dict[tuple[Any, ...], socket.socket] = {}
        self._tokens = 0

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    def sock(self, host: Host, family: int, kind: str | int) -> socket.socket:
        """kind "gre": raw IP protocol 47 (sends, and receives every GRE packet); "udp": an
        unbound UDP sender; a port number: a UDP socket bound to that port (a receiver)."""
        key = (host.ns, family, kind)
        if key not in self._socks:
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            with inside(host):
                if kind == "gre":
                    s = socket.socket(af, socket.SOCK_RAW, 47)
                else:
                    s = socket.socket(af, socket.SOCK_DGRAM)
                    if family == 6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if isinstance(kind, int):
                        s.bind(("0.0.0.0" if family == 4 else "::", kind))
            s.setblocking(False)
            self._socks[key] = s
        return self._socks[key]

    def token(self) -> bytes:
        self._tokens += 1
        return f"oipd-{os.getpid()}-{self._tokens}".encode()

    def send(self, host: Host, dst: str, target: str | int, mark: int = 0) -> tuple[str, bytes]:
        """("sent" | "EPERM", token): one plaintext tunnel packet from `host`."""
        family = 6 if ":" in dst else 4
        s = self.sock(host, family, "gre" if target == "gre" else "udp")
        token = self.token()
        payload = GRE_HEADER + token if target == "gre" else token
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        try:
            s.sendto(payload, (dst, 0 if target == "gre" else int(target)))
        except PermissionError as exc:
            assert exc.errno == errno.EPERM
            return "EPERM", token
        return "sent", token


def stat(host: Host, name: str) -> int:
    return host.xfrm_stat()[name]


def arrived(sock: socket.socket, token: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(BlockingIOError):
            while True:
                if token in sock.recv(65535):
                    return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([sock], [], [], left)


def probe_out(net: Net, a: Host, b: Host, dst: str, target: str | int, mark: int = 0) -> str:
    """A sends to B: "blocked" (EPERM and XfrmOutPolBlock +1), "received" by B's socket,
    "trapped" (sent, XfrmOutNoStates rose, B got nothing) or "lost"."""
    family = 6 if ":" in dst else 4
    receiver = net.sock(b, family, "gre" if target == "gre" else int(target))
    blocks, no_states = stat(a, "XfrmOutPolBlock"), stat(a, "XfrmOutNoStates")
    outcome, token = net.send(a, dst, target, mark)
    if outcome == "EPERM":
        assert stat(a, "XfrmOutPolBlock") == blocks + 1
        return "blocked"
    if stat(a, "XfrmOutNoStates") > no_states:
        return "lost" if arrived(receiver, token, 0.1) else "trapped"
    return "received" if arrived(receiver, token, 2.0) else "lost"


def probe_in(net: Net, a: Host, src_host: Host, family: int, target: str | int) -> str:
    """`src_host` (no policies of its own) sends plaintext to A: "received" by A's socket, or
    "dropped" (A's XfrmInPolBlock rose and the socket got nothing)."""
    dst = a.ipv4 if family == 4 else a.ipv6
    receiver = net.sock(a, family, "gre" if target == "gre" else int(target))
    before = stat(a, "XfrmInPolBlock")
    outcome, token = net.send(src_host, dst, target)
    assert outcome == "sent"
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if arrived(receiver, token, 0.01):
            return "received"
        if stat(a, "XfrmInPolBlock") > before:
            return "lost" if arrived(receiver, token, 0.1) else "dropped"
    return "lost"


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    yield n
    n.close()


# --- capture on the wire ------------------------------------------------------------------------


class Capture:
    """tcpdump on `host`'s eth0 into a file; started and ready when constructed."""

    def __init__(self, host: Host, bpf: str, name: str = "capture") -> None:
        self.path = os.path.join(host.dir, f"{name}.pcap")
        self._err = self.path + ".stderr"
        with open(self._err, "wb") as err:
            # -Z root: write the file where the lab lives; --immediate-mode -U: every packet is
            # in the file as soon as it is seen, so SIGINT loses nothing.
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, "tcpdump", "-Z", "root", "-i", "eth0", "-n",
                 "-U", "--immediate-mode", "-w", self.path, bpf],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,
            )  # fmt: skip

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {self._stderr()}")
            return "listening on" in self._stderr()

        wait_for(ready, 10, what="tcpdump listening")

    def _stderr(self) -> str:
        with open(self._err, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def packets(self, bpf: str = "") -> list[str]:
        argv = ["tcpdump", "-r", self.path, "-n", *([bpf] if bpf else [])]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()


@pytest.fixture
def capture() -> Iterator[Callable[..., Capture]]:
    started: list[Capture] = []

    def start(host: Host, bpf: str, name: str = "capture") -> Capture:
        cap = Capture(host, bpf, name)
        started.append(cap)
        return cap

    yield start
    for cap in started:
        cap.stop()


def from_host(a: Host) -> str:
    """BPF: plaintext tunnel traffic (GRE, UDP except IKE) sent by `a`."""
    return (
        f"(src host {a.ipv4} or src host {a.ipv6}) and "
        "(ip proto 47 or ip6 proto 47 or (udp and not port 500 and not port 4500))"
    )


# --- a continuous sender ------------------------------------------------------------------------


class Sender(threading.Thread):
    """Sends plaintext tunnel packets from one host to its current targets, round robin, at
    most `rate` packets per second in total, for at most `limit` seconds (then stops by itself).

    Targets are added only once the tunnel is protected and removed *before* the tunnel leaves
    OVSDB: `remove()` returns only when no send to that target is in flight any more.
    """

    def __init__(self, host: Host, rate: float = 200, limit: float = 60) -> None:
        super().__init__(daemon=True)
        # Its own sockets: a probe setting SO_MARK on a shared socket would mark our packets.
        self.net, self.host = Net(), host
        self.interval, self.limit = 1.0 / rate, limit
        self.lock = threading.Lock()
        self.targets: dict[str, tuple[str, str | int]] = {}
        self.stats: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: list[str] = []
        self.halt = threading.Event()
        # Sockets are made here, in the test's thread (setns is per thread).
        for family in (4, 6):
            for kind in ("gre", "udp"):
                self.net.sock(host, family, kind)

    def add(self, name: str, dst: str, target: str | int) -> None:
        with self.lock:
            self.targets[name] = (dst, target)

    def remove(self, name: str) -> None:
        with self.lock:
            del self.targets[name]

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.halt.is_set() and time.monotonic() < deadline:
            with self.lock:
                names = list(self.targets)
            for name in names or [None]:
                if name is not None:
                    with self.lock:
                        if name in self.targets:
                            dst, target = self.targets[name]
                            try:
                                outcome, _ = self.net.send(self.host, dst, target)
                            except OSError as exc:
                                outcome = errno.errorcode.get(exc.errno or 0, str(exc))
                                self.errors.append(f"{name}: {exc}")
                            self.stats[name, outcome] += 1
                self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(5)
        self.net.close()


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    started: list[Sender] = []
    yield started
    for s in started:
        s.stop()


# --- ipsec_skb_mark ---------------------------------------------------------------------------

TARGETS: list[str | int] = ["gre", 4789, 6081, CUSTOM_PORT]
MARKS = (0, 1, 2, 3)


def test_skb_mark_blocks_matching_marks_outbound_and_goes_with_its_key(
    make_lab: Callable[..., Lab], net: Net
) -> None:
    """ipsec_skb_mark=0/1, then 1/1, set with ovs-vsctl: for GRE, VXLAN (4789), Geneve (6081)
    and a dst_port that only a plain tunnel in OVSDB uses (5555), over IPv4 and IPv6, an outbound
    send whose SO_MARK matches VALUE/MASK is refused (EPERM, XfrmOutPolBlock rises by exactly the
    number refused) and every other mark reaches the peer. Inbound, plaintext from this plain
    (non-IPsec) peer is accepted under both values, XfrmInPolBlock unmoved: a received packet
    meets the policy check with skb mark 0, so an inbound rule would cut every plain tunnel off
    under 0/1 (an IPsec peer's plaintext is dropped by its tunnel's fail-closed blocks instead).
    Other ports are never touched. Removing the key removes exactly the ipsec_skb_mark policies;
    the fail-closed ones of an unrelated IPsec tunnel stay."""
    lab = make_lab(2)
    a, b = lab.hosts
    # An IPsec tunnel to an address nobody probes, and the plain tunnel with the custom port.
    add_tunnel(a, "sec0", "gre", "10.77.0.50", psk="swordfish")
    add_tunnel(a, "plain0", "vxlan", b.ipv4, dst_port=str(CUSTOM_PORT))
    tunnel_policies = fail_closed("10.77.0.50", "gre")
    wait_own(a, tunnel_policies)
    ports = (4789, 6081, CUSTOM_PORT)

    for value, mask, text in ((0, 1, "0/0x1"), (1, 1, "0x1/0x1")):
        set_global(a, "ipsec_skb_mark", f"{value}/{mask}")
        wait_own(a, tunnel_policies | skb_mark(text, ports))
        blocks = stat(a, "XfrmOutPolBlock")
        outcomes, expected = {}, {}
        for family, dst in ((4, b.ipv4), (6, b.ipv6)):
            for target in [*TARGETS, CONTROL_PORT]:
                for mark in MARKS:
                    outcomes[family, target, mark] = probe_out(net, a, b, dst, target, mark)
                    hit = target != CONTROL_PORT and mark & mask == value
                    expected[family, target, mark] = "blocked" if hit else "received"
        assert outcomes == expected, f"ipsec_skb_mark={value}/{mask}"
        refused = sum(o == "blocked" for o in outcomes.values())
        assert refused == 2 * len(TARGETS) * 2  # two of the four marks match
        assert stat(a, "XfrmOutPolBlock") - blocks == refused

        in_blocks = stat(a, "XfrmInPolBlock")
        inbound = {
            (family, target): probe_in(net, a, b, family, target)
            for family in (4, 6)
            for target in [*TARGETS, CONTROL_PORT]
        }
        assert inbound == {
            (family, target): "received" for family in (4, 6) for target in [*TARGETS, CONTROL_PORT]
        }, f"ipsec_skb_mark={value}/{mask}"
        assert stat(a, "XfrmInPolBlock") == in_blocks

    set_global(a, "ipsec_skb_mark", None)
    wait_own(a, tunnel_policies)
    for family, dst in ((4, b.ipv4), (6, b.ipv6)):
        for target in TARGETS:
            assert probe_out(net, a, b, dst, target, 1) == "received"
            assert probe_in(net, a, b, family, target) == "received"


def test_malformed_skb_mark_is_reported_and_keeps_the_protection_in_place(
    make_lab: Callable[..., Lab], net: Net
) -> None:
    """A malformed ipsec_skb_mark (`0x1/zz`) is reported in the daemon log naming the key and
    the value, and the protection in place stays exactly as it was -- also after periodic checks
    (the daemon runs with --reconcile-interval=1 and the bad value is set only after a few checks
    have passed, and kept through a few more). A valid value afterwards takes effect as usual."""
    lab = make_lab(2, daemon_args=FAST)
    a, b = lab.hosts
    set_global(a, "ipsec_skb_mark", "0/1")
    before = wait_own(a, skb_mark("0/0x1"))
    time.sleep(2.5)  # periodic checks with the good value
    assert own(a) == before

    start = len(a.daemon_log())
    set_global(a, "ipsec_skb_mark", "0x1/zz")
    wait_for(
        lambda: re.search(r"ipsec_skb_mark.*0x1/zz", a.daemon_log()[start:]),
        WAIT,
        what="the malformed ipsec_skb_mark reported",
    )
    time.sleep(2.5)  # the change pass and periodic checks with the bad value
    assert own(a) == before, (
        f"protection changed after a malformed ipsec_skb_mark\n--- log ---\n{log_tail(a)}"
    )
    assert probe_out(net, a, b, b.ipv4, "gre", 0) == "blocked"
    assert probe_out(net, a, b, b.ipv6, 4789, 2) == "blocked"

    set_global(a, "ipsec_skb_mark", "1/1")
    wait_own(a, skb_mark("0x1/0x1"))


# --- fail-closed --------------------------------------------------------------------------------


@pytest.mark.keeps_ike_sa
def test_ipsec_tunnels_fail_closed_until_charon_traps_them(
    make_lab: Callable[..., Lab], net: Net, capture: Callable[..., Capture],
    senders: list[Sender],
) -> None:  # fmt: skip
    """With IPsec tunnels configured (A->B GRE over IPv4 and Geneve over IPv6, both sides
    configured; A->C GRE, C unconfigured), plaintext of those tunnels is never on B's wire while
    (b) a tunnel's config is invalid (psk plus remote_name), (a) charon is stopped, (c) the daemon
    was killed with -9 (and then charon stopped too: nothing but our policies is left), and
    (d) the connections are being changed (PSK change, Geneve dst_port change) under a continuous
    sender. Sends are refused (EPERM, XfrmOutPolBlock) and inbound plaintext from C is dropped
    (XfrmInPolBlock). Whenever the config is valid and charon is up, the trap takes over: the send
    succeeds, XfrmOutNoStates rises, and the first acquire brings an IKE_SA up with B. A plain
    (non-IPsec) tunnel to B gets no policy and its packets do reach the wire.

    ipsec_fail_open=true removes the per-tunnel blocks -- the trade-off it buys is that a tunnel
    keeps forwarding (in clear) whenever charon has no policy for it (invalid config, charon
    down, before the first load), instead of losing connectivity; the test shows exactly that
    leak.
    """
    lab = make_lab(3, daemon_args=FAST + NO_LINGER)
    a, b, c = lab.hosts
    add_tunnel(a, "t4", "gre", b.ipv4, psk="swordfish")
    add_tunnel(a, "t6", "geneve", b.ipv6, psk="swordfish")
    add_tunnel(a, "tc", "gre", c.ipv4, psk="swordfish")
    add_tunnel(a, "p0", "vxlan", b.ipv4)  # plain
    add_tunnel(b, "t4", "gre", a.ipv4, psk="swordfish")
    add_tunnel(b, "t6", "geneve", a.ipv6, psk="swordfish")
    conn4, conn6, connc = f"ovs-{b.ipv4}", f"ovs-{b.ipv6}", f"ovs-{c.ipv4}"
    expected = fail_closed(b.ipv4, "gre") | fail_closed(b.ipv6, 6081) | fail_closed(c.ipv4, "gre")
    wait_own(a, expected)  # and nothing for the plain tunnel p0
    wait_conns(a, lambda cs: {conn4, conn6, connc} <= set(cs), "connections loaded")
    wait_conns(b, lambda cs: {f"ovs-{a.ipv4}", f"ovs-{a.ipv6}"} <= set(cs), "B's connections")

    cap = capture(b, from_host(a))
    protected = (
        f"(ip proto 47 and dst host {b.ipv4}) or "
        f"(ip6 and udp and (dst port 6081 or dst port 6090) and dst host {b.ipv6})"
    )

    def out4() -> str:
        return probe_out(net, a, b, b.ipv4, "gre")

    def out6(port: int = 6081) -> str:
        return probe_out(net, a, b, b.ipv6, port)

    def wait_trapped(what: str, port6: int = 6081) -> None:
        try:
            wait_for(lambda: out4() == "trapped", WAIT, interval=0.2, what=f"GRE trapped {what}")
            wait_for(lambda: out6(port6) == "trapped", WAIT, interval=0.2, what=f"Geneve {what}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{diag(a)}") from None

    # Valid and loaded: the trap wins over our block; the acquire brings the IKE_SA up.
    no_states = stat(a, "XfrmOutNoStates")
    assert out4() == "trapped" and out6() == "trapped", diag(a)
    assert stat(a, "XfrmOutNoStates") >= no_states + 2
    wait_for(lambda: established(a, conn4), WAIT, what="IKE_SA from the acquire")
    assert own(a) == sorted(expected)

    # (b) Invalid config: the connection goes, our block stays and refuses the traffic.
    start = len(a.daemon_log())
    a.vsctl("set", "interface", "t4", "options:remote_name=peer")
    wait_conns(a, lambda cs: conn4 not in cs, "t4's connection unloaded")
    wait_for(
        lambda: "t4: invalid IPsec configuration" in a.daemon_log()[start:],
        WAIT,
        what="t4 reported invalid",
    )
    assert out4() == "blocked", diag(a)
    assert own(a) == sorted(expected)
    a.vsctl("remove", "interface", "t4", "options", "remote_name")
    wait_trapped("after t4 became valid again")

    # (a) charon stopped under a running daemon: nothing but our blocks; back when it returns.
    a.stop_charon()
    assert out4() == "blocked" and out6() == "blocked", diag(a)
    a.start_charon()
    wait_trapped("after charon came back")

    # (c) daemon killed with -9; then charon stopped as well.
    a.kill_daemon()
    assert out4() == "trapped", diag(a)  # charon still has its traps
    a.stop_charon()
    assert own(a) == sorted(expected)
    for dst, target in ((b.ipv4, "gre"), (b.ipv6, 6081), (c.ipv4, "gre")):
        assert probe_out(net, a, b if dst != c.ipv4 else c, dst, target) == "blocked", diag(a)
    assert probe_in(net, a, c, 4, "gre") == "dropped", diag(a)
    a.start_charon()
    assert out4() == "blocked", diag(a)  # nobody has loaded anything into the new charon yet
    a.start_daemon()
    wait_trapped("after charon and the daemon came back")

    # (d) Connections being changed while a sender keeps hitting both tunnels.
    sender = Sender(a, rate=200, limit=30)
    senders.append(sender)
    sender.add("t4", b.ipv4, "gre")
    sender.add("t6", b.ipv6, 6081)
    sender.start()
    a.vsctl("set", "interface", "t4", "options:psk=changed")
    a.vsctl("set", "interface", "t6", "options:psk=changed")
    time.sleep(0.5)
    sender.remove("t6")  # the old port stops being a tunnel port with the change below
    a.vsctl("set", "interface", "t6", "options:dst_port=6090")
    expected = (expected - fail_closed(b.ipv6, 6081)) | fail_closed(b.ipv6, 6090)
    wait_for(lambda: fail_closed(b.ipv6, 6090) <= set(own(a)), WAIT, what="block for 6090")
    sender.add("t6", b.ipv6, 6090)
    wait_own(a, expected)
    time.sleep(0.5)
    sender.stop()
    assert not sender.errors
    # Both tunnels were hit all along, mostly through charon's traps (sent, nothing on the wire).
    assert sender.stats["t4", "sent"] > 20 and sender.stats["t6", "sent"] > 10, sender.stats
    wait_trapped("after the changes", port6=6090)

    # A plain tunnel's packet is on the wire: the capture works, and was complete until now.
    assert probe_out(net, a, b, b.ipv4, 4789) == "received"
    time.sleep(0.2)
    cap.stop()
    assert cap.packets(f"udp dst port 4789 and dst host {b.ipv4}"), "control packet not captured"
    leaked = cap.packets(protected)
    assert not leaked, "plaintext of protected tunnels on the wire:\n" + "\n".join(leaked[:20])

    # ipsec_fail_open=true: no per-tunnel blocks; plaintext leaves while charon has no policy.
    set_global(a, "ipsec_fail_open", "true")
    wait_own(a, set())
    a.vsctl("set", "interface", "tc", "options:remote_name=peer")
    wait_conns(a, lambda cs: connc not in cs, "tc's connection unloaded")
    blocks, no_states = stat(a, "XfrmOutPolBlock"), stat(a, "XfrmOutNoStates")
    assert probe_out(net, a, c, c.ipv4, "gre") == "received"  # C has no policies of its own
    assert (stat(a, "XfrmOutPolBlock"), stat(a, "XfrmOutNoStates")) == (blocks, no_states)


def test_no_plaintext_leaks_while_tunnels_daemon_and_charon_churn(
    make_lab: Callable[..., Lab], net: Net, capture: Callable[..., Capture],
    senders: list[Sender],
) -> None:  # fmt: skip
    """A sender in A emits plaintext tunnel packets (about 200 per second in total, at most 60 s,
    only to B's lab addresses) to every IPsec tunnel that is protected at that moment, while
    tunnels are added, changed (PSK, dst_port) and removed, the daemon is killed with -9 (and
    OVSDB changed while it is dead) and restarted, and charon is restarted. tcpdump on B's eth0
    shows zero plaintext GRE/UDP (non-IKE) packets from A.

    The sender targets a tunnel only once its fail-closed block is in A's kernel, and stops
    targeting it *before* it is removed from OVSDB (or its dst_port changed away): after that the
    old traffic is legitimately unprotected, and OVS itself would no longer send it. So any
    captured packet at all is a leak. B is not configured: acquires fail at IKE, so every
    packet that passes a trap is dropped as a larval-state miss, never sent in clear.
    """
    lab = make_lab(2, daemon_args=FAST + NO_LINGER)
    a, b = lab.hosts
    protected: set[str] = set()

    def add(name: str, kind: str, dst: str, port: int | str, **options: str) -> None:
        add_tunnel(a, name, kind, dst, psk="swordfish", **options)
        protected.update(fail_closed(dst, port))
        wait_for(lambda: protected <= set(own(a)), WAIT, what=f"{name} protected")
        sender.add(name, dst, port)

    sender = Sender(a, rate=200, limit=60)
    senders.append(sender)
    cap = capture(b, from_host(a))
    sender.start()
    add("g4", "gre", b.ipv4, "gre")
    add("n6", "geneve", b.ipv6, 6081)
    add("x4", "vxlan", b.ipv4, 4790, dst_port="4790")
    time.sleep(0.3)

    add("x6", "vxlan", b.ipv6, 4791, dst_port="4791")
    sender.remove("n6")
    a.vsctl("set", "interface", "n6", "options:dst_port=6082")
    protected -= fail_closed(b.ipv6, 6081)
    protected |= fail_closed(b.ipv6, 6082)
    wait_for(lambda: protected <= set(own(a)), WAIT, what="n6 protected on 6082")
    sender.add("n6", b.ipv6, 6082)
    a.vsctl("set", "interface", "g4", "options:psk=second")
    time.sleep(0.3)
    sender.remove("x4")
    a.vsctl("del-port", "x4")
    protected -= fail_closed(b.ipv4, 4790)
    wait_own(a, protected)

    a.kill_daemon()
    a.vsctl("set", "interface", "x6", "options:psk=third")
    add_tunnel(a, "g6", "gre", b.ipv6, psk="swordfish")  # not protected (nor targeted) yet
    time.sleep(0.3)
    a.start_daemon()
    protected |= fail_closed(b.ipv6, "gre")
    wait_own(a, protected)
    sender.add("g6", b.ipv6, "gre")
    time.sleep(0.3)

    a.stop_charon()
    time.sleep(0.5)
    a.start_charon()
    wait_conns(a, lambda cs: {f"ovs-{b.ipv4}", f"ovs-{b.ipv6}"} <= set(cs), "conns reloaded")
    time.sleep(0.5)
    sender.remove("n6")
    a.vsctl("del-port", "n6")
    protected -= fail_closed(b.ipv6, 6082)
    wait_own(a, protected)
    time.sleep(0.3)
    sender.stop()

    assert net.send(a, b.ipv4, CONTROL_PORT)[0] == "sent"
    time.sleep(0.2)
    cap.stop()
    assert cap.packets(f"udp dst port {CONTROL_PORT}"), "control packet not captured"
    leaked = cap.packets(f"not (udp dst port {CONTROL_PORT})")
    assert not leaked, "plaintext tunnel packets on the wire:\n" + "\n".join(leaked[:20])
    assert not sender.errors
    for name in ("g4", "n6", "x4", "x6", "g6"):
        assert sender.stats[name, "sent"] + sender.stats[name, "EPERM"] > 10, sender.stats
    # While charon was down only our blocks were there: sends were refused.
    assert sum(n for (_, outcome), n in sender.stats.items() if outcome == "EPERM") > 10


# --- lifetime and ownership ---------------------------------------------------------------------


def adoption_config(a: Host, b: Host) -> set[str]:
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    add_tunnel(a, "n6", "geneve", b.ipv6, psk="swordfish")
    add_tunnel(a, "x4", "vxlan", b.ipv4, psk="swordfish", dst_port="4790")
    add_tunnel(a, "bad", "gre", "10.77.0.60", psk="swordfish", remote_name="peer")
    add_tunnel(a, "plain", "vxlan", "10.77.0.61", dst_port=str(CUSTOM_PORT))
    set_global(a, "ipsec_skb_mark", "0/1")
    return (
        fail_closed(b.ipv4, "gre")
        | fail_closed(b.ipv6, 6081)
        | fail_closed(b.ipv4, 4790)
        | fail_closed("10.77.0.60", "gre")
        | skb_mark("0/0x1", (4789, 4790, 6081, CUSTOM_PORT))
    )


# Hand-added policies: each shares a selector with one of ours (so a different mark -- the kernel
# keys policies by selector, direction and mark), at a priority that is not ours.
FOREIGN = [
    # unmarked, our ipsec_skb_mark 0/1 selector: what `ip xfrm policy delete ... mark 0 mask 1`
    # would wrongly delete
    "src 0.0.0.0/0 dst 0.0.0.0/0 proto gre dir out action block priority 600001",
    "src ::/0 dst ::/0 proto udp dport 6081 dir out action block priority 600001",
    # our ipsec_skb_mark selector, another mark, a neighbouring priority
    "src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport 4789 dir out mark 0x2 mask 0x2 action block "
    "priority 430002",
    # our fail-closed selectors for g4 (one of each half), marked
    "src 0.0.0.0/1 dst 10.77.0.2/32 proto gre dir out mark 0x20 mask 0xf0 action block "
    "priority 1000",
    "src 10.77.0.2/32 dst 128.0.0.0/1 proto gre dir in mark 0x1 mask 0x1 action block "
    "priority 430005",
]
FOREIGN_PRIORITIES = re.compile(r"\bpriority (600001|430002|1000|430005)\b")


def hand_added(host: Host) -> list[str]:
    return sorted(b for b in policy_blocks(host) if FOREIGN_PRIORITIES.search(b))


def test_restart_adopts_own_policies_without_gap_and_removes_only_stale_ones(
    make_lab: Callable[..., Lab],
) -> None:
    """After kill -9 and a new start the daemon's policy set is identical (same listing, no
    duplicates, none missing at any point: nothing is listed as installed or removed in the new
    daemon's log), and foreign policies -- hand-added ones sharing our selectors, and charon's
    traps and socket policies -- are untouched. A tunnel removed from OVSDB while the daemon was
    dead loses exactly its own policies at start (stale ones of our own), and the adopted set is
    then maintained as usual: removing another tunnel removes its policies at once, not only at
    the next periodic check (the default 15 s interval, on purpose)."""
    lab = make_lab(2, daemon_args=NO_LINGER)
    a, b = lab.hosts
    expected = adoption_config(a, b)
    for spec in FOREIGN:
        ip_xfrm(a, f"add {spec}")
    before = wait_own(a, expected)
    wait_conns(a, lambda cs: {f"ovs-{b.ipv4}", f"ovs-{b.ipv6}"} <= set(cs), "conns loaded")
    foreign_before = others(a)
    hand_before = hand_added(a)
    assert len(hand_before) == len(FOREIGN)

    a.kill_daemon()
    assert own(a) == before  # a crash leaves them
    start = len(a.daemon_log())
    a.start_daemon()  # returns after the first full pass
    time.sleep(1.0)
    assert own(a) == before
    assert others(a) == foreign_before
    new_log = a.daemon_log()[start:]
    assert not re.search(r"(installed|removed) \d+ protection polic", new_log), new_log
    assert "behind our back" not in new_log

    # Stale ones of our own: x4 removed while the daemon is dead.
    a.kill_daemon()
    a.vsctl("del-port", "x4")
    start = len(a.daemon_log())
    a.start_daemon()
    stale = fail_closed(b.ipv4, 4790) | {p for p in skb_mark("0/0x1", (4790,)) if "dport 4790" in p}
    assert len(stale) == 6  # 4 fail-closed, 2 ipsec_skb_mark (outbound, IPv4 and IPv6)
    expected -= stale
    wait_own(a, expected, timeout=3)
    assert hand_added(a) == hand_before
    wait_for(
        lambda: "removed 6 protection policies" in a.daemon_log()[start:],
        WAIT,
        what="the stale policies reported removed",
    )
    new_log = a.daemon_log()[start:]
    assert not re.search(r"installed \d+ protection polic", new_log), new_log

    # The adopted set is maintained: a later removal takes effect at once.
    a.vsctl("del-port", "n6")
    wait_own(a, expected - fail_closed(b.ipv6, 6081), timeout=5)
    assert hand_added(a) == hand_before


def test_removed_ports_blocks_linger_then_go(make_lab: Callable[..., Lab], net: Net) -> None:
    """--protection-linger=L: an IPsec port deleted from OVSDB keeps its fail-closed blocks for L
    seconds (OVS re-creates a re-added port, or every port when it restarts, from the same
    transaction that tells the daemon, and sends at once): once its connection has left charon
    its plaintext is refused. A port re-added within L keeps its blocks, past L. A port deleted
    for good loses its four blocks, and nothing else, L to L + LINGER_GRAIN seconds later
    (deadlines are rounded up to LINGER_GRAIN steps so that a burst of removals expires in one
    pass) -- with the periodic check at its default (15 s), so that it is not what removes them.
    ipsec_skb_mark policies never linger, nor do the blocks of a port made plain."""
    linger = 3.0
    lab = make_lab(2, daemon_args=[f"--protection-linger={linger:g}"])
    a, b = lab.hosts
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    add_tunnel(a, "n6", "geneve", b.ipv6, psk="swordfish")
    set_global(a, "ipsec_skb_mark", "1/1")
    g4, n6, marks = fail_closed(b.ipv4, "gre"), fail_closed(b.ipv6, 6081), skb_mark("0x1/0x1")
    everything = wait_own(a, g4 | n6 | marks)
    conn4, conn6 = f"ovs-{b.ipv4}", f"ovs-{b.ipv6}"
    wait_conns(a, lambda cs: {conn4, conn6} <= set(cs), "connections loaded")

    # Deleted, then re-added within the linger: the blocks never leave.
    a.vsctl("del-port", "g4")
    deleted = time.monotonic()
    wait_conns(a, lambda cs: conn4 not in cs, "g4's connection unloaded")
    assert probe_out(net, a, b, b.ipv4, "gre") == "blocked", diag(a)
    assert own(a) == everything
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    wait_conns(a, lambda cs: conn4 in cs, "g4's connection loaded again")
    while time.monotonic() < deleted + linger + LINGER_GRAIN + 1:  # past the first deadline
        assert own(a) == everything, f"g4 re-added, yet\n{diag(a)}"
        time.sleep(0.2)

    # Deleted for good: refused while the blocks linger, then they go, and only they.
    a.vsctl("del-port", "n6")
    deleted = time.monotonic()
    wait_conns(a, lambda cs: conn6 not in cs, "n6's connection unloaded")
    assert probe_out(net, a, b, b.ipv6, 6081) == "blocked", diag(a)
    wait_own(a, g4 | marks, timeout=linger + LINGER_GRAIN + 5)
    took = time.monotonic() - deleted
    assert took >= linger - 0.3, f"n6's blocks left {took:.1f} s after the port (linger {linger:g})"

    # ipsec_skb_mark removed: its policies go at once.
    set_global(a, "ipsec_skb_mark", None)
    wait_own(a, g4, timeout=linger - 1)

    # A port made plain (its psk removed) stays in OVSDB: the operator asked for plaintext, and
    # gets it at once, not after the linger.
    a.vsctl("remove", "interface", "g4", "options", "psk")
    wait_own(a, frozenset(), timeout=linger - 1)
    wait_conns(a, lambda cs: conn4 not in cs, "g4's connection unloaded")
    assert probe_out(net, a, b, b.ipv4, "gre") == "received", diag(a)


def test_refresh_never_changes_the_protection(make_lab: Callable[..., Lab], net: Net) -> None:
    """`ovs-appctl refresh` (re-list charon, converge now), asked any number of times, leaves the
    protection policies exactly as they are: nothing in OVSDB changed, so no reason went away.
    The periodic check is left at its default (15 s) so that it cannot mask a loss."""
    lab = make_lab(2)
    a, b = lab.hosts
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    set_global(a, "ipsec_skb_mark", "1/1")
    before = wait_own(a, fail_closed(b.ipv4, "gre") | skb_mark("0x1/0x1"))
    for i in range(3):
        a.appctl("refresh")
        time.sleep(0.5)
        assert own(a) == before, f"after refresh #{i + 1}\n--- log ---\n{log_tail(a)}"
    a.stop_charon()  # only our policies are left to protect the tunnel
    assert probe_out(net, a, b, b.ipv4, "gre") == "blocked"


def test_foreign_policies_survive_everything_and_exit_cleanup_takes_only_ours(
    make_lab: Callable[..., Lab],
) -> None:
    """Hand-added block policies that share a selector with ours (other mark, other priority --
    including unmarked ones next to our mark-value-0 policies) survive tunnel add/remove cycles,
    ipsec_skb_mark changes and removal, `exit --no-cleanup`, SIGTERM, daemon restarts and `exit`
    (cleanup). Our own policies are kept by `exit --no-cleanup` and SIGTERM (and adopted by the
    next start), and by `exit` as long as OVSDB asks for them; once it does not, `exit` removes
    them -- all of them, nothing else."""
    lab = make_lab(2, daemon_args=NO_LINGER)
    a, b = lab.hosts
    for spec in FOREIGN:
        ip_xfrm(a, f"add {spec}")
    foreign = hand_added(a)
    assert len(foreign) == len(FOREIGN)

    g4 = fail_closed(b.ipv4, "gre")
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    wait_own(a, g4)
    set_global(a, "ipsec_skb_mark", "0/1")
    wait_own(a, g4 | skb_mark("0/0x1"))
    a.vsctl("del-port", "g4")
    wait_own(a, skb_mark("0/0x1"))
    assert hand_added(a) == foreign
    set_global(a, "ipsec_skb_mark", "1/1")
    wait_own(a, skb_mark("0x1/0x1"))
    set_global(a, "ipsec_skb_mark", None)
    wait_own(a, set())
    assert hand_added(a) == foreign
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    set_global(a, "ipsec_skb_mark", "0/1")
    ours = wait_own(a, g4 | skb_mark("0/0x1"))
    assert hand_added(a) == foreign

    exit_daemon_with(a, lambda: a.appctl("exit", "--no-cleanup"))
    assert own(a) == ours and hand_added(a) == foreign
    a.start_daemon()
    assert own(a) == ours
    a.stop_daemon(signal.SIGTERM)
    assert own(a) == ours and hand_added(a) == foreign
    a.start_daemon()
    assert own(a) == ours

    # `exit` (ovs-ctl stop-ovs-ipsec) unloads our connections (charon's traps with them) but
    # keeps the blocks OVSDB still asks for: g4 carries IPsec options, ipsec_skb_mark is set.
    exit_daemon_with(a, lambda: a.appctl("exit"))
    assert own(a) == ours
    assert hand_added(a) == foreign
    assert not conns(a)
    # Switched off for real: the options removed, then `exit` takes all of ours.
    a.start_daemon()
    a.vsctl("del-port", "g4")
    set_global(a, "ipsec_skb_mark", None)
    wait_own(a, set())
    exit_daemon_with(a, lambda: a.appctl("exit"))
    assert own(a) == []
    assert hand_added(a) == foreign


def test_exit_keeps_tunnels_fail_closed_until_the_ipsec_options_go(
    make_lab: Callable[..., Lab], net: Net
) -> None:
    """Issue 15, item 12: after `exit` (what `ovs-ctl stop-ovs-ipsec` sends) a port that still
    carries IPsec options sends no plaintext (before: every block was removed)."""
    lab = make_lab(2, daemon_args=NO_LINGER)
    a, b = lab.hosts
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    wait_own(a, fail_closed(b.ipv4, "gre"))
    exit_daemon_with(a, lambda: a.appctl("exit"))
    assert not conns(a)
    assert probe_out(net, a, b, b.ipv4, "gre") == "blocked"
    assert probe_out(net, a, b, b.ipv4, CONTROL_PORT) == "received"


def test_what_ovs_sends_meets_a_block(make_lab: Callable[..., Lab], net: Net) -> None:
    """Issue 15, items 2 and 6, with real packets: the blocks cover what OVS sends, not what
    the daemon would have liked. An IPv4-mapped remote_ip is IPv4 on the wire (OVS unmaps it);
    a dst_port OVS reads with atoi (`4790x` -> 4790, `70000` -> 4464) is that port; a type
    IPsec lacks (lisp, gtpu) is its UDP port. charon is stopped: only the blocks decide."""
    lab = make_lab(2, daemon_args=NO_LINGER)
    a, b = lab.hosts
    a.stop_charon()
    add_tunnel(a, "m4", "gre", f"::ffff:{b.ipv4}", psk="swordfish")
    add_tunnel(a, "x1", "vxlan", b.ipv6, psk="swordfish", dst_port="4790x")
    add_tunnel(a, "x2", "vxlan", b.ipv6, psk="swordfish", dst_port="70000")
    add_tunnel(a, "l1", "lisp", b.ipv4, psk="swordfish")
    add_tunnel(a, "u1", "gtpu", b.ipv4, psk="swordfish")
    wait_own(
        a,
        fail_closed(b.ipv4, "gre")
        | fail_closed(b.ipv6, 4790)
        | fail_closed(b.ipv6, 4464)
        | fail_closed(b.ipv4, 4341)
        | fail_closed(b.ipv4, 2152),
    )
    assert probe_out(net, a, b, b.ipv4, "gre") == "blocked"
    for port in (4790, 4464):
        assert probe_out(net, a, b, b.ipv6, port) == "blocked"
    for port in (4341, 2152):
        assert probe_out(net, a, b, b.ipv4, port) == "blocked"
    assert probe_out(net, a, b, b.ipv4, CONTROL_PORT) == "received"
    assert probe_out(net, a, b, b.ipv6, 4789) == "received"  # not the default: what OVS uses


def test_a_foreign_policy_in_the_way_is_reported_and_kept_and_ours_follows_soon_after_it_goes(
    make_lab: Callable[..., Lab],
) -> None:
    """Issue 15, items 15 and 7, against the real kernel: a hand-added policy holding the key
    of one of our blocks (other priority, `allow`) is reported and left alone (before: replaced
    in place by XFRM_MSG_UPDPOLICY); the rest of the tunnel's blocks go in. Once it is deleted,
    the guard's own retry (1 s, backing off to 8 s; not the 15 s periodic check) puts ours in."""
    lab = make_lab(2, daemon_args=NO_LINGER)
    a, b = lab.hosts
    wanted = fail_closed(b.ipv4, "gre")
    taken = block("out", "0.0.0.0/1", f"{b.ipv4}/32", "gre", FAIL_CLOSED)
    selector = f"src 0.0.0.0/1 dst {b.ipv4}/32 proto gre dir out"
    ip_xfrm(a, f"add {selector} priority 100 action allow")
    start = len(a.daemon_log())
    add_tunnel(a, "g4", "gre", b.ipv4, psk="swordfish")
    wait_for(lambda: "not ours holds this key" in a.daemon_log()[start:], WAIT,
             what="the foreign policy in the way reported")  # fmt: skip
    wait_own(a, wanted - {taken})
    assert any(p.startswith(selector) and "priority 100 " in p for p in others(a)), others(a)

    ip_xfrm(a, f"delete {selector}")
    gone_at = time.monotonic()
    wait_own(a, wanted)
    assert time.monotonic() - gone_at < 9.0
