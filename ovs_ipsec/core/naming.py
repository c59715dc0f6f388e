"""Stable names for everything the daemon creates in charon, and the one ownership test for each.

Names are derived from tunnel identity (never from a counter), so they survive restarts of the
daemon and of charon: a changed option updates an object in place, and a restarted daemon
recognises what it loaded before. Everything we create starts with `ovs-`; each kind of object
has a second, checkable part (an IP address for connections and secrets), so a foreign object
that merely starts with `ovs-` is not taken for ours.

May import: addresses, stdlib.
"""

from __future__ import annotations

import hashlib
import re

from ovs_ipsec.core.addresses import is_canonical_ip

PREFIX = "ovs-"
_CONN_PREFIX = PREFIX
_SHARED_PREFIX = PREFIX + "psk-"
_KEY_PREFIX = PREFIX + "key-"

# Characters kept as they are in child names; everything else (including "-", which separates
# the "-in"/"-out" suffixes) is percent-encoded, so distinct interfaces never share a name.
_SAFE = re.compile(r"[A-Za-z0-9_.]")


# VICI encodes keys (child names) with a one-byte length; leave room for prefix and suffix.
_MAX_ENCODED = 200


def _encode(name: str) -> str:
    encoded = "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
        for ch in name
    )
    if len(encoded) > _MAX_ENCODED:
        # "~" never appears in an encoding, so a shortened name cannot equal a full one.
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        encoded = f"{encoded[: _MAX_ENCODED - 17]}~{digest}"
    return encoded


def conn_name(remote_ip: str) -> str:
    """One VICI connection per peer address: charon picks the first connection whose identities
    match, so two connections to one peer would make the second's CHILD_SAs fail."""
    # Not interned: at thousands of peers the interpreter's table of interned strings grows by
    # more than the strings themselves. The planner keeps one string per name (ConnSpec.name).
    return f"{_CONN_PREFIX}{remote_ip}"


def child_name(interface: str, suffix: str = "") -> str:
    """The CHILD_SA config of one interface; UDP tunnels get "-in"/"-out" suffixes."""
    return f"{PREFIX}{_encode(interface)}{suffix}"


def shared_id(remote_ip: str) -> str:
    return f"{_SHARED_PREFIX}{remote_ip}"


# The address after the prefix must be spelled as conn_name()/shared_id() write it, so
# `ovs-2001:DB8::1`, which we never create, is not taken for ours. Each periodic check asks this
# for every connection and secret charon lists: IPv4 is matched without parsing.


def is_owned_conn(name: str) -> bool:
    return name.startswith(_CONN_PREFIX) and is_canonical_ip(name[len(_CONN_PREFIX) :])


def is_owned_shared(secret_id: str) -> bool:
    remote = secret_id[len(_SHARED_PREFIX) :]
    return secret_id.startswith(_SHARED_PREFIX) and is_canonical_ip(remote)


def remote_of_conn(name: str) -> str:
    return name[len(_CONN_PREFIX) :]
