"""What a tunnel's ipsec_* options ask of charon (`IkeSettings`), and the defaults they change.

The planner needs these for every tunnel; the option table that produces them (`translate`) is
loaded only when a tunnel has ipsec_* options. Tunnels without options share `NO_SETTINGS`.

May import: stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Interoperable with upstream ovs-monitor-ipsec's strongSwan defaults
# (ike=aes256gcm16-sha256-modp2048, esp=aes256gcm16-modp2048). connections.py builds bodies from
# `default_proposals()`; a unit test checks plan's constants are these.
IKE_PROPOSALS: tuple[str, ...] = ("aes256gcm16-prfsha256-modp2048",)
ESP_PROPOSALS: tuple[str, ...] = ("aes256gcm16-modp2048",)

Level = Literal["conn", "child"]
VICIValue = str | tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Public result.


@dataclass(frozen=True, slots=True)
class IkeSettings:
    """What a tunnel's ipsec_* options ask of charon, as VICI keys and values.

    `conn` keys belong on the connection (the IKE_SA all tunnels to one peer share), `child`
    keys on each of the tunnel's CHILD_SA configs. Both are sorted by key; list values are
    tuples here (hashable) and lists in `conn_vici()`/`child_vici()`. `sources` maps
    "conn.<key>"/"child.<key>" to the OVSDB keys (with the ipsec_ prefix) that set it.
    """

    conn: tuple[tuple[str, VICIValue], ...] = ()
    child: tuple[tuple[str, VICIValue], ...] = ()
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def conn_vici(self) -> dict[str, str | list[str]]:
        """Keys to `update()` into the connection body (after its defaults)."""
        return vici_values(self.conn)

    def child_vici(self) -> dict[str, str | list[str]]:
        """Keys to `update()` into each of the tunnel's child bodies (after their defaults)."""
        return vici_values(self.child)

    def origin(self, level: Level, key: str) -> tuple[str, ...]:
        """The OVSDB keys that set `key` at `level` (empty if none did)."""
        wanted = f"{level}.{key}"
        for name, keys in self.sources:
            if name == wanted:
                return keys
        return ()


NO_SETTINGS = IkeSettings()


def vici_values(items: tuple[tuple[str, VICIValue], ...]) -> dict[str, str | list[str]]:
    """`IkeSettings.conn` or `.child` as VICI values (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in items}


def default_proposals(use_default_crypto: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IKE, ESP) proposals plan puts in the bodies before applying options.

    Empty with `--use-default-crypto`: plan then omits `proposals`/`esp_proposals` so charon
    uses its own defaults. An explicit ipsec_ike/ipsec_esp (or native spelling) still wins.
    """
    if use_default_crypto:
        return (), ()
    return IKE_PROPOSALS, ESP_PROPOSALS


def conn_differences(a: IkeSettings, b: IkeSettings) -> tuple[str, ...]:
    """OVSDB keys (of either tunnel) behind connection-level values that differ.

    All tunnels to one peer share one connection and so one IKE_SA; plan keeps the first and
    marks the others invalid naming these keys.
    """
    mine, theirs = dict(a.conn), dict(b.conn)
    keys: set[str] = set()
    for key in mine.keys() | theirs.keys():
        if mine.get(key) != theirs.get(key):
            keys.update(a.origin("conn", key))
            keys.update(b.origin("conn", key))
    return tuple(sorted(keys))
