"""STT and ip6gre in the namespace tier (issue 16, section 3): OVSDB -> daemon -> real charon
and kernel XFRM, as far as this kernel allows.

No kernel here has an STT device (STT was only ever in OVS's out-of-tree module), so no STT
packet can be made the way OVS would; what can be shown is everything around it: the connection
charon holds for an STT port (TCP to its destination port, one child per direction of the flow),
charon's trap policies, the daemon's fail-closed and ipsec_skb_mark blocks for TCP to that port,
and real TCP sends meeting them. The sends are connect()s from TCP sockets, whose SYN is routed
with its ports (the XFRM lookup of a raw TCP socket carries no ports, so no port selector could
ever match it); SO_MARK stands in for OVS's skb mark. ESP over ip6gre is proven in the
full-kernel tier (e2e, scenario 1); here its connection, traps and blocks.

The daemon's own policies are recognised by their priorities (430001 fail-closed, 430003
ipsec_skb_mark) in plain `ip xfrm policy` output, independently of the product's parser.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterator

import pytest
from resilience_lab import add_tunnel, conns, others, own

from ovs_ipsec.tools.lab import Host, Lab, in_netns, wait_for

pytestmark = pytest.mark.lab

FAIL_CLOSED, SKB_MARK = 430001, 430003
STT_PORT = 7471  # OVS's default STT destination port
CUSTOM_PORT = 7500  # an STT tunnel's options:dst_port
CONTROL_PORT = 7777  # never a tunnel port
WAIT = 10.0
DAEMON_ARGS = ["--reconcile-interval=1", "--protection-linger=0"]


# --- policies as `ip xfrm policy` prints them -----------------------------------------------------


def _net(addr: str, bits: int | None = None) -> str:
    return f"{addr}/{bits if bits is not None else (128 if ':' in addr else 32)}"


def block(direction: str, src: str, dst: str, sel: str, prio: int, mark: str = "") -> str:
    text = f"src {src} dst {dst} {sel} dir {direction} action block priority {prio} ptype main"
    return text + (f" mark {mark}" if mark else "")


def fail_closed(remote: str, sel: str) -> set[str]:
    """The daemon's four fail-closed policies for a tunnel to `remote`: out and in, each for both
    halves of the address space."""
    halves = ("::/1", "8000::/1") if ":" in remote else ("0.0.0.0/1", "128.0.0.0/1")
    return {
        policy
        for half in halves
        for policy in (
            block("out", half, _net(remote), sel, FAIL_CLOSED),
            block("in", _net(remote), half, sel, FAIL_CLOSED),
        )
    }


def tcp(port: int) -> str:
    return f"proto tcp dport {port}"


def wait_own(host: Host, expected: set[str]) -> None:
    want = sorted(expected)
    try:
        wait_for(lambda: own(host) == want, WAIT, what="policies")
    except TimeoutError:
        got = set(own(host))
        raise AssertionError(
            f"{host.name}: own policies not as expected\nextra: {sorted(got - expected)}\n"
            f"missing: {sorted(expected - got)}\n--- daemon log ---\n{host.daemon_log()[-3000:]}"
        ) from None


def children(host: Host, conn: str) -> dict[str, tuple[list[str], list[str]]]:
    """{child: (local-ts, remote-ts)} of one connection as charon lists it."""
    listed = conns(host).get(conn, {}).get("children", {})
    return {
        name: (
            list(child["local-ts"]),
            list(child["remote-ts"]),
        )
        for name, child in listed.items()
    }


# --- TCP probes --------------------------------------------------------------------------------


def stat(host: Host, name: str) -> int:
    return host.xfrm_stat()[name]


@contextlib.contextmanager
def listening(host: Host, ports: tuple[int, ...]) -> Iterator[None]:
    """TCP listeners on `ports`, IPv4 and IPv6, in `host`: a SYN that arrives is answered."""
    socks = []
    try:
        with in_netns(host.ns):
            for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                for port in ports:
                    s = socket.socket(family, socket.SOCK_STREAM)
                    socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((any_addr, port))
                    s.listen(16)
        yield
    finally:
        for s in socks:
            s.close()


def connect(host: Host, dst: str, port: int, mark: int = 0, timeout: float = 1.5) -> str:
    """One TCP connect() from `host`: "EPERM" (an XFRM block refused the SYN), "answered"
    (connected or refused: the SYN reached the peer) or "no answer"."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with in_netns(host.ns):
        s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except PermissionError as exc:
            assert exc.errno == errno.EPERM
            return "EPERM"
        except ConnectionRefusedError:
            return "answered"
        except TimeoutError:
            return "no answer"
        return "answered"
    finally:
        s.close()


def probe_out(a: Host, dst: str, port: int, mark: int = 0) -> str:
    """A's TCP connect to `dst`:`port`: "blocked" (EPERM, XfrmOutPolBlock rose), "trapped" (a
    charon trap took it: XfrmOutNoStates rose, no answer), "answered" or "lost"."""
    blocks, no_states = stat(a, "XfrmOutPolBlock"), stat(a, "XfrmOutNoStates")
    outcome = connect(a, dst, port, mark, timeout=0.5 if port != CONTROL_PORT else 2.0)
    if outcome == "EPERM":
        assert stat(a, "XfrmOutPolBlock") > blocks
        return "blocked"
    if outcome == "no answer":
        return "trapped" if stat(a, "XfrmOutNoStates") > no_states else "lost"
    return outcome


def probe_in(a: Host, src_host: Host, dst: str, port: int) -> str:
    """`src_host` (no policies of its own) connects to A: "dropped" (A's XfrmInPolBlock rose,
    no answer) or "answered"."""
    before = stat(a, "XfrmInPolBlock")
    outcome = connect(src_host, dst, port, timeout=1.0)
    if outcome == "no answer" and stat(a, "XfrmInPolBlock") > before:
        return "dropped"
    return outcome


# --- STT ------------------------------------------------------------------------------------------


def test_stt_is_loaded_trapped_and_fails_closed_over_tcp(make_lab: Callable[..., Lab]) -> None:
    """STT tunnels with a psk (A to B over IPv4 on the default port, over IPv6 on dst_port 7500;
    A to C, which has no configuration): charon holds a connection per peer whose children
    select TCP to and from the tunnel's port, one per direction of the flow
    (`dynamic[tcp/7471]` <-> `dynamic[tcp]`), and installs TCP trap policies for them; the
    daemon owns fail-closed blocks for TCP to each port, and nothing for UDP or other ports.
    A TCP connect to the tunnel port is taken by charon's trap (no plaintext SYN leaves) while
    charon is up and refused by the block (EPERM) when it is not; a SYN from the peer to our
    port is dropped (XfrmInPolBlock). Other TCP ports and UDP to the STT port are untouched.
    ipsec_skb_mark blocks TCP to the STT ports (the default 7471 always, 7500 from OVSDB) for
    matching marks only."""
    lab = make_lab(3, daemon_args=DAEMON_ARGS)
    a, b, c = lab.hosts
    add_tunnel(a, "s4", "stt", b.ipv4, psk="swordfish")
    add_tunnel(a, "s6", "stt", b.ipv6, psk="swordfish", dst_port=str(CUSTOM_PORT))
    add_tunnel(a, "sc", "stt", c.ipv4, psk="swordfish")
    add_tunnel(b, "s4", "stt", a.ipv4, psk="swordfish")
    add_tunnel(b, "s6", "stt", a.ipv6, psk="swordfish", dst_port=str(CUSTOM_PORT))
    expected = (
        fail_closed(b.ipv4, tcp(STT_PORT))
        | fail_closed(b.ipv6, tcp(CUSTOM_PORT))
        | fail_closed(c.ipv4, tcp(STT_PORT))
    )
    wait_own(a, expected)
    conn4, conn6 = f"ovs-{b.ipv4}", f"ovs-{b.ipv6}"
    wait_for(lambda: {conn4, conn6, f"ovs-{c.ipv4}"} <= set(conns(a)), WAIT, what="A's conns")

    # The connections charon holds: TCP to and from the tunnel's port, one child per direction.
    assert children(a, conn4) == {
        "ovs-s4-in": ([f"dynamic[tcp/{STT_PORT}]"], ["dynamic[tcp]"]),
        "ovs-s4-out": (["dynamic[tcp]"], [f"dynamic[tcp/{STT_PORT}]"]),
    }
    assert children(a, conn6) == {
        "ovs-s6-in": ([f"dynamic[tcp/{CUSTOM_PORT}]"], ["dynamic[tcp]"]),
        "ovs-s6-out": (["dynamic[tcp]"], [f"dynamic[tcp/{CUSTOM_PORT}]"]),
    }
    # charon's trap policies, the tunnel's port on either side of the flow.
    traps = others(a)
    for local, remote, port in ((a.ipv4, b.ipv4, STT_PORT), (a.ipv6, b.ipv6, CUSTOM_PORT)):
        for ports in (f"dport {port}", f"sport {port}"):
            sel = f"src {_net(local)} dst {_net(remote)} proto tcp {ports} dir out"
            assert any(t.startswith(sel) for t in traps), f"no trap '{sel}' in:\n" + "\n".join(
                traps
            )

    with listening(b, (STT_PORT, CUSTOM_PORT, CONTROL_PORT)), listening(c, (STT_PORT, CUSTOM_PORT)):
        # charon's trap wins over our block: nothing in clear, an acquire instead.
        assert probe_out(a, b.ipv4, STT_PORT) == "trapped", a.xfrm_policies()
        assert probe_out(a, b.ipv6, CUSTOM_PORT) == "trapped", a.xfrm_policies()
        assert probe_out(a, b.ipv4, CONTROL_PORT) == "answered"
        assert a.send_probe(b.ipv4, "udp", STT_PORT) == "sent"  # STT is TCP, never UDP

        # Without charon, only our blocks: refused out, dropped in; other ports untouched.
        a.stop_charon()
        assert probe_out(a, b.ipv4, STT_PORT) == "blocked", a.xfrm_policies()
        assert probe_out(a, b.ipv6, CUSTOM_PORT) == "blocked", a.xfrm_policies()
        assert probe_out(a, c.ipv4, STT_PORT) == "blocked", a.xfrm_policies()
        assert probe_out(a, b.ipv6, STT_PORT) == "answered"  # not s6's port
        assert probe_out(a, b.ipv4, CONTROL_PORT) == "answered"
        with listening(a, (STT_PORT, CONTROL_PORT)):
            assert probe_in(a, c, a.ipv4, STT_PORT) == "dropped", a.xfrm_policies()
            assert probe_in(a, c, a.ipv4, CONTROL_PORT) == "answered"
        assert own(a) == sorted(expected)
        a.start_charon()
        wait_for(lambda: probe_out(a, b.ipv4, STT_PORT) == "trapped", WAIT, what="trap again")

        # ipsec_skb_mark: TCP to every STT port, outbound, for matching marks only (C's IPv6
        # address has no tunnel, so only the skb-mark blocks apply there).
        a.vsctl("set", "Open_vSwitch", ".", "other_config:ipsec_skb_mark=1/1")
        marks = {
            block("out", anynet, anynet, sel, SKB_MARK, "0x1/0x1")
            for anynet in ("0.0.0.0/0", "::/0")
            for sel in (
                "proto gre",
                "proto udp dport 4789",
                "proto udp dport 6081",
                tcp(STT_PORT),
                tcp(CUSTOM_PORT),
            )
        }
        wait_own(a, expected | marks)
        for port in (STT_PORT, CUSTOM_PORT):
            assert probe_out(a, c.ipv6, port, mark=1) == "blocked", a.xfrm_policies()
            assert probe_out(a, c.ipv6, port, mark=3) == "blocked"
            assert probe_out(a, c.ipv6, port, mark=0) == "answered"
            assert probe_out(a, c.ipv6, port, mark=2) == "answered"
        assert probe_out(a, c.ipv6, CONTROL_PORT, mark=1) != "blocked"


# --- ip6gre ---------------------------------------------------------------------------------------


def test_ip6gre_is_loaded_as_gre_over_ipv6_and_refused_to_ipv4(
    make_lab: Callable[..., Lab],
) -> None:
    """ip6gre with a psk: charon holds a GRE connection to the IPv6 peer (`dynamic[gre]` both
    ways) with its GRE traps, the daemon owns GRE fail-closed blocks for it and logs the caveat
    (Linux's ip6gre looks its policy up with source `::`: see parse.caveat); a raw GRE send with
    the source address is trapped while charon is up and refused (EPERM) when it is not.
    ip6gre to an IPv4 remote_ip is invalid with a reason naming type=gre, loads nothing, and
    keeps its fail-closed blocks."""
    lab = make_lab(2, daemon_args=DAEMON_ARGS)
    a, b = lab.hosts
    start = len(a.daemon_log())
    add_tunnel(a, "g6", "ip6gre", b.ipv6, psk="swordfish")
    add_tunnel(b, "g6", "ip6gre", a.ipv6, psk="swordfish")
    add_tunnel(a, "g4", "ip6gre", b.ipv4, psk="swordfish")
    gre = "proto gre"
    wait_own(a, fail_closed(b.ipv6, gre) | fail_closed(b.ipv4, gre))
    conn6 = f"ovs-{b.ipv6}"
    wait_for(lambda: conn6 in conns(a), WAIT, what="A's conn")
    assert set(conns(a)) == {conn6}
    assert children(a, conn6) == {"ovs-g6": (["dynamic[gre]"], ["dynamic[gre]"])}
    sel = f"src {_net(a.ipv6)} dst {_net(b.ipv6)} proto gre dir out"
    assert any(t.startswith(sel) for t in others(a)), a.xfrm_policies()
    for text in ("type=ip6gre needs an IPv6 address", "type=ip6gre carries no traffic"):
        wait_for(lambda t=text: t in a.daemon_log()[start:], WAIT, what=f"log: {text}")
    no_states = stat(a, "XfrmOutNoStates")
    assert a.send_probe(b.ipv6, "gre") == "sent"
    assert stat(a, "XfrmOutNoStates") > no_states  # trapped
    a.stop_charon()
    assert a.send_probe(b.ipv6, "gre") == "EPERM"
    assert a.send_probe(b.ipv4, "gre") == "EPERM"
