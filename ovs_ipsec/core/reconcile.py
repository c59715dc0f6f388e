"""diff(desired, believed charon state) -> ordered actions. Pure.

`Applied` is what the daemon believes charon holds: the connections and secrets of ours that
charon listed (their content unknown after a restart of the daemon: `None`) or that the daemon
loaded since (content known). A connection whose content is unknown is loaded again; charon
compares it with what it has and keeps established SAs and unchanged CHILD configs
("updated vici connection"), so this never disturbs a running tunnel.

May import: connections, model, stdlib.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from ovs_ipsec.core.connections import ConnSpec, Desired, KeySpec, SharedSpec
from ovs_ipsec.core.model import Secret


class Phase(enum.IntEnum):
    """Safety order of one pass.

    Credentials go in before the connections that use them (a trap could fire at once and must
    find its PSK). Connections are loaded before stale ones are unloaded, and secrets leave last,
    so a tunnel that moves between peers never has a window without its config.
    """

    CREDENTIALS = 1
    LOAD = 2
    RENEGOTIATE = 3
    UNLOAD = 4
    UNCREDENTIAL = 5


@dataclass(frozen=True)
class LoadShared:
    spec: SharedSpec
    phase = Phase.CREDENTIALS


@dataclass(frozen=True)
class LoadKey:
    spec: KeySpec
    phase = Phase.CREDENTIALS


@dataclass(frozen=True)
class LoadConn:
    spec: ConnSpec
    phase = Phase.LOAD


@dataclass(frozen=True)
class TerminateIke:
    """Close the IKE_SA of a connection whose credentials changed, so the next negotiation uses
    the new ones (charon keeps an established SA authenticated with the old secret)."""

    conn: str
    phase = Phase.RENEGOTIATE


@dataclass(frozen=True)
class UnloadConn:
    conn: str
    phase = Phase.UNLOAD


@dataclass(frozen=True)
class UnloadShared:
    id: str
    phase = Phase.UNCREDENTIAL


@dataclass(frozen=True)
class UnloadKey:
    digest: str
    key_id: str
    phase = Phase.UNCREDENTIAL


Action = LoadShared | LoadKey | LoadConn | TerminateIke | UnloadConn | UnloadShared | UnloadKey


@dataclass
class Applied:
    """Believed charon state; `None` means "ours and loaded, content unknown". A connection's
    content is the spec whose body charon was given (equal specs, equal bodies)."""

    conns: dict[str, ConnSpec | None] = field(default_factory=dict)
    shared: dict[str, Secret | None] = field(default_factory=dict)
    # Private keys we loaded, by content digest -> charon's key id. charon names keys by their
    # public key, not by us, so only keys loaded by this process are known to be ours.
    keys: dict[str, str] = field(default_factory=dict)


def diff(
    desired: Desired,
    applied: Applied,
    conns: Iterable[str] | None = None,
    shared: Iterable[str] | None = None,
) -> list[Action]:
    """Actions that turn `applied` into `desired`. With `conns`/`shared`, only those names are
    compared (the incremental planner says which may have changed); keys are always compared
    (there is at most one)."""
    conn_names = set(desired.conns) | set(applied.conns) if conns is None else set(conns)
    secret_ids = set(desired.shared) | set(applied.shared) if shared is None else set(shared)
    actions: list[Action] = []
    for secret_id in sorted(secret_ids):
        spec = desired.shared.get(secret_id)
        if spec is None:
            if secret_id in applied.shared:
                actions.append(UnloadShared(secret_id))
        elif secret_id not in applied.shared or applied.shared[secret_id] != spec.secret:
            actions.append(LoadShared(spec))
            previous = applied.shared.get(secret_id)
            if previous is not None and spec.conn in applied.conns:
                actions.append(TerminateIke(spec.conn))
    for key in desired.keys.values():
        if key.digest not in applied.keys:
            actions.append(LoadKey(key))
    for digest, key_id in applied.keys.items():
        if digest not in desired.keys:
            actions.append(UnloadKey(digest, key_id))
    for name in sorted(conn_names):
        conn = desired.conns.get(name)
        if conn is None:
            if name in applied.conns:
                actions.append(UnloadConn(name))
        elif name not in applied.conns or applied.conns[name] != conn:
            actions.append(LoadConn(conn))
    return sorted(actions, key=lambda action: action.phase)


def record(applied: Applied, action: Action, key_id: str = "") -> None:
    """Update the believed state after `action` succeeded (`key_id`: what load-key returned)."""
    if isinstance(action, LoadKey):
        applied.keys[action.spec.digest] = key_id
    elif isinstance(action, UnloadKey):
        applied.keys.pop(action.digest, None)
    elif isinstance(action, LoadShared):
        applied.shared[action.spec.id] = action.spec.secret
    elif isinstance(action, LoadConn):
        applied.conns[action.spec.name] = action.spec
    elif isinstance(action, UnloadConn):
        applied.conns.pop(action.conn, None)
    elif isinstance(action, UnloadShared):
        applied.shared.pop(action.id, None)


def adopt(
    conns: frozenset[str],
    shared: frozenset[str],
    applied: Applied,
    key_ids: frozenset[str] = frozenset(),
) -> Applied:
    """Believed state after listing charon: keep known contents for what is still there.
    `applied` itself when charon lists exactly what it holds (a periodic check's usual case:
    no copy of thousands of entries)."""
    if (
        conns == applied.conns.keys()
        and shared == applied.shared.keys()
        and all(key_id in key_ids for key_id in applied.keys.values())
    ):
        return applied
    return Applied(
        conns={name: applied.conns.get(name) for name in conns},
        shared={secret_id: applied.shared.get(secret_id) for secret_id in shared},
        keys={digest: kid for digest, kid in applied.keys.items() if kid in key_ids},
    )
