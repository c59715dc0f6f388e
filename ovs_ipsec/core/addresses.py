"""IP address and prefix text: recognising canonical spellings and parsing prefixes. Pure.

Thousands of block policies, listed policies, connections and secrets carry canonical IPv4
addresses; these are recognised by pattern (no `ipaddress` parse, no cache of thousands of
parses), and everything else goes through `ipaddress`.

May import: stdlib.
"""

from __future__ import annotations

import functools
import ipaddress
import re

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Canonical IPv4 text (no leading zeros), as str(ipaddress.IPv4Address) writes it.
_CANONICAL_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}", re.ASCII)
_CANONICAL_IPV4_HOST = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}/32", re.ASCII)


def is_canonical_ipv4_host(prefix: str) -> bool:
    """`a.b.c.d/32` exactly as ipaddress writes it: thousands of block policies are these, and
    recognising them needs no parse (nor a cache of thousands of parses)."""
    return _CANONICAL_IPV4_HOST.fullmatch(prefix) is not None


def is_canonical_ip(text: str) -> bool:
    """An address spelled exactly as `str(ipaddress.ip_address(text))` would spell it (so
    `2001:DB8::1` is not). IPv4 is matched without parsing, and only IPv6 is parsed."""
    if _CANONICAL_IPV4.fullmatch(text):
        return True
    if ":" not in text:
        return False
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


def canonical_prefix(text: str) -> str:
    """`10.0.0.2` or `10.0.0.2/32` -> `10.0.0.2/32`; IPv6 in compressed form. ValueError if bad
    or if the address has host bits set (`10.0.0.1/24`)."""
    # Every policy is checked when it is made, and thousands are IPv4 hosts already canonical:
    # those are recognised without parsing (and without a cache of thousands of entries).
    if is_canonical_ipv4_host(text):
        return text
    parsed = parse_prefix(text.strip())
    if parsed is None:
        raise ValueError(f"{text!r} is not an IP address or prefix")
    if not parsed[2]:
        raise ValueError(f"{text!r} has host bits set")
    return parsed[1]


@functools.lru_cache(maxsize=256)
def parse_prefix(text: str) -> tuple[int, str, bool] | None:
    """An address with an optional prefix length as (IP version, `address/length` with the
    address compressed, True when no host bit is set), or None for anything else (blanks
    included). Cached: the same few IPv6 and non-host prefixes recur in every listing."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    network = iface.network
    return (
        iface.version,
        f"{iface.ip.compressed}/{network.prefixlen}",
        iface.ip == network.network_address,
    )
