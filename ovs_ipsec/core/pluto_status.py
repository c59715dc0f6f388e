"""pluto's status output -> the typed SAs `core/sas.py` gives for charon. Pure.

`whack --showstates` lists one line per state (IKE SA or Child SA), a Child SA's line naming
its IKE SA and followed by a line with its ESP SPIs; `whack --trafficstatus` gives a Child SA's
byte counters. Both are read here only, for our conns (`libreswan_conf.split_name`): an IKE SA
is reported under its peer's ConnSpec name, its Child SAs under their child names, with the
states charon would give them (ESTABLISHED / CONNECTING, INSTALLED), so `core/status.py` folds
them unchanged. Libreswan 4 prefixes each line with a three-digit code, 5 does not; both read.

Failures: pluto has no event stream; its reply to a synchronous initiation (`whack --initiate`)
carries the notification a peer sent or the cause pluto found (`AUTHENTICATION_FAILED`,
`NO_PROPOSAL_CHOSEN`, ...); `outcome_of` turns the known ones into the Outcome charon's events
give.

May import: causes, libreswan_conf, naming, outcomes (its Outcome), sas, stdlib.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ovs_ipsec.core import naming
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.libreswan_conf import split_name
from ovs_ipsec.core.outcomes import Outcome
from ovs_ipsec.core.sas import ChildSa, IkeSa

# 4.10 names states STATE_V2_ESTABLISHED_IKE_SA, 5.x ESTABLISHED_IKE_SA (`_state` evens it).
_STATE = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[\d+\])*(?:\s+\S+)?(?::\d+)?'
    r"\s+(?P<state>[A-Z][A-Z0-9_]+)\s+\((?P<what>[^)]*)\)(?P<rest>.*)$"
)
_SPIS = re.compile(r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)".*?\besp\.(?P<out>[0-9a-f]+)@'
                   r"\S+\s+esp\.(?P<in>[0-9a-f]+)@")  # fmt: skip
_PARENT = re.compile(r"(?:IKE SA|parent|isakmp)\s*#(\d+)", re.IGNORECASE)
_TRAFFIC = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)".*?inBytes=(?P<in>\d+), outBytes=(?P<out>\d+)'
)

# Libreswan's established IKEv2 states (without the STATE_/V2_ prefixes 4.x and 3.x add).
_IKE_UP = frozenset({"ESTABLISHED_IKE_SA", "PARENT_I3", "PARENT_R2"})
_CHILD_UP = frozenset({"ESTABLISHED_CHILD_SA", "IPSEC_I", "IPSEC_R"})


def _state(name: str) -> str:
    return name.removeprefix("STATE_").removeprefix("V2_")


@dataclass
class _Ike:
    serial: int
    conn: str
    state: str
    initiator: bool
    children: list[ChildSa] = field(default_factory=list)


def parse_states(showstates: str, trafficstatus: str = "") -> dict[str, tuple[IkeSa, ...]]:
    """`whack --showstates` (and `--trafficstatus` for counters) -> our IKE SAs by ConnSpec
    name, oldest first, each with its installed Child SAs. Others' states are left out."""
    traffic: dict[int, tuple[int, int]] = {}
    for line in trafficstatus.splitlines():
        match = _TRAFFIC.match(line.strip())
        if match:
            traffic[int(match["serial"])] = (int(match["in"]), int(match["out"]))
    spis: dict[int, tuple[str, str]] = {}
    states: list[tuple[int, str, str, str]] = []
    for raw in showstates.splitlines():
        line = raw.strip()
        state = _STATE.match(line)
        if state is not None:
            states.append((int(state["serial"]), state["conn"], _state(state["state"]),
                           state["rest"]))  # fmt: skip
            continue
        spi = _SPIS.match(line)
        if spi is not None:
            spis[int(spi["serial"])] = (spi["in"], spi["out"])
    ikes: dict[int, _Ike] = {}
    children: list[tuple[int, str, int]] = []  # (parent serial, child name, serial)
    for serial, conn, state, rest in states:
        names = split_name(conn)
        if names is None:
            continue
        if state in _CHILD_UP:
            parent = _PARENT.search(rest)
            children.append((int(parent.group(1)) if parent else 0, names[1], serial))
        elif "CHILD" in state or "IPSEC" in state:
            continue  # a Child SA still negotiating: nothing installed
        else:
            ikes[serial] = _Ike(serial, names[0], state, initiator=re.search(r"_I\d*$", state)
                                is not None)  # fmt: skip
    for parent, child_name, serial in children:
        ike = ikes.get(parent)
        if ike is None:
            continue
        spi_in, spi_out = spis.get(serial, ("", ""))
        bytes_in, bytes_out = traffic.get(serial, (0, 0))
        ike.children.append(ChildSa(
            name=child_name, uniqueid=serial, state="INSTALLED", mode="TRANSPORT",
            protocol="ESP", spi_in=spi_in, spi_out=spi_out, bytes_in=bytes_in,
            bytes_out=bytes_out,
        ))  # fmt: skip
    found: dict[str, list[IkeSa]] = {}
    for ike in ikes.values():
        found.setdefault(ike.conn, []).append(IkeSa(
            name=ike.conn, uniqueid=ike.serial,
            state="ESTABLISHED" if ike.state in _IKE_UP else "CONNECTING",
            remote_host=naming.remote_of_conn(ike.conn), initiator=ike.initiator,
            children=tuple(sorted(ike.children, key=lambda c: (c.name, c.uniqueid))),
        ))  # fmt: skip
    return {
        conn: tuple(sorted(sas, key=lambda sa: sa.uniqueid)) for conn, sas in sorted(found.items())
    }


def addconn_failure(output: str, name: str) -> str | None:
    """Why addconn did not load conn `name` (it exits 0 all the same), from its output."""
    mentions = (f"'{name}'", f'"{name}"', f"conn {name} ")
    failures = ("did not load", "Invalid", "while loading")
    for line in output.splitlines():
        if any(m in line for m in mentions) and any(f in line for f in failures):
            return line.strip()
    return None


def serials_of(showstates: str, conn: str) -> tuple[int, ...]:
    """The serials of every state (IKE and Child SAs) of ConnSpec `conn`, children first (so
    deleting them in this order never leaves a child without its IKE SA for a moment)."""
    ike: list[int] = []
    child: list[int] = []
    for raw in showstates.splitlines():
        match = _STATE.match(raw.strip())
        names = split_name(match["conn"]) if match else None
        if match is None or names is None or names[0] != conn:
            continue
        is_child = "CHILD" in match["state"] or "IPSEC" in match["state"]
        (child if is_child else ike).append(int(match["serial"]))
    return (*sorted(set(child)), *sorted(set(ike)))


def loaded_conns(status: str) -> frozenset[str]:
    """The conn names `whack --status` (or `--listconns`...) lists: `"name": ...` lines."""
    names = set()
    for raw in status.splitlines():
        match = re.match(r'^(?:\d{3} )?"(?P<name>[^"]+)"(?:\[\d+\])*:', raw.strip())
        if match:
            names.add(match["name"])
    return frozenset(names)


def asked_up(status: str) -> frozenset[str]:
    """Conns that were initiated (by traffic on their trap or `whack --initiate`) and that pluto
    keeps trying to bring up: `UP` in a conn's `policy:` line of `whack --status`. A failing
    negotiation's states live for milliseconds between retries, so a listing rarely sees them;
    this flag stays."""
    names = set()
    for raw in status.splitlines():
        match = _POLICY.match(raw.strip())
        if match and "UP" in match["flags"].split("+"):
            names.add(match["name"])
    return frozenset(names)


_POLICY = re.compile(
    r'^(?:\d{3} )?"(?P<name>[^"]+)"(?:\[\d+\])*:\s+policy: (?P<flags>[A-Za-z0-9_+]+)'
)


def routed_conns(status: str) -> frozenset[str]:
    """Conns whose trap policy pluto has put in the kernel. 4.10 says so in a conn's first
    `--status` line (`...; prospective erouted; eroute owner: #0`, `...; unrouted; ...`); 5.x
    in a `routing: ...` line. Unrouted conns are left out."""
    names = set()
    for raw in status.splitlines():
        match = _ROUTING.match(raw.strip())
        if match and "unrouted" not in match["r"]:
            names.add(match["name"])
    return frozenset(names)


_ROUTING = re.compile(
    r'^(?:\d{3} )?"(?P<name>[^"]+)"(?:\[\d+\])*:.*?(?:; |routing: )'
    r"(?P<r>(?:prospective |)erouted|unrouted|routed[\w-]*|ondemand|[\w-]*routed[\w-]*)(?:;|$)"
)


# Texts in pluto's replies (and log) that tell why a negotiation failed.
_FAILURES: tuple[tuple[str, Cause, str], ...] = (
    ("AUTHENTICATION_FAILED", Cause.AUTHENTICATION,
     "authentication failed (the peer refused ours, or ours refused the peer's: check psk, "
     "certificates and remote_name)"),
    ("authentication failed", Cause.AUTHENTICATION, "authentication failed"),
    ("NO_PROPOSAL_CHOSEN", Cause.PROPOSAL, "no proposal chosen: IKE or ESP algorithms differ"),
    ("no proposal chosen", Cause.PROPOSAL, "no proposal chosen: IKE or ESP algorithms differ"),
    ("TS_UNACCEPTABLE", Cause.SELECTORS, "traffic selectors unacceptable to the peer"),
    ("timeout", Cause.UNREACHABLE, "peer unreachable: no answer to IKE_SA_INIT"),
    ("max number of retransmissions", Cause.UNREACHABLE,
     "peer unreachable: no answer to IKE_SA_INIT"),
    ("INVALID_SYNTAX", Cause.NEGOTIATION, "the peer found our messages invalid"),
)  # fmt: skip


def failure_of(reply: str) -> tuple[Cause, str] | None:
    """The cause and reason of a failed initiation from pluto's reply text; None when it
    tells none (pending, or succeeded)."""
    for needle, cause, reason in _FAILURES:
        if needle in reply:
            return cause, reason
    return None


def outcome_of(reply: str) -> Outcome | None:
    """pluto's reply to a synchronous initiation as a failure of the IKE SA it names (its
    serial is the one `parse_states` reports as the IKE SA's unique id)."""
    found = failure_of(reply)
    if found is None or "established IKE SA" in reply:
        return None  # the IKE SA came up: a Child SA's refusal is no failure of it
    serials = [int(n) for n in re.findall(r'" #(\d+):', reply)]
    return Outcome(found[0], found[1], max(serials, default=0))


def unreachable(peer: str, seconds: float) -> Outcome:
    return Outcome(Cause.UNREACHABLE, f"peer unreachable: no answer from {peer} within "
                   f"{seconds:g} s", 0)  # fmt: skip
