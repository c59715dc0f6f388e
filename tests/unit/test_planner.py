"""The incremental planner always agrees with a full plan of the same OVSDB contents, and its
Delta names every connection, secret and policy that changed."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping

from fakes import unread_row
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core.block_policies import plan_protection, protect_tunnel
from ovs_ipsec.core.connections import plan
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.model import InterfaceRow, Secret, SkbMark, Snapshot
from ovs_ipsec.core.parse import parse_config, parse_skb_mark, parse_tunnel
from ovs_ipsec.tools import pki_builders

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def no_files(paths: Iterable[str]) -> Mapping[str, bytes | str]:
    return {path: f"cannot read {path}: No such file or directory" for path in paths}


names = st.sampled_from([f"t{i}" for i in range(6)])
options = st.fixed_dictionaries(
    {"remote_ip": st.sampled_from(["10.0.0.2", "10.0.0.3", "fd00::2", "bad", ""])},
    optional={
        "psk": st.sampled_from(["a", "b", ""]),
        "remote_name": st.sampled_from(["peer"]),
        "remote_cert": st.sampled_from(["/nonexistent.pem"]),
        "dst_port": st.sampled_from(["4790", "6081", "x"]),
        "local_ip": st.sampled_from(["10.0.0.1", "fd00::1"]),
        "ipsec_forceencaps": st.sampled_from(["yes", "no", "maybe"]),
        "ipsec_esp": st.sampled_from(["aes128gcm16", "nonsense"]),
    },
)
rows = st.builds(
    InterfaceRow, name=names, type=st.sampled_from(["gre", "geneve", "vxlan", "stt"]),
    options=options,
)  # fmt: skip
other_configs = st.fixed_dictionaries(
    {},
    optional={
        "ipsec_skb_mark": st.sampled_from(["0/1", "1/1", "zz"]),
        "ipsec_fail_open": st.sampled_from(["true", "false"]),
        "certificate": st.sampled_from(["/c.pem"]),
        "private_key": st.sampled_from(["/k.pem"]),
        "ca_cert": st.sampled_from(["/ca.pem"]),
    },
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("row"), st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
                  st.one_of(st.none(), rows)),
        st.tuples(st.just("global"), other_configs, st.none()),
    ),
    max_size=25,
)  # fmt: skip


def full(
    table: Mapping[str, InterfaceRow], other_config: Mapping[str, str], mark: SkbMark | None
) -> tuple:
    # OVSDB's index keeps interface names unique; the generator may not, so the last row with
    # a name wins in both the planner and here.
    by_name = {row.name: row for row in table.values()}
    config = parse_config(Snapshot(tuple(by_name.values()), other_config))
    config = dataclasses.replace(
        config, global_config=dataclasses.replace(config.global_config, skb_mark=mark)
    )
    planner = Planner(no_files, unread_row)
    planner.update(dict(table), other_config, NOW)
    desired = plan(config, planner.credentials)
    policies = plan_protection(dataclasses.replace(config, invalid=desired.invalid))
    return desired, policies


@settings(max_examples=150, deadline=None)
@given(steps)
def test_incremental_equals_full(sequence: list) -> None:
    """After any sequence of row and other_config changes, the planner's desired state and
    policies equal a full plan of the same contents, and each Delta covers what changed."""
    table: dict[str, InterfaceRow] = {}
    planner = Planner(no_files, table.get)
    other_config: dict[str, str] = {}
    previous = planner.desired
    previous_conns, previous_shared = dict(previous.conns), dict(previous.shared)
    previous_policies = frozenset(planner.policies)
    mark: SkbMark | None = None
    for kind, a, b in sequence:
        if kind == "row":
            changes: dict[str, InterfaceRow | None] = {a: b}
            if b is None:
                table.pop(a, None)
            else:
                # Keep names unique, as OVSDB's index does: one transaction renames/replaces.
                for uuid in [u for u, r in table.items() if r.name == b.name and u != a]:
                    table.pop(uuid)
                    changes[uuid] = None
                table[a] = b
            delta = planner.update(changes, None, NOW)
        else:
            other_config = dict(a)
            parsed, error = (
                parse_skb_mark(a["ipsec_skb_mark"]) if "ipsec_skb_mark" in a else (None, None)
            )
            # A malformed mark keeps the one in force (see planner.keep_valid_mark).
            mark = mark if error else parsed
            delta = planner.update({}, other_config, NOW)
        desired, policies = full(table, other_config, mark)
        assert dict(planner.conns) == dict(desired.conns)
        assert dict(planner.shared) == dict(desired.shared)
        assert dict(planner.keys) == dict(desired.keys)
        assert dict(planner.invalid) == dict(desired.invalid)
        assert planner.policies == policies
        changed_conns = {
            n for n in set(previous_conns) | set(desired.conns)
            if previous_conns.get(n) != desired.conns.get(n)
        }  # fmt: skip
        assert changed_conns <= delta.conns
        changed_shared = {
            n for n in set(previous_shared) | set(desired.shared)
            if previous_shared.get(n) != desired.shared.get(n)
        }  # fmt: skip
        assert changed_shared <= delta.shared
        assert policies - previous_policies <= delta.policies_added
        assert previous_policies - policies <= delta.policies_removed
        assert delta.policies_of_deleted <= delta.policies_removed
        if kind == "global":
            assert not delta.policies_of_deleted  # nothing was deleted
        previous_conns, previous_shared = dict(desired.conns), dict(desired.shared)
        previous_policies = policies


def test_one_change_touches_one_peer() -> None:
    """At 1,000 tunnels, changing one port's PSK reports exactly its connection and secret."""
    planner = Planner(no_files, unread_row)
    rows = {
        f"u{i}": InterfaceRow(
            f"t{i}", "geneve", {"remote_ip": f"10.1.{i // 250}.{i % 250 + 1}", "psk": "s"}
        )
        for i in range(1000)
    }
    planner.update(rows, {}, NOW)
    changed = InterfaceRow("t7", "geneve", {"remote_ip": "10.1.0.8", "psk": "new"})
    delta = planner.update({"u7": changed}, None, NOW)
    assert delta.conns == set()
    assert delta.shared == {"ovs-psk-10.1.0.8"}
    assert delta.tunnels == {"t7"}
    assert not delta.policies_added and not delta.policies_removed


def test_only_ports_deleted_from_ovsdb_report_their_policies_as_deleted() -> None:
    """The daemon keeps a while only the blocks of ports that left OVSDB: a port made plain (its
    psk removed) or moved to another remote_ip loses its blocks for good."""
    planner = Planner(no_files, unread_row)
    g1 = InterfaceRow("g1", "gre", {"remote_ip": "10.0.0.2", "psk": "s"})
    g2 = InterfaceRow("g2", "geneve", {"remote_ip": "10.0.0.3", "psk": "s"})
    planner.update({"u1": g1, "u2": g2}, {}, NOW)
    g1_blocks, g2_blocks = planner.tunnel_policies["g1"], planner.tunnel_policies["g2"]

    plain = InterfaceRow("g1", "gre", {"remote_ip": "10.0.0.2"})
    delta = planner.update({"u1": plain}, None, NOW)
    assert delta.policies_removed == set(g1_blocks) and not delta.policies_of_deleted

    moved = InterfaceRow("g2", "geneve", {"remote_ip": "10.0.0.4", "psk": "s"})
    delta = planner.update({"u2": moved}, None, NOW)
    assert delta.policies_removed == set(g2_blocks) and not delta.policies_of_deleted

    delta = planner.update({"u2": None}, None, NOW)
    assert delta.policies_of_deleted == delta.policies_removed
    assert delta.policies_removed == set(protect_tunnel(parse_tunnel(moved, planner.global_config)))

    # Deleted and re-created under a new row uuid in one transaction: not deleted.
    planner.update({"u3": g2}, None, NOW)
    delta = planner.update({"u3": None, "u4": g2}, None, NOW)
    assert not delta.policies_removed and not delta.policies_of_deleted


def _reachable_texts(root: object) -> list[str | bytes]:
    """Every str and bytes reachable from `root` through containers, dataclasses and object
    attributes; a Secret is not looked into (it is where a secret may be)."""
    found: list[str | bytes] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, Secret):
            continue
        seen.add(id(item))
        if isinstance(item, (str, bytes)):
            found.append(item)
        elif isinstance(item, Mapping):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack += list(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack += [getattr(item, f.name) for f in dataclasses.fields(item)]
        elif hasattr(item, "__dict__") and not callable(item):
            stack += list(vars(item).values())
    return found


def test_the_planner_keeps_digests_of_files_not_the_private_key_s_bytes() -> None:
    """Change detection needs a digest only; the private key stays as a Secret alone (charon
    gets it again from memory after a restart), and a PSK is a Secret in the rows too."""
    ours, peer = pki_builders.make_self_signed("h1"), pki_builders.make_self_signed("h9")
    files = {"/c.pem": ours.cert_pem, "/k.pem": ours.key_pem, "/p.pem": peer.cert_pem}
    planner = Planner(lambda paths: {path: files[path] for path in paths}, unread_row)
    rows = {
        1: InterfaceRow("c0", "gre", {"remote_ip": "10.0.0.2", "remote_cert": "/p.pem"}),
        2: InterfaceRow("p0", "gre", {"remote_ip": "10.0.0.3", "psk": Secret("Zq9-planner")}),
    }
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # the certificates were made now
    planner.update(rows, {"certificate": "/c.pem", "private_key": "/k.pem"}, now)
    assert planner.credentials.local is not None
    assert "c0" in planner.tunnels and "p0" in planner.tunnels
    body = [line for line in ours.key_pem.splitlines() if len(line) >= 16 and b"-----" not in line]
    texts = _reachable_texts(planner)
    leaks = [
        t for t in texts for line in body if line in (t if isinstance(t, bytes) else t.encode())
    ]
    assert leaks == []
    assert not [t for t in texts if "Zq9-planner" in str(t)]
    # A file that changes is still noticed.
    before = dict(planner.file_digests)
    files["/c.pem"] = pki_builders.make_self_signed("h1").cert_pem
    planner.update({}, None, now, reread_files=True)
    assert planner.file_digests["/c.pem"] != before["/c.pem"]
    assert planner.file_digests["/k.pem"] == before["/k.pem"]
