"""What charon, the kernel and the daemon's process hold, read independently of the daemon: the
observations shared by test_resilience.py and test_fuzz_soak.py.

Nothing here asks the daemon what it did; everything is read from charon over a VICI session of
the test's own, from `ip -s xfrm policy`, from /proc and from the daemon's log file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import vici.exception

from ovs_ipsec.core.vici_wire import bytes_to_text as decode
from ovs_ipsec.tools.lab import Host, wait_for

# The reserved priorities of the daemon's own block policies (fail-closed, ipsec_skb_mark).
PROTECTION_PRIORITIES = frozenset({430_001, 430_003})
FAIL_CLOSED_PRIORITY = 430_001
SKB_MARK_PRIORITY = 430_003
# "Any address" in the daemon's fail-closed policies: two /1 halves, so that they never share a
# kernel key (selector + direction + mark) with the `0.0.0.0/0 <-> peer/32` trap charon installs
# when it cannot tell its own address.
ANY_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}


# -- OVSDB --------------------------------------------------------------------------------------


def quote(text: str, ascii: bool = True) -> str:
    """An OVSDB string atom for ovs-vsctl: JSON-quoted, so any unicode, `=`, `,` or `"` passes
    (`ascii=False`: as raw UTF-8, a third of the size of `\\uXXXX` escapes)."""
    return json.dumps(text, ensure_ascii=ascii)


def options_map(options: dict[str, str], ascii: bool = True) -> str:
    """`{"k"="v", ...}`: a whole options map for `set interface X options=...`."""
    pairs = (f"{quote(k, ascii)}={quote(v, ascii)}" for k, v in options.items())
    return "{" + ", ".join(pairs) + "}"


def add_tunnel(host: Host, name: str, kind: str, remote: str, **options: str) -> None:
    opts = options_map({"remote_ip": remote, **options})
    host.vsctl("add-port", "br0", name, "--", "set", "interface", name, f"type={kind}",
               f"options={opts}")  # fmt: skip


# -- charon -------------------------------------------------------------------------------------


def conns(host: Host) -> dict[str, dict[str, Any]]:
    """Every connection charon holds, by name, as list-conns reports it (decoded)."""
    with host.vici() as v:
        result: dict[str, dict[str, Any]] = {}
        for entry in v.list_conns():
            result.update(decode(entry))
        return result


def conn_names(host: Host) -> set[str]:
    with host.vici() as v:
        return {decode(n) for n in v.get_conns()["conns"]}


def shared_ids(host: Host) -> set[str]:
    with host.vici() as v:
        return {decode(k) for k in v.get_shared()["keys"]}


def key_ids(host: Host) -> set[str]:
    with host.vici() as v:
        return {decode(k) for k in v.get_keys()["keys"]}


def _canonical_ip(text: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def ours(names: set[str]) -> set[str]:
    """Names in the daemon's scheme: `ovs-<address>` connections and `ovs-psk-<address>` secrets,
    the address spelled canonically (so `ovs-foo` or `ovs-2001:DB8::1` belong to someone else)."""
    return {
        n for n in names
        if _canonical_ip(n.removeprefix("ovs-psk-") if n.startswith("ovs-psk-") else n[4:])
        and n.startswith("ovs-")
    }  # fmt: skip


def ike_sas(host: Host) -> dict[str, list[dict[str, Any]]]:
    """IKE_SAs by connection name."""
    result: dict[str, list[dict[str, Any]]] = {}
    with host.vici() as v:
        for entry in v.list_sas({"noblock": "yes"}):
            for name, sa in decode(entry).items():
                result.setdefault(name, []).append(sa)
    return result


def established(host: Host, conn: str) -> list[dict[str, Any]]:
    return [sa for sa in ike_sas(host).get(conn, []) if sa["state"] == "ESTABLISHED"]


def initiate(host: Host, conn: str, child: str) -> None:
    """Negotiate now (5 s timeout). The CHILD_SA always fails on this kernel (no ESP)."""
    with host.vici() as v:
        try:
            for _ in v.initiate({"ike": conn, "child": child, "timeout": 5000}):
                pass
        except vici.exception.CommandException as exc:
            assert "CHILD_SA" in str(exc), exc


def load_foreign(host: Host, name: str, remote: str, port: int) -> None:
    """A connection of another application: a TCP trap to `remote`:`port`, PSK authenticated."""
    body = {
        "version": "2", "local_addrs": ["%any"], "remote_addrs": [remote],
        "local": {"auth": "psk"}, "remote": {"auth": "psk", "id": remote},
        "children": {f"{name}-child": {
            "mode": "transport", "local_ts": ["dynamic[6]"], "remote_ts": [f"dynamic[6/{port}]"],
            "start_action": "trap",
        }},
    }  # fmt: skip
    with host.vici() as v:
        v.load_conn({name: body})


def load_secret(host: Host, secret_id: str, owner: str, data: str = "foreign") -> None:
    with host.vici() as v:
        v.load_shared({"id": secret_id, "type": "IKE", "data": data, "owners": [owner]})


class IkeEvents:
    """Records `ike-updown` events on a VICI session of its own, in a thread, while in a `with`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.host.vici() as v:
                for kind, data in v.listen(["ike-updown"], timeout=0.1):
                    self._ready.set()
                    if kind is not None:
                        self.events.append(decode(data))
                    if self._stop.is_set():
                        break
        except BaseException as exc:  # reported by __exit__
            self.error = exc
            self._ready.set()

    def for_conn(self, conn: str) -> list[dict[str, Any]]:
        return [e for e in self.events if conn in e]

    def __enter__(self) -> IkeEvents:
        self._thread.start()
        # listen() registers before its first yield; the first timeout tick proves it.
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise AssertionError(f"event listener failed: {self.error!r}")


# -- kernel -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """One XFRM policy as `ip -s xfrm policy` prints it. `index` changes whenever the policy is
    deleted and added again, so equal indexes prove a policy was never replaced."""

    selector: str
    dir: str
    action: str
    index: int
    priority: int
    mark: str

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        """Identity without the index: equal for a policy that was removed and re-added."""
        return (self.selector, self.dir, self.action, self.priority, self.mark)


_DIR = re.compile(
    r"\s+(?:dir|socket) (?P<dir>\S+) action (?P<action>\S+) index (?P<index>\d+) "
    r"priority (?P<priority>\d+)"
)


def xfrm_policies(host: Host) -> list[Policy]:
    text = host.run(["ip", "-s", "xfrm", "policy"]).stdout
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    policies = []
    for block in blocks:
        m = _DIR.match(block[1]) if len(block) > 1 else None
        if m is None or block[1].lstrip().startswith("socket"):
            continue  # charon's per-socket bypass policies
        mark = next((ln.split()[1] for ln in block if ln.lstrip().startswith("mark ")), "")
        policies.append(Policy(block[0].strip(), m["dir"], m["action"], int(m["index"]),
                               int(m["priority"]), mark))  # fmt: skip
    return policies


def protection(host: Host) -> frozenset[Policy]:
    """The daemon's own block policies (by their reserved priorities)."""
    return frozenset(
        p for p in xfrm_policies(host)
        if p.action == "block" and p.priority in PROTECTION_PRIORITIES
    )  # fmt: skip


def fail_closed_selectors(remote: str, match: str) -> set[str]:
    """The selectors (as `ip -s xfrm policy` prints them) of the daemon's four fail-closed
    policies for one tunnel to `remote`; `match` is e.g. "proto gre" or "proto udp dport 4790"."""
    family = 6 if ":" in remote else 4
    host = f"{remote}/{128 if family == 6 else 32}"
    return {
        selector
        for half in ANY_HALVES[family]
        for selector in (f"src {half} dst {host} {match} uid 0",
                         f"src {host} dst {half} {match} uid 0")
    }  # fmt: skip


def traps(host: Host, address: str | None = None) -> frozenset[Policy]:
    """charon's policies (everything but ours), optionally only those naming `address`."""
    return frozenset(
        p for p in xfrm_policies(host)
        if p.priority not in PROTECTION_PRIORITIES
        and (address is None or re.search(rf"(?<![0-9a-f:.]){re.escape(address)}/", p.selector))
    )  # fmt: skip


# -- the daemon's process and log ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class LogCursor:
    """The daemon log from a point on: `mark()` remembers where it ends now, `new()` returns what
    was written since."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.offset = 0
        self.mark()

    def mark(self) -> None:
        self.offset = len(self.host.daemon_log())

    def new(self) -> str:
        return self.host.daemon_log()[self.offset :]


_ACTION = re.compile(
    r"\[(\d+)\] ((?:un)?loaded (?:connection|shared secret) \S+|closed IKE_SAs of \S+)"
)


def charon_actions(log: str, *, beside_restarts: bool = False) -> list[str]:
    """What the daemon did to charon, in order, from its log: "loaded connection X", "unloaded
    shared secret Y", "closed IKE_SAs of X"...

    `beside_restarts`: leave out passes that logged "charon restarted": a full reload is what a
    restart calls for, and whether the restart was real is the steady-state test's business."""
    restarts = set(re.findall(r"\[(\d+)\] charon restarted", log)) if beside_restarts else set()
    return [what for pass_id, what in _ACTION.findall(log) if pass_id not in restarts]


def charon_writes(log: str) -> list[str]:
    """The VICI requests that change charon in a slice of its log, in order: at `cfg` level 2
    (the lab's charon.log) the vici plugin logs every request it dispatches, whoever sent it."""
    requests = re.findall(r"vici client \d+ requests: ([\w-]+)", log)
    assert requests, "charon's log shows no VICI request at all (cfg log level < 2?)"
    return [r for r in requests if not r.startswith(("get-", "list-", "version", "stats"))]


def loaded_conns(log: str, *, beside_restarts: bool = False) -> list[str]:
    """Connections the daemon loaded, in order."""
    return [
        what.split()[-1]
        for what in charon_actions(log, beside_restarts=beside_restarts)
        if what.startswith("loaded connection")
    ]


def wait_loaded(host: Host, conn: str, children: set[str], timeout: float = 10) -> None:
    def loaded() -> bool:
        found = conns(host).get(conn)
        return found is not None and set(found["children"]) == children

    wait_for(loaded, timeout, what=f"{host.name}: {conn} loaded with children {children}")


@contextlib.contextmanager
def elapsed() -> Iterator[list[float]]:
    """`with elapsed() as t:` ... `t[0]` is the duration in seconds once the block is done."""
    box = [0.0]
    start = time.monotonic()
    try:
        yield box
    finally:
        box[0] = time.monotonic() - start


# -- block policies as `ip xfrm policy` prints them --------------------------------------------

OWN = re.compile(rf"\bpriority ({FAIL_CLOSED_PRIORITY}|{SKB_MARK_PRIORITY})\b")


def policy_blocks(host: Host) -> list[str]:
    """Every policy of `ip xfrm policy` in `host`, one whitespace-normalised string each."""
    blocks: list[list[str]] = []
    for line in host.xfrm_policies().splitlines():
        if line.startswith("src "):
            blocks.append([])
        if line.strip() and blocks:
            blocks[-1].append(line.strip())
    return [" ".join(" ".join(b).split()) for b in blocks]


def own(host: Host) -> list[str]:
    """The daemon's policies (our priorities), sorted; duplicates would show twice."""
    return sorted(b for b in policy_blocks(host) if OWN.search(b))


def others(host: Host) -> list[str]:
    """Everything else: charon's traps and socket policies, hand-added ones."""
    return sorted(b for b in policy_blocks(host) if not OWN.search(b))
