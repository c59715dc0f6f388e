"""The record a daemon leaves at a clean exit for the next one: what it had loaded into charon,
so that a restart while charon holds everything writes nothing to it. Pure.

VICI lists our connections and secrets by name only (`get-conns`, `get-shared`; a secret is
never shown), so without this a new daemon cannot tell whether charon holds them as it would
load them now, and loads them all again: harmless (charon keeps the SAs of an unchanged config)
but a thousand writes, and as many trap policies rewritten in the kernel, at a thousand tunnels.

A record may only spare a load that would change nothing; if in any doubt, load:
- it is written at a clean exit only, between two turns of the loop (no request in flight),
  from the believed state (`reconcile.Applied`, updated only after charon accepted a request);
- the next daemon reads it once and deletes it at start, so it never outlives one hand-over;
- it is believed only by the charon that was running then (same version and `since`, its start
  time, within charon's one-second jitter), and only for what that charon still lists (the
  daemon passes the result through `reconcile.adopt`); charon keeps no record of its own, so
  a restarted charon is empty and a same-named object loaded by someone else while the daemon
  was down goes unnoticed, as it would while the daemon runs;
- anything whose digest differs from what would be loaded now is loaded as usual, and a record
  that cannot be read whole (bad checksum, format, or type) is ignored.

Shared secrets are kept as keyed BLAKE2b digests under a random key stored in the record, never
in clear. The record is root's alone (0600, in the root-owned run directory) and every PSK is in
root-readable OVSDB (and in charon) anyway, so a digest tells its reader nothing they could not
read in clear elsewhere; the random key only keeps digests from being compared across records.

May import: connections, model, reconcile, stdlib.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core.connections import ConnSpec, Desired
from ovs_ipsec.core.model import Secret
from ovs_ipsec.core.reconcile import Applied

FORMAT = 1
KEY_BYTES = 32


class _DifferentSecret(Secret):
    """Equal to no secret but itself."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)


# Stands in the believed state for a secret the previous daemon loaded that is known to differ
# from the one wanted now: not None, so that the diff closes the IKE_SAs made with it once the
# new one is loaded, as it does for a PSK changed while the daemon runs.
PREVIOUS_SECRET: Secret = _DifferentSecret("")


@dataclass(frozen=True)
class Handover:
    charon_version: str
    charon_since: str
    key: bytes  # the key of the secrets' digests
    conns: Mapping[str, str]  # connection name -> wire_digest of what was loaded
    shared: Mapping[str, str]  # secret id -> Secret.keyed_digest(key)
    keys: Mapping[str, str]  # private key content digest -> charon's key id


def wire_digest(wire: bytes) -> str:
    return hashlib.sha256(wire).hexdigest()


def handover_of(applied: Applied, charon_version: str, charon_since: str, key: bytes) -> Handover:
    """What `applied` vouches for: the objects whose content charon was given by this daemon
    (those listed but never loaded by it, content `None`, are left out and so loaded again)."""
    return Handover(
        charon_version=charon_version,
        charon_since=charon_since,
        key=key,
        conns={name: wire_digest(c.wire) for name, c in applied.conns.items() if c is not None},
        shared={i: s.keyed_digest(key) for i, s in applied.shared.items() if s is not None},
        keys=dict(applied.keys),
    )


def encode(handover: Handover) -> bytes:
    """A checksum line, then the record as JSON."""
    body = json.dumps(
        {
            "format": FORMAT,
            "charon": {"version": handover.charon_version, "since": handover.charon_since},
            "key": handover.key.hex(),
            "conns": dict(handover.conns),
            "shared": dict(handover.shared),
            "keys": dict(handover.keys),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body + b"\n"


def decode(data: bytes) -> Handover:
    """The record `encode` wrote; ValueError saying why when it is not one, whole."""
    checksum, _, body = data.partition(b"\n")
    body = body.rstrip(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != checksum:
        raise ValueError("checksum mismatch")
    try:
        record = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not a format {FORMAT} record")
    charon = record.get("charon")
    if not isinstance(charon, dict):
        raise ValueError("no charon identity")
    try:
        key = bytes.fromhex(_text(record, "key"))
    except ValueError:
        raise ValueError("key is not hex") from None
    return Handover(
        charon_version=_text(charon, "version"),
        charon_since=_text(charon, "since"),
        key=key,
        conns=_names(record, "conns"),
        shared=_names(record, "shared"),
        keys=_names(record, "keys"),
    )


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _names(record: Mapping[str, Any], name: str) -> dict[str, str]:
    value = record.get(name)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name} is not a map of strings")
    return value


def charon_restarted(before: str, now: str) -> bool:
    """Has charon restarted, judging by two `stats` uptime.since values? charon computes since
    as time(NULL) minus its monotonic uptime, both whole seconds, so the same charon reports
    values a second apart; a restart moves it by at least the seconds charon was down and took
    to start, which is more."""
    if not before or before == now:
        return False
    try:
        then = dt.datetime.strptime(before, "%b %d %H:%M:%S %Y")
        later = dt.datetime.strptime(now, "%b %d %H:%M:%S %Y")
    except ValueError:
        return True  # not the format charon uses: trust any change
    return abs((later - then).total_seconds()) > 1


def believed(
    handover: Handover, charon_version: str, charon_since: str, desired: Desired
) -> tuple[Applied, str]:
    """The believed charon state the record vouches for, given the charon connected now and what
    is wanted now: the wanted content where the digests match, so the diff loads nothing for it.
    With an empty state, why the record vouches for nothing."""
    if handover.charon_version != charon_version:
        return Applied(), f"charon is {charon_version}, not {handover.charon_version}"
    if not handover.charon_since or charon_restarted(handover.charon_since, charon_since):
        return Applied(), f"charon restarted (up since {charon_since})"
    conns: dict[str, ConnSpec | None] = {}
    for name, digest in handover.conns.items():
        spec = desired.conns.get(name)
        conns[name] = spec if spec is not None and wire_digest(spec.wire) == digest else None
    shared: dict[str, Secret | None] = {}
    for secret_id, digest in handover.shared.items():
        wanted = desired.shared.get(secret_id)
        if wanted is not None and wanted.secret.keyed_digest(handover.key) == digest:
            shared[secret_id] = wanted.secret
        else:
            shared[secret_id] = PREVIOUS_SECRET
    return Applied(conns=conns, shared=shared, keys=dict(handover.keys)), ""
