"""Per-tunnel `options:ipsec_*` -> swanctl (VICI) connection and CHILD_SA keys, checked.

Upstream ovs-monitor-ipsec pasted every `options:ipsec_<key>=<value>` verbatim into ipsec.conf.
Over VICI there is no file to paste into, so this module translates the spellings seen in the
wild (strongSwan ipsec.conf names, the Libreswan names OVN deployments send, the native swanctl
names) into VICI keys and values, and refuses, with a reason naming the OVSDB key, anything it
cannot honour or that would break the daemon's guarantees (trap policies from load time, exact
transport-mode selectors, identities from OVSDB, the daemon's own drop policies).

`OPTIONS` (accepted) and `REJECTED` are the one table. docs/ipsec-options.md embeds
`render_markdown()`'s output; a unit test keeps the two in step.

How plan uses it: `translate()` for each tunnel that has ipsec_* options (errors make the
tunnel invalid). The result type (`IkeSettings`), the default proposals and `conn_differences()`
are in ike_settings, which plan needs for every tunnel: this table, about 0.9 MiB of the
daemon's memory once loaded, is loaded only when some tunnel has ipsec_* options.

May import: ike_options.settings, model, parse, stdlib.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core.ike_options.settings import (
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    NO_SETTINGS,
    IkeSettings,
    Level,
    VICIValue,
    conn_differences,
    default_proposals,
)
from ovs_ipsec.core.model import Invalid
from ovs_ipsec.core.parse import parse_bool, quoted

# The result type and the defaults live in ike_settings (the planner needs them for every
# tunnel; this table is loaded only when a tunnel has ipsec_* options). Re-exported here, where
# the options are.
__all__ = [
    "ESP_PROPOSALS",
    "IKE_PROPOSALS",
    "NO_SETTINGS",
    "IkeSettings",
    "Level",
    "VICIValue",
    "conn_differences",
    "default_proposals",
    "render_markdown",
    "translate",
]

PREFIX = "ipsec_"

MAX_VALUE_LENGTH = 1024
MAX_PROPOSALS = 32
DAY = 86400
MAX_LIFETIME = 30 * DAY  # rekey/reauth/life/over/rand times
MAX_DPD = DAY
MIN_LIFETIME = 10  # a non-zero rekey/reauth/life time below this would rekey continuously
MAX_REPLAY_WINDOW = 4096  # Linux: XFRMA_REPLAY_ESN_MAX bitmap = 128 x 32 packets
MAX_KEYINGTRIES = 1000
MAX_VOLUME = 10**15 - 1  # charon reads byte/packet counts into a 16-byte buffer
MAX_FUZZ = 1000  # percent

# ipsec.conf defaults that its lifetime keys are relative to (strongSwan starter/confread.c).
IPSEC_CONF_IKELIFETIME = 3 * 3600
IPSEC_CONF_LIFETIME = 3600
IPSEC_CONF_MARGIN = 9 * 60
IPSEC_CONF_FUZZ = 100
IPSEC_CONF_DPDDELAY = 30

# ---------------------------------------------------------------------------------------------
# Value parsers. Each takes a cleaned value (stripped, ASCII, no control characters, non-empty)
# and returns its translation or raises _Refused with a reason for the operator.


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DURATION = re.compile(r"([0-9]{1,12})\s*([smhd]?)", re.ASCII | re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY}
_VOLUME = re.compile(r"([0-9]{1,16})\s*([kmg]?)", re.ASCII | re.IGNORECASE)
_VOLUME_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_INTEGER = re.compile(r"[0-9]{1,12}", re.ASCII)
_PERCENT = re.compile(r"([0-9]{1,6})\s*%?", re.ASCII)


def _bool(value: str) -> bool:
    flag = parse_bool(value)
    if flag is None:
        raise _Refused(f"expected yes or no, got {quoted(value)}")
    return flag


def _yesno(value: str) -> str:
    return "yes" if _bool(value) else "no"


def _duration(value: str, *, maximum: int, minimum: int = 1) -> int:
    """Seconds from `30s`, `20m`, `1h`, `1d` or plain seconds; 0 allowed (means "off")."""
    if value.startswith("-"):
        raise _Refused(f"must not be negative, got {quoted(value)}")
    match = _DURATION.fullmatch(value)
    if not match:
        raise _Refused(
            f"expected a duration such as 30s, 20m, 1h, 1d or plain seconds, got {quoted(value)}"
        )
    seconds = int(match.group(1)) * _UNIT[match.group(2).lower()]
    if seconds > maximum:
        raise _Refused(f"{quoted(value)} is longer than the maximum of {_human(maximum)}")
    if 0 < seconds < minimum:
        raise _Refused(
            f"{quoted(value)} is shorter than {minimum}s (0 turns it off); SAs would be "
            "renewed continuously"
        )
    return seconds


def _human(seconds: int) -> str:
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _seconds(seconds: int) -> str:
    return f"{seconds}s"


def _volume(value: str) -> int:
    """Bytes or packets: plain number or with charon's k/m/g (1024-based) suffix."""
    if value.startswith("-"):
        raise _Refused(f"must not be negative, got {quoted(value)}")
    match = _VOLUME.fullmatch(value)
    if not match:
        raise _Refused(f"expected a number (optionally with k, m or g), got {quoted(value)}")
    number = int(match.group(1)) * _VOLUME_UNIT[match.group(2).lower()]
    if number > MAX_VOLUME:
        raise _Refused(f"{quoted(value)} is larger than charon accepts ({MAX_VOLUME})")
    return number


def _integer(value: str, low: int, high: int) -> int:
    if value.startswith("-"):
        raise _Refused(f"must not be negative, got {quoted(value)}")
    if not _INTEGER.fullmatch(value):
        raise _Refused(f"expected a whole number, got {quoted(value)}")
    number = int(value)
    if not low <= number <= high:
        raise _Refused(f"must be between {low} and {high}, got {number}")
    return number


def _percent(value: str) -> int:
    match = _PERCENT.fullmatch(value)
    if not match:
        raise _Refused(f"expected a percentage such as 100%, got {quoted(value)}")
    number = int(match.group(1))
    if number > MAX_FUZZ:
        raise _Refused(f"must be at most {MAX_FUZZ}%, got {number}%")
    return number


def _choice(value: str, mapping: dict[str, str | None], what: str) -> str | None:
    """Look `value` up (case-insensitively); mapped to None means refused (reason in `what`)."""
    word = value.lower()
    if word not in mapping:
        accepted = ", ".join(k for k, v in mapping.items() if v is not None)
        raise _Refused(f"expected one of {accepted}, got {quoted(value)}")
    result = mapping[word]
    if result is None:
        raise _Refused(what.format(value=quoted(value)))
    return result


# ---------------------------------------------------------------------------------------------
# Proposals: strongSwan keywords (5.9.8 proposal_keywords_static.txt, minus NTRU/NewHope which
# 6.0 dropped) and a translation of Libreswan's syntax.

_AEAD, _CLASSIC, _GMAC, _NULL, _INTEG, _PRF, _KE, _KE_NONE, _KE_INSECURE, _ESN = range(10)


def _strongswan_keywords() -> dict[str, int]:
    words: dict[str, int] = {"null": _NULL, "des": _CLASSIC, "3des": _CLASSIC}
    for family in ("aes", "blowfish", "camellia", "serpent", "twofish"):
        words[family] = _CLASSIC
        for bits in (128, 192, 256):
            words[f"{family}{bits}"] = _CLASSIC
    words["cast128"] = _CLASSIC
    for bits in (128, 192, 256):
        words[f"aes{bits}ctr"] = _CLASSIC
        words[f"camellia{bits}ctr"] = _CLASSIC
        words[f"aes{bits}gmac"] = _GMAC
        words[f"aes{bits}gcm"] = _AEAD
        words[f"aes{bits}ccm"] = _AEAD
        for icv in ("8", "64", "12", "96", "16", "128"):
            words[f"aes{bits}gcm{icv}"] = _AEAD
            words[f"aes{bits}ccm{icv}"] = _AEAD
            words[f"camellia{bits}ccm{icv}"] = _AEAD
    words["chacha20poly1305"] = _AEAD
    words["chacha20poly1305compat"] = _AEAD
    for integ in (
        "sha", "sha1", "sha1_160", "sha256", "sha2_256", "sha256_96", "sha2_256_96", "sha384",
        "sha2_384", "sha512", "sha2_512", "md5", "md5_128", "aesxcbc", "camelliaxcbc", "aescmac",
    ):  # fmt: skip
        words[integ] = _INTEG
    for prf in ("sha1", "sha256", "sha384", "sha512", "md5", "aesxcbc", "camelliaxcbc", "aescmac"):
        words[f"prf{prf}"] = _PRF
    for ke in (
        "modp768", "modp1024", "modp1536", "modp2048", "modp3072", "modp4096", "modp6144",
        "modp8192", "ecp192", "ecp224", "ecp256", "ecp384", "ecp521", "modp1024s160",
        "modp2048s224", "modp2048s256", "ecp224bp", "ecp256bp", "ecp384bp", "ecp512bp",
        "curve25519", "x25519", "curve448", "x448",
    ):  # fmt: skip
        words[ke] = _KE
    words["none"] = _KE_NONE
    words["modpnone"] = _KE_NONE
    words["modpnull"] = _KE_INSECURE
    words["esn"] = _ESN
    words["noesn"] = _ESN
    return words


STRONGSWAN_KEYWORDS: dict[str, int] = _strongswan_keywords()
# Integrity algorithms charon derives an IKE PRF from (proposal.c integ_prf_map).
_PRF_FROM_INTEG = frozenset(
    {"sha", "sha1", "sha1_160", "sha256", "sha2_256", "sha384", "sha2_384", "sha512", "sha2_512",
     "md5", "md5_128", "aesxcbc", "camelliaxcbc", "aescmac"}
)  # fmt: skip


def _strongswan_proposal(item: str, proto: str) -> str:
    """Check one strongSwan proposal as charon would, plus the daemon's own rules."""
    tokens = item.split("-")
    if any(not t for t in tokens):
        raise _Refused(f"empty algorithm in {proto} proposal {quoted(item)}")
    unknown = [t for t in tokens if t not in STRONGSWAN_KEYWORDS]
    if unknown:
        raise _Refused(f"unknown algorithm {quoted(unknown[0])} in {proto} proposal {quoted(item)}")
    _check_strongswan(tokens, proto, item)
    return "-".join(tokens)


def _check_strongswan(tokens: Sequence[str], proto: str, item: str) -> None:
    kinds = [STRONGSWAN_KEYWORDS[t] for t in tokens]
    shown = quoted(item)
    if _KE_INSECURE in kinds:
        raise _Refused(f"modpnull in {proto} proposal {shown} is a test group with no security")
    if _NULL in kinds or _GMAC in kinds:
        raise _Refused(
            f"{proto} proposal {shown} has no encryption (null or GMAC): tunnel traffic would "
            "cross the wire readable"
        )
    ciphers = [k for k in kinds if k in (_AEAD, _CLASSIC)]
    if not ciphers:
        raise _Refused(f"{proto} proposal {shown} names no encryption algorithm")
    aead = _AEAD in ciphers
    if aead and _CLASSIC in ciphers:
        raise _Refused(
            f"{proto} proposal {shown} mixes AEAD and classic ciphers; charon refuses that, "
            "separate them with a comma"
        )
    if proto == "IKE":
        if _ESN in kinds:
            raise _Refused(f"esn/noesn apply to ESP proposals only, not IKE proposal {shown}")
        if not aead and _INTEG not in kinds:
            raise _Refused(f"IKE proposal {shown} needs an integrity algorithm (e.g. sha256)")
        derivable = any(t in _PRF_FROM_INTEG for t in tokens)
        if _PRF not in kinds and not derivable:
            raise _Refused(f"IKE proposal {shown} needs a PRF (e.g. prfsha256)")
        if _KE not in kinds:
            raise _Refused(
                f"IKE proposal {shown} needs a key exchange method (e.g. modp2048, ecp256, "
                "curve25519)"
            )
    else:
        if _PRF in kinds:
            raise _Refused(f"PRFs apply to IKE proposals only, not ESP proposal {shown}")
        if not aead and _INTEG not in kinds:
            raise _Refused(
                f"ESP proposal {shown} has a classic cipher without an integrity algorithm: "
                "ESP would be unauthenticated"
            )


def _has_ke(item: str) -> bool:
    return any(STRONGSWAN_KEYWORDS.get(t) == _KE for t in item.split("-"))


def _ke_groups(items: Iterable[str]) -> tuple[str, ...]:
    groups: list[str] = []
    for item in items:
        for token in item.split("-"):
            if STRONGSWAN_KEYWORDS.get(token) == _KE and token not in groups:
                groups.append(token)
    return tuple(groups)


def _without_ke(item: str) -> str:
    return "-".join(t for t in item.split("-") if STRONGSWAN_KEYWORDS.get(t) not in (_KE,))


# Libreswan names (ipsec.conf(5) "Proposals", lib/libswan ike_alg tables) -> strongSwan.
_LS_CIPHER = re.compile(
    r"(?P<family>aes_gcm|aes_ccm|aes_ctr|aes_cbc|aes|camellia_cbc|camellia)"
    r"(?:_?(?P<icv>a|b|c|8|12|16))?_?(?P<bits>128|192|256)?",
    re.ASCII,
)
_LS_ICV = {None: "16", "a": "8", "8": "8", "b": "12", "12": "12", "c": "16", "16": "16"}
_LS_KEYLESS_CIPHERS = {"3des": "3des", "3des_cbc": "3des", "chacha20_poly1305": "chacha20poly1305",
                       "chacha20poly1305": "chacha20poly1305"}  # fmt: skip
_LS_HASH = {
    "sha": "sha1", "sha1": "sha1", "sha1_96": "sha1",
    "sha2": "sha256", "sha256": "sha256", "sha2_256": "sha256", "sha2_256_128": "sha256",
    "sha384": "sha384", "sha2_384": "sha384", "sha2_384_192": "sha384",
    "sha512": "sha512", "sha2_512": "sha512", "sha2_512_256": "sha512",
    "md5": "md5", "md5_96": "md5",
    "aes_xcbc": "aesxcbc", "aes_xcbc_96": "aesxcbc", "aesxcbc": "aesxcbc",
    "aes_cmac": "aescmac", "aes_cmac_96": "aescmac", "aescmac": "aescmac",
}  # fmt: skip
_LS_KE = {
    "dh2": "modp1024", "dh5": "modp1536", "dh14": "modp2048", "dh15": "modp3072",
    "dh16": "modp4096", "dh17": "modp6144", "dh18": "modp8192", "dh19": "ecp256",
    "dh20": "ecp384", "dh21": "ecp521", "dh22": "modp1024s160", "dh23": "modp2048s224",
    "dh24": "modp2048s256", "dh31": "curve25519", "dh32": "curve448",
    "ecp_256": "ecp256", "ecp_384": "ecp384", "ecp_521": "ecp521",
    "ecp256": "ecp256", "ecp384": "ecp384", "ecp521": "ecp521",
    "curve25519": "curve25519", "x25519": "curve25519", "curve448": "curve448",
    **{f"modp{bits}": f"modp{bits}" for bits in (1024, 1536, 2048, 3072, 4096, 6144, 8192)},
}  # fmt: skip
_LS_NONE = frozenset({"none", "null"})
_LS_KE_NONE = frozenset({"none", "dh0"})


def _looks_libreswan(item: str) -> bool:
    if ";" in item or "+" in item:
        return True
    return any(
        t not in STRONGSWAN_KEYWORDS and ("_" in t or t in _LS_KE or t in _LS_KEYLESS_CIPHERS)
        for t in item.split("-")
    )


def _libreswan_cipher(name: str, proto: str) -> tuple[str, bool]:
    """(strongSwan cipher, is AEAD) for one Libreswan encryption name."""
    if name in _LS_KEYLESS_CIPHERS:
        translated = _LS_KEYLESS_CIPHERS[name]
        return translated, translated.startswith("chacha")
    if name in _LS_NONE or name.startswith(("null", "aes_gmac")):
        raise _Refused(
            f"{proto} algorithm {quoted(name)} has no encryption: tunnel traffic would cross "
            "the wire readable"
        )
    match = _LS_CIPHER.fullmatch(name)
    if not match:
        raise _Refused(f"Libreswan {proto} algorithm {quoted(name)} has no strongSwan equivalent")
    family, icv, bits = match.group("family"), match.group("icv"), match.group("bits")
    if bits is None:
        raise _Refused(
            f"give the key length of {quoted(name)} (e.g. {family}256): Libreswan and strongSwan "
            "differ on the default"
        )
    if family in ("aes_gcm", "aes_ccm"):
        return f"aes{bits}{family[4:]}{_LS_ICV[icv]}", True
    if icv is not None:
        raise _Refused(f"Libreswan {proto} algorithm {quoted(name)} has no strongSwan equivalent")
    base = "camellia" if family.startswith("camellia") else "aes"
    return f"{base}{bits}{'ctr' if family == 'aes_ctr' else ''}", False


def _libreswan_proposal(item: str, proto: str) -> str:
    """Translate one Libreswan proposal, e.g. aes_gcm256-sha2_256;dh19 -> aes256gcm16-prf..."""
    if "=" in item:
        raise _Refused(
            f"Libreswan's typed form (encrypt=, prf=, ke=...) in {quoted(item)} is not "
            "translated; use strongSwan syntax"
        )
    groups = re.split(r"[-;]", item)
    if any(not g for g in groups):
        raise _Refused(f"empty algorithm in {proto} proposal {quoted(item)}")
    names = [g.split("+") for g in groups]
    if any(not n for group in names for n in group):
        raise _Refused(f"empty algorithm in {proto} proposal {quoted(item)}")

    ciphers = [_libreswan_cipher(n, proto) for n in names[0]]
    aead = any(is_aead for _, is_aead in ciphers)
    # After the ciphers, Libreswan reads the optional groups in this order.
    order = ["prf", "integ", "ke"] if proto == "IKE" else ["integ", "ke"]
    found: dict[str, list[str]] = {}
    for group in names[1:]:
        kind = next((k for k in order if _libreswan_kind_fits(k, group)), None)
        if kind is None:
            bad = next(n for n in group if n not in _LS_HASH and n not in _LS_KE)
            raise _Refused(
                f"Libreswan {proto} algorithm {quoted(bad)} has no strongSwan equivalent "
                f"(or is out of order) in {quoted(item)}"
            )
        found[kind] = group
        order = order[order.index(kind) + 1 :]

    tokens = [cipher for cipher, _ in ciphers]
    integ = [_LS_HASH[n] for n in found.get("integ", []) if n not in _LS_NONE]
    prf = [_LS_HASH[n] for n in found.get("prf", [])]
    if aead and integ:
        raise _Refused(
            f"{proto} proposal {quoted(item)}: an AEAD cipher has its own integrity check; "
            "drop the integrity algorithm (or use none)"
        )
    if proto == "IKE":
        if aead:
            tokens += [f"prf{p}" for p in prf]
        elif integ:
            tokens += [f"prf{p}" for p in prf] + integ
        else:
            # Libreswan uses one hash as both PRF and integrity; charon derives the PRF.
            tokens += prf
    else:
        tokens += integ
    ke = [_LS_KE[n] for n in found.get("ke", []) if n not in _LS_KE_NONE]
    if proto == "IKE" and not ke:
        raise _Refused(
            f"IKE proposal {quoted(item)} names no key exchange group; Libreswan would fill in "
            "its own defaults, strongSwan needs them named (e.g. ...;dh19 or ...-modp2048)"
        )
    tokens += ke
    tokens = list(dict.fromkeys(tokens))
    _check_strongswan(tokens, proto, item)
    return "-".join(tokens)


def _libreswan_kind_fits(kind: str, group: list[str]) -> bool:
    if kind == "prf":
        return all(n in _LS_HASH for n in group)
    if kind == "integ":
        return all(n in _LS_HASH or n in _LS_NONE for n in group)
    return all(n in _LS_KE or n in _LS_KE_NONE for n in group)


@dataclass(frozen=True)
class _Proposals:
    items: tuple[str, ...]
    libreswan: bool  # some item was Libreswan syntax


def _proposals(value: str, proto: str, *, legacy: bool) -> _Proposals:
    text = value
    strict = not legacy
    if legacy and text.endswith("!"):
        strict = True
        text = text[:-1].rstrip()
    if "!" in text:
        raise _Refused(
            "'!' (strict) belongs at the end of ipsec.conf's ike=/esp=; "
            "swanctl proposal lists are always strict"
            if not legacy
            else "'!' may only end the list"
        )
    parts = [part.strip().lower() for part in text.split(",")]
    if len(parts) > MAX_PROPOSALS:
        raise _Refused(f"more than {MAX_PROPOSALS} proposals")
    items: list[str] = []
    libreswan = False
    for part in parts:
        if not part:
            raise _Refused("empty proposal in the comma-separated list")
        if part == "default":
            items.append(part)
            continue
        try:
            items.append(_strongswan_proposal(part, proto))
            continue
        except _Refused as refused:
            if not _looks_libreswan(part):
                raise
            if not legacy:
                raise _Refused(
                    f"{refused.reason}; Libreswan syntax is translated only in "
                    f"ipsec_{'ike' if proto == 'IKE' else 'esp'}"
                ) from None
        items.append(_libreswan_proposal(part, proto))
        libreswan = True
    if legacy and not strict and not libreswan:
        # ipsec.conf without '!' appends charon's default proposals (stroke_config.c).
        items.append("default")
    return _Proposals(tuple(dict.fromkeys(items)), libreswan)


# ---------------------------------------------------------------------------------------------
# The table.

Out = tuple[tuple[Level, str, VICIValue], ...]

SS = "strongSwan ipsec.conf"
LS = "Libreswan"
SWANCTL = "swanctl"


@dataclass(frozen=True)
class Option:
    """One accepted OVSDB spelling family and how its value becomes VICI keys.

    Rows without `slot` translate on their own (`parse` returns (level, key, value) triples);
    rows with a `slot` feed a handler that needs several options together (`parse` returns the
    parsed value).
    """

    spellings: tuple[str, ...]
    origin: str
    target: str
    values: str
    notes: str
    parse: Callable[[str], Any]
    slot: str | None = None


def _simple(level: Level, key: str, convert: Callable[[str], VICIValue]) -> Callable[[str], Out]:
    def parse(value: str) -> Out:
        return ((level, key, convert(value)),)

    return parse


def _noop(accepted: dict[str, str | None], what: str) -> Callable[[str], Out]:
    def parse(value: str) -> Out:
        _choice(value, accepted, what)
        return ()

    return parse


def _time(maximum: int, minimum: int = 1) -> Callable[[str], str]:
    return lambda value: _seconds(_duration(value, maximum=maximum, minimum=minimum))


_LIFE = _time(MAX_LIFETIME, MIN_LIFETIME)
_SPREAD = _time(MAX_LIFETIME, 0)
_DPD = _time(MAX_DPD)


def _keyingtries(value: str) -> str:
    if value.lower() == "%forever":
        return "0"
    return str(_integer(value, 0, MAX_KEYINGTRIES))


_ACTION_SS = {"none": "none", "clear": "clear", "hold": "trap", "restart": "restart"}
_DPD_ACTION = {"clear": "clear", "none": "clear", "trap": "trap", "route": "trap",
               "restart": "restart", "start": "restart"}  # fmt: skip
_CLOSE_SS = {"none": "none", "clear": "none", "hold": "trap", "restart": "start"}
_CLOSE = {"none": "none", "clear": "none", "trap": "trap", "route": "trap", "start": "start",
          "restart": "start"}  # fmt: skip
_IKEV1 = "IKEv1 is not supported (deprecated by RFC 9395); this daemon always speaks IKEv2"

OPTIONS: tuple[Option, ...] = (
    # --- NAT-T / UDP encapsulation --------------------------------------------------------
    Option(
        ("forceencaps",),
        SS,
        "conn `encap`",
        "`yes`/`no` → `yes`/`no`",
        "OVN copies `ipsec_forceencaps=yes` (its strongSwan spelling) onto every tunnel: "
        "charon fakes NAT detection so ESP travels in UDP/4500 where clouds drop ESP.",
        _simple("conn", "encap", _yesno),
    ),
    Option(
        ("encapsulation",),
        LS,
        "conn `encap`",
        "`yes` → `yes`; `no`, `auto` → `no`",
        "OVN's Libreswan spelling (it only ever sends `yes`). charon always encapsulates "
        "when it detects a NAT, so Libreswan's `no` (never encapsulate) acts like `auto` "
        "behind a NAT.",
        _simple(
            "conn",
            "encap",
            lambda v: _choice(
                v, {"yes": "yes", "true": "yes", "no": "no", "false": "no", "auto": "no"}, ""
            ),
        ),
    ),
    Option(("encap",), SWANCTL, "conn `encap`", "`yes`/`no`", "", _simple("conn", "encap", _yesno)),
    # --- Proposals --------------------------------------------------------------------------
    Option(
        ("ike",),
        f"{SS} / {LS}",
        "conn `proposals`",
        "comma-separated list; strongSwan syntax kept, a trailing `!` makes it strict, "
        "otherwise `default` is appended (as ipsec.conf does); Libreswan syntax translated",
        "See *Proposals* below. Every proposal is checked as charon would; null/GMAC-only "
        "encryption and `modpnull` are refused.",
        lambda v: _proposals(v, "IKE", legacy=True),
        slot="ike",
    ),
    Option(
        ("proposals",),
        SWANCTL,
        "conn `proposals`",
        "comma-separated strongSwan proposals (and `default`), always strict",
        "",
        lambda v: _proposals(v, "IKE", legacy=False),
        slot="ike",
    ),
    Option(
        ("esp", "phase2alg"),
        f"{SS} / {LS}",
        "child `esp_proposals`",
        "as `ike`; a Libreswan proposal without a DH group gets the IKE proposals' groups "
        "(Libreswan's pfs=yes rekeys with the IKE group) unless `pfs=no`",
        "The daemon's default is `aes256gcm16-modp2048` (upstream's).",
        lambda v: _proposals(v, "ESP", legacy=True),
        slot="esp",
    ),
    Option(
        ("esp_proposals",),
        SWANCTL,
        "child `esp_proposals`",
        "comma-separated strongSwan proposals (and `default`), always strict",
        "",
        lambda v: _proposals(v, "ESP", legacy=False),
        slot="esp",
    ),
    Option(
        ("pfs",),
        LS,
        "child `esp_proposals` (checked or derived)",
        "`yes`: every ESP proposal must carry a DH group; `no`: none may (the daemon's "
        "default ESP proposal loses its group)",
        "strongSwan has no PFS switch: a DH group in an ESP proposal is PFS for rekeys.",
        _bool,
        slot="pfs",
    ),
    Option(
        ("phase2",),
        LS,
        "—",
        "`esp` accepted (no-op)",
        "`ah` is refused: AH authenticates but does not encrypt.",
        _noop({"esp": "esp", "ah": None}, "AH authenticates but does not encrypt"),
    ),
    # --- IKE version, mode, start ------------------------------------------------------------
    Option(
        ("keyexchange",),
        f"{SS} / {LS}",
        "conn `version`",
        "`ikev2` accepted (no-op); `ike`, `ikev1` refused",
        "The daemon always uses IKEv2.",
        _noop({"ikev2": "2", "ike": None, "ikev1": None}, "{value} would let IKEv1 in; " + _IKEV1),
    ),
    Option(
        ("ikev2",),
        LS,
        "conn `version`",
        "`yes`, `insist`, `propose` accepted (no-op); `no`, `never`, `permit` refused",
        "Libreswan maps yes/propose/insist to IKEv2, no/permit to IKEv1.",
        _noop(
            {"yes": "2", "insist": "2", "propose": "2", "no": None, "never": None, "permit": None},
            _IKEV1,
        ),
    ),
    Option(
        ("version",),
        SWANCTL,
        "conn `version`",
        "`2` accepted (no-op); `0`, `1` refused",
        "",
        _noop({"2": "2", "0": None, "1": None}, _IKEV1),
    ),
    Option(
        ("type", "mode"),
        f"{SS} / {SWANCTL}",
        "child `mode`",
        "`transport` accepted (no-op); anything else refused",
        "OVS tunnels are host-to-host transport mode.",
        _noop(
            {
                "transport": "transport",
                "tunnel": None,
                "beet": None,
                "pass": None,
                "passthrough": None,
                "drop": None,
                "reject": None,
                "transport_proxy": None,
            },
            "OVS tunnels are host-to-host transport mode; {value} would change what is "
            "encrypted (drop/pass policies are the daemon's own)",
        ),
    ),
    Option(
        ("auto", "start_action"),
        f"{SS} / {SWANCTL}",
        "child `start_action`",
        "`route` / `trap` accepted (no-op); anything else refused",
        "Trap policies from load time are what keep plaintext from leaving before the SA is up.",
        _noop(
            {
                "route": "trap",
                "trap": "trap",
                "add": None,
                "start": None,
                "ignore": None,
                "none": None,
                "trap|start": None,
                "start|trap": None,
            },
            "the daemon installs trap policies when a tunnel is loaded so that no packet "
            "leaves in plaintext before the SA is up; {value} would change that",
        ),
    ),
    # --- Dead peer detection ----------------------------------------------------------------
    Option(
        ("dpddelay", "dpd-delay"),
        f"{SS} / {LS} / OVN",
        "conn `dpd_delay`",
        "duration → seconds (`30s`, `1m`, `30`); `0` turns DPD off",
        "",
        _DPD,
        slot="dpd_delay",
    ),
    Option(
        ("dpd_delay",),
        SWANCTL,
        "conn `dpd_delay`",
        "duration → seconds",
        "",
        _DPD,
        slot="dpd_delay",
    ),
    Option(
        ("dpdtimeout", "dpd-timeout", "ikev1-dpdtimeout", "dpd_timeout"),
        f"{SS} / {LS} / OVN / {SWANCTL}",
        "conn `dpd_timeout`",
        "duration → seconds",
        "Passed to charon, which (like Libreswan) uses it for IKEv1 only: under IKEv2 a "
        "peer is declared dead when the DPD exchange's retransmissions run out "
        "(charon's retransmit_* settings, daemon-wide). Upstream behaved the same; OVN's "
        "documented example sets `ipsec_dpd-timeout=120s` on every tunnel.",
        _simple("conn", "dpd_timeout", _DPD),
    ),
    Option(
        ("dpdaction",),
        f"{SS} / {LS}",
        "child `dpd_action` (and conn `dpd_delay`)",
        "`none` → conn `dpd_delay=0s` + `clear`; `clear` → `clear`; `hold` → `trap`; "
        "`restart` → `restart`",
        "As in ipsec.conf, an action other than `none` with no DPD delay option set "
        "enables DPD every 30s.",
        lambda v: _choice(v, _ACTION_SS, ""),
        slot="dpdaction",
    ),
    Option(
        ("dpd_action",),
        SWANCTL,
        "child `dpd_action`",
        "`clear`/`none` → `clear`; `trap`/`route` → `trap`; `restart`/`start` → `restart`",
        "",
        _simple("child", "dpd_action", lambda v: _choice(v, _DPD_ACTION, "")),
    ),
    Option(
        ("closeaction",),
        SS,
        "child `close_action`",
        "`none`/`clear` → `none`; `hold` → `trap`; `restart` → `start`",
        "The trap policies stay installed whatever the close action.",
        _simple("child", "close_action", lambda v: _choice(v, _CLOSE_SS, "")),
    ),
    Option(
        ("close_action",),
        SWANCTL,
        "child `close_action`",
        "`none`/`clear` → `none`; `trap`/`route` → `trap`; `start`/`restart` → `start`",
        "",
        _simple("child", "close_action", lambda v: _choice(v, _CLOSE, "")),
    ),
    # --- ipsec.conf lifetimes (derived together, as strongSwan's stroke did) ----------------
    Option(
        ("ikelifetime",),
        f"{SS} / {LS}",
        "conn `rekey_time` (`reauth_time` with `reauth=yes`), `over_time`, `rand_time`",
        "rekey_time = ikelifetime − margin, over_time = margin, rand_time = margin × fuzz",
        "See *Lifetimes* below. Rekeys without reauthentication unless `reauth=yes`.",
        lambda v: _duration(v, maximum=MAX_LIFETIME, minimum=MIN_LIFETIME),
        slot="ikelifetime",
    ),
    Option(
        ("lifetime", "keylife", "salifetime", "ipsec-lifetime"),
        f"{SS} / {LS} / OVN",
        "child `life_time`, `rekey_time`, `rand_time`",
        "life_time = lifetime, rekey_time = lifetime − margin, rand_time = margin × fuzz",
        "",
        lambda v: _duration(v, maximum=MAX_LIFETIME, minimum=MIN_LIFETIME),
        slot="lifetime",
    ),
    Option(
        ("rekeymargin", "margintime"),
        f"{SS} / {LS}",
        "(lifetimes, IKE and CHILD)",
        "duration; default 9m",
        "",
        lambda v: _duration(v, maximum=MAX_LIFETIME, minimum=0),
        slot="margin",
    ),
    Option(
        ("rekeyfuzz",),
        f"{SS} / {LS}",
        "(lifetimes, IKE and CHILD)",
        "percentage (`100%`); default 100%",
        "",
        _percent,
        slot="fuzz",
    ),
    Option(
        ("reauth",),
        f"{SS} / {LS}",
        "conn `reauth_time`",
        "`yes`: ikelifetime drives `reauth_time` (and `rekey_time=0s`); `no` → `reauth_time=0s`",
        "Unlike ipsec.conf (default yes) the daemon does not reauthenticate unless asked: "
        "strongSwan 5.9 reauthenticates break-before-make.",
        _bool,
        slot="reauth",
    ),
    Option(
        ("rekey",),
        f"{SS} / {LS}",
        "—",
        "`yes` accepted (no-op); `no` refused",
        "With rekey=no charon would keep SAs until the peer renews them; set longer "
        "lifetimes instead.",
        _bool,
        slot="rekey",
    ),
    Option(
        ("lifebytes", "lifepackets"),
        SS,
        "child `life_bytes`/`rekey_bytes`/`rand_bytes` (`…_packets`)",
        "as lifetime: life, life − margin, margin × fuzz",
        "",
        _volume,
        slot="life_volume",
    ),
    Option(
        ("marginbytes", "marginpackets"),
        SS,
        "(volume lifetimes)",
        "number; needs the matching lifebytes/lifepackets",
        "",
        _volume,
        slot="margin_volume",
    ),
    # --- swanctl lifetimes ------------------------------------------------------------------
    Option(
        ("rekey_time",),
        SWANCTL,
        "conn `rekey_time`",
        "duration → seconds",
        "The IKE_SA's (swanctl's connection-level key); for CHILD_SAs use `child_rekey_time`.",
        _simple("conn", "rekey_time", _LIFE),
    ),
    Option(
        ("reauth_time",),
        SWANCTL,
        "conn `reauth_time`",
        "duration → seconds",
        "",
        _simple("conn", "reauth_time", _LIFE),
    ),
    Option(
        ("over_time",),
        SWANCTL,
        "conn `over_time`",
        "duration → seconds",
        "",
        _simple("conn", "over_time", _SPREAD),
    ),
    Option(
        ("rand_time",),
        SWANCTL,
        "conn `rand_time`",
        "duration → seconds",
        "IKE-level; for CHILD_SAs use `child_rand_time`.",
        _simple("conn", "rand_time", _SPREAD),
    ),
    Option(
        ("child_rekey_time",),
        "ovs-ipsec",
        "child `rekey_time`",
        "duration → seconds",
        "swanctl uses `rekey_time`/`rand_time` at both levels; the `child_` names select "
        "the CHILD_SA's.",
        _simple("child", "rekey_time", _LIFE),
    ),
    Option(
        ("life_time",),
        SWANCTL,
        "child `life_time`",
        "duration → seconds",
        "",
        _simple("child", "life_time", _LIFE),
    ),
    Option(
        ("child_rand_time",),
        "ovs-ipsec",
        "child `rand_time`",
        "duration → seconds",
        "",
        _simple("child", "rand_time", _SPREAD),
    ),
    *(
        Option(
            (key,),
            SWANCTL,
            f"child `{key}`",
            "number (k/m/g = 1024-based) → number",
            "",
            _simple("child", key, lambda v: str(_volume(v))),
        )
        for key in (
            "rekey_bytes",
            "life_bytes",
            "rand_bytes",
            "rekey_packets",
            "life_packets",
            "rand_packets",
        )
    ),
    # --- Everything else --------------------------------------------------------------------
    Option(
        ("replay_window", "replay-window"),
        f"{SS} / {LS} / OVN / {SWANCTL}",
        "child `replay_window`",
        f"0–{MAX_REPLAY_WINDOW} packets",
        "0 turns replay protection off. The Linux replay bitmap holds at most "
        f"{MAX_REPLAY_WINDOW} packets.",
        _simple("child", "replay_window", lambda v: str(_integer(v, 0, MAX_REPLAY_WINDOW))),
    ),
    Option(
        ("keyingtries",),
        f"{SS} / {SWANCTL}",
        "conn `keyingtries`",
        f"`%forever` → `0`; 0–{MAX_KEYINGTRIES}",
        "The daemon's default is 0 (for ever); traffic re-triggers the trap regardless.",
        _simple("conn", "keyingtries", _keyingtries),
    ),
    Option(
        ("mobike",),
        f"{SS} / {LS} / {SWANCTL}",
        "conn `mobike`",
        "`yes`/`no`",
        "The daemon's default is `no` (hosts do not move).",
        _simple("conn", "mobike", _yesno),
    ),
    Option(
        ("fragmentation",),
        f"{SS} / {LS} / {SWANCTL}",
        "conn `fragmentation`",
        "`yes`, `no`, `accept`, `force`",
        "",
        _simple(
            "conn",
            "fragmentation",
            lambda v: _choice(
                v, {"yes": "yes", "no": "no", "accept": "accept", "force": "force"}, ""
            ),
        ),
    ),
    Option(
        ("hw_offload",),
        SWANCTL,
        "child `hw_offload`",
        "`yes`, `no`, `auto`",
        "`yes` fails the SA if the NIC cannot offload.",
        _simple(
            "child",
            "hw_offload",
            lambda v: _choice(v, {"yes": "yes", "no": "no", "auto": "auto"}, ""),
        ),
    ),
    Option(
        ("nic-offload",),
        LS,
        "child `hw_offload`",
        "`yes`, `crypto` → `yes`; `no` → `no`; `auto` → `auto`; `packet` refused",
        "strongSwan 5.9 offers crypto offload only.",
        _simple(
            "child",
            "hw_offload",
            lambda v: _choice(
                v,
                {"yes": "yes", "crypto": "yes", "no": "no", "auto": "auto", "packet": None},
                "packet offload needs strongSwan 6; 5.9 offers crypto offload only (yes)",
            ),
        ),
    ),
    Option(
        ("sha256_96", "sha2-truncbug"),
        f"{SS} / {LS} / {SWANCTL}",
        "child `sha256_96`",
        "`yes`/`no`",
        "Only for peers with the old 96-bit HMAC-SHA256 truncation.",
        _simple("child", "sha256_96", _yesno),
    ),
)


# Keys refused outright, grouped by reason. Any key starting with left/right is refused too.
_LEFT_RIGHT_REASON = (
    "per-side ipsec.conf settings (left*/right*) come from the tunnel itself (local_ip, "
    "remote_ip, psk, remote_cert, remote_name and the global PKI) and cannot be overridden"
)
_REJECTED_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("traffic selectors are derived from the tunnel type and dst_port; other selectors would "
     "leave tunnel traffic in plaintext or capture unrelated traffic",
     ("local_ts", "remote_ts", "subnet", "subnets", "protoport", "narrowing", "hostaccess")),
    ("the IKE endpoints are options:local_ip and options:remote_ip",
     ("local_addrs", "remote_addrs", "host", "hostaddrfamily", "clientaddrfamily")),
    ("IKE runs on ports 500/4500 on both sides so peers interoperate",
     ("local_port", "remote_port", "ikeport", "enable-tcp", "tcp-remoteport")),
    ("authentication comes from options:psk / remote_cert / remote_name and the global PKI "
     "(Open_vSwitch other_config)",
     ("auth", "authby", "id", "certs", "cert", "cacerts", "ca", "pubkeys", "pubkey",
      "rsasigkey", "ecdsakey", "eddsakey", "ckaid", "eap_id", "aaa_id", "xauth_id", "xauth",
      "xauthby", "ca_id", "cert_policy", "revocation", "groups", "psk", "secret", "ppk",
      "ppk_id", "ppk_required", "ppk-ids", "send_cert", "send_certreq", "sendcert", "sendca",
      "local", "remote")),
    ("an updown script would run an arbitrary command as root on every SA event",
     ("updown", "updown-config", "firewall")),
    ("XFRM interface IDs (and VTI/ipsec interfaces) would make the policies stop matching the "
     "tunnel's ordinary routed traffic, which would then leave in plaintext",
     ("if_id_in", "if_id_out", "ipsec-interface", "vti-interface", "vti-routing", "vti-shared",
      "interface", "interface-ip")),
    ("marks belong to the daemon's drop policies (Open_vSwitch other_config:ipsec_skb_mark); "
     "a mark on the tunnel's policies or SAs would stop them matching its traffic",
     ("mark", "mark_in", "mark_out", "mark_in_sa", "set_mark_in", "set_mark_out", "mark-in",
      "mark-out")),
    ("policy priorities are fixed so the daemon's drop policies stay below the IPsec and trap "
     "policies", ("priority",)),
    ("charon must assign reqids: a shared reqid would mix the SAs of different tunnels",
     ("reqid",)),
    ("without IPsec policies nothing would be encrypted",
     ("policies", "installpolicy", "policies_fwd_out")),
    ("AH authenticates but does not encrypt", ("ah", "ah_proposals")),
    ("IKEv1 is not supported (deprecated by RFC 9395); this daemon always speaks IKEv2",
     ("aggressive", "aggrmode")),
    ("fixed by the daemon so that a rebooted peer's INITIAL_CONTACT replaces its stale SAs",
     ("unique", "uniqueids")),
    ("a charon-wide setting (the daemon's strongswan.d snippet), not a per-connection one",
     ("retransmit-timeout", "retransmit-interval", "retransmit_tries", "retransmit_timeout",
      "retransmit_base", "make_before_break", "xfrm_acq_expires", "charondebug")),
    ("strongSwan negotiates ESN through the ESP proposals: add esn or noesn to "
     "ipsec_esp_proposals (e.g. aes256gcm16-modp2048-esn)", ("esn",)),
    ("Libreswan derives its soft limit itself; set ipsec_life_bytes/ipsec_rekey_bytes "
     "(or _packets) explicitly", ("ipsec-max-bytes", "ipsec-max-packets")),
    ("a VICI section is built by the daemon, not an option", ("children",)),
    ("a global setting: set it in Open_vSwitch other_config, not on the interface",
     ("skb_mark", "fail_open")),
)  # fmt: skip
REJECTED: dict[str, str] = {name: reason for reason, names in _REJECTED_GROUPS for name in names}

_BY_SPELLING: dict[str, Option] = {s: option for option in OPTIONS for s in option.spellings}


def _lookup(key: str) -> Option:
    name = key.lower()
    if name in _BY_SPELLING:
        return _BY_SPELLING[name]
    if name in REJECTED:
        raise _Refused(REJECTED[name])
    if name.startswith(("left", "right")):
        raise _Refused(_LEFT_RIGHT_REASON)
    if not name:
        raise _Refused("empty option name after the ipsec_ prefix")
    guess = difflib.get_close_matches(name, _BY_SPELLING, n=1, cutoff=0.8)
    hint = f" (did you mean {PREFIX}{guess[0]}?)" if guess else ""
    raise _Refused(f"not an option this daemon knows{hint}; see docs/ipsec-options.md")


def _clean(value: object) -> str:
    if not isinstance(value, str):
        raise _Refused("value is not a string")
    if len(value) > MAX_VALUE_LENGTH:
        raise _Refused(f"value is longer than {MAX_VALUE_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _Refused("value contains control characters (newline, tab, ...)")
    if not value.isascii():
        raise _Refused("value must be plain ASCII")
    value = value.strip()
    if not value:
        raise _Refused("empty value")
    return value


# ---------------------------------------------------------------------------------------------
# Translation.


@dataclass(frozen=True)
class _Value:
    level: Level
    key: str
    value: VICIValue
    sources: tuple[str, ...]


Inputs = dict[str, list[tuple[str, Any]]]  # slot -> [(OVSDB key, parsed value)]


def translate(
    options: Iterable[tuple[str, str]], *, use_default_crypto: bool = False
) -> tuple[IkeSettings | None, tuple[Invalid, ...]]:
    """A tunnel's ipsec_* options (prefix stripped, as in `Tunnel.ike_options`) -> settings.

    Returns (settings, ()) or (None, reasons); each reason names the OVSDB key as written
    (`ipsec_<key>`). `use_default_crypto` matters only for the pfs checks and for Libreswan
    ESP proposals that need the IKE groups. Never raises.
    """
    try:
        return _translate(tuple(options), use_default_crypto)
    except Exception as exc:  # a bug must cost one tunnel, not the daemon
        reason = f"internal error while translating ({type(exc).__name__}); please report"
        return None, (Invalid(f"{PREFIX}*", reason),)


def _translate(
    options: tuple[tuple[str, str], ...], use_default_crypto: bool
) -> tuple[IkeSettings | None, tuple[Invalid, ...]]:
    errors: list[Invalid] = []
    values: list[_Value] = []
    inputs: Inputs = {}
    seen: dict[str, str] = {}
    for key, raw in options:
        name = f"{PREFIX}{key}"
        if name in seen:
            if seen[name] != raw:
                errors.append(Invalid(name, "given twice with different values"))
            continue
        seen[name] = raw
        try:
            option = _lookup(key)
            parsed = option.parse(_clean(raw))
        except _Refused as refused:
            errors.append(Invalid(name, refused.reason))
            continue
        if option.slot is None:
            values.extend(_Value(level, k, v, (name,)) for level, k, v in parsed)
        else:
            inputs.setdefault(option.slot, []).append((name, parsed))

    _proposal_values(inputs, use_default_crypto, values, errors)
    _dpd_values(inputs, values)
    _lifetime_values(inputs, values, errors)
    merged = _merge(values, errors)
    if not errors:
        _cross_check(merged, errors)
    if errors:
        return None, tuple(_dedupe(errors))
    if not merged:
        return NO_SETTINGS, ()  # one object for the thousands of tunnels without options
    conn = tuple(sorted((k, v.value) for (level, k), v in merged.items() if level == "conn"))
    child = tuple(sorted((k, v.value) for (level, k), v in merged.items() if level == "child"))
    sources = tuple(sorted((f"{level}.{k}", v.sources) for (level, k), v in merged.items()))
    return IkeSettings(conn=conn, child=child, sources=sources), ()


def _dedupe(errors: list[Invalid]) -> list[Invalid]:
    return list(dict.fromkeys(errors))


def _single(inputs: Inputs, slot: str, errors: list[Invalid]) -> tuple[Any, tuple[str, ...]]:
    """The one value a slot was given (None if absent); spellings that disagree are errors."""
    given = inputs.get(slot, [])
    if not given:
        return None, ()
    keys = tuple(name for name, _ in given)
    if len({repr(v) for _, v in given}) > 1:
        for name, _ in given:
            others = ", ".join(k for k in keys if k != name)
            errors.append(Invalid(name, f"conflicts with {others}"))
    return given[0][1], keys


_NO_IKE_GROUP = (
    "Libreswan rekeys ESP with the IKE SA's DH group when esp= names none, but the IKE "
    "proposals in force (charon's defaults) name none explicitly: add one "
    "(e.g. aes_gcm256;dh19) or set ipsec_pfs=no"
)


def _proposal_values(
    inputs: Inputs, use_default_crypto: bool, values: list[_Value], errors: list[Invalid]
) -> None:
    ike = inputs.get("ike", [])
    for name, parsed in ike:
        values.append(_Value("conn", "proposals", parsed.items, (name,)))

    pfs, pfs_keys = _single(inputs, "pfs", errors)
    # Libreswan's pfs=yes (its default) rekeys ESP with the IKE SA's group when esp= names none;
    # the nearest strongSwan equivalent offers the groups of the IKE proposals in force.
    if ike:
        ike_groups = _ke_groups(ike[0][1].items)
    else:
        ike_groups = () if use_default_crypto else _ke_groups(IKE_PROPOSALS)
    esp_lists: list[tuple[str, tuple[str, ...]]] = []
    for name, parsed in inputs.get("esp", []):
        items = list(parsed.items)
        if parsed.libreswan and pfs is not False:
            missing = [i for i, item in enumerate(items) if item != "default" and not _has_ke(item)]
            if missing and not ike_groups:
                errors.append(Invalid(name, _NO_IKE_GROUP))
                continue
            for i in missing:
                items[i] = "-".join([items[i], *ike_groups])
        esp_lists.append((name, tuple(items)))
        values.append(_Value("child", "esp_proposals", tuple(items), (name,)))

    if pfs is None:
        return
    pfs_name = pfs_keys[0]
    if esp_lists:
        esp_name, effective = esp_lists[0]
        reason = ""
        bare = [i for i in effective if i != "default" and not _has_ke(i)]
        if pfs and "default" in effective:
            reason = (
                "pfs=yes but the ESP list is not strict: charon's default ESP proposals carry "
                "no DH group (end the list with ! or drop 'default')"
            )
        elif pfs and bare:
            reason = f"pfs=yes but ESP proposal {quoted(bare[0])} has no DH group"
        elif not pfs and any(_has_ke(i) for i in effective):
            reason = "pfs=no but an ESP proposal names a DH group (which means PFS)"
        if reason:
            errors.append(Invalid(pfs_name, f"conflicts with {esp_name}: {reason}"))
            errors.append(Invalid(esp_name, f"conflicts with {pfs_name}: {reason}"))
    elif use_default_crypto:
        if pfs:
            errors.append(
                Invalid(
                    pfs_name,
                    (
                        "charon's default ESP proposals (--use-default-crypto) carry no DH group; "
                        "name ESP proposals with one in ipsec_esp"
                    ),
                )
            )
    elif not pfs:
        stripped = tuple(dict.fromkeys(_without_ke(i) for i in ESP_PROPOSALS))
        values.append(_Value("child", "esp_proposals", stripped, pfs_keys))


def _dpd_values(inputs: Inputs, values: list[_Value]) -> None:
    delays = inputs.get("dpd_delay", [])
    for name, delay in delays:
        values.append(_Value("conn", "dpd_delay", delay, (name,)))
    for name, action in inputs.get("dpdaction", []):
        if action == "none":  # ipsec.conf: dpdaction=none turns DPD off altogether
            values.append(_Value("conn", "dpd_delay", "0s", (name,)))
            values.append(_Value("child", "dpd_action", "clear", (name,)))
            continue
        values.append(_Value("child", "dpd_action", action, (name,)))
        if not delays:
            values.append(_Value("conn", "dpd_delay", _seconds(IPSEC_CONF_DPDDELAY), (name,)))


def _lifetime_values(inputs: Inputs, values: list[_Value], errors: list[Invalid]) -> None:
    ikelife, ikelife_keys = _single(inputs, "ikelifetime", errors)
    life, life_keys = _single(inputs, "lifetime", errors)
    margin, margin_keys = _single(inputs, "margin", errors)
    fuzz, fuzz_keys = _single(inputs, "fuzz", errors)
    reauth, reauth_keys = _single(inputs, "reauth", errors)
    rekey, rekey_keys = _single(inputs, "rekey", errors)
    if rekey is False:
        errors.append(
            Invalid(
                rekey_keys[0],
                (
                    "rekey=no would keep SAs until the peer renews them (and ESP without ESN stops "
                    "after 2^32 packets); set longer lifetimes (ipsec_lifetime, ipsec_ikelifetime) "
                    "instead"
                ),
            )
        )
        return
    m = IPSEC_CONF_MARGIN if margin is None else margin
    f = IPSEC_CONF_FUZZ if fuzz is None else fuzz
    jitter = m * f // 100
    shared = margin_keys + fuzz_keys

    if reauth is False:
        values.append(_Value("conn", "reauth_time", "0s", reauth_keys))
    if ikelife is not None or margin is not None or fuzz is not None or reauth:
        total = IPSEC_CONF_IKELIFETIME if ikelife is None else ikelife
        keys = ikelife_keys + shared + (reauth_keys if reauth else ())
        if _fits(total, m, jitter, "ikelifetime", ikelife is not None, keys, errors):
            renew, other = ("reauth_time", "rekey_time") if reauth else ("rekey_time", None)
            values.append(_Value("conn", renew, _seconds(total - m), keys))
            if other:
                values.append(_Value("conn", other, "0s", keys))
            values.append(_Value("conn", "over_time", _seconds(m), keys))
            values.append(_Value("conn", "rand_time", _seconds(jitter), keys))
    if life is not None or margin is not None or fuzz is not None:
        total = IPSEC_CONF_LIFETIME if life is None else life
        keys = life_keys + shared
        if _fits(total, m, jitter, "lifetime", life is not None, keys, errors):
            values.append(_Value("child", "life_time", _seconds(total), keys))
            values.append(_Value("child", "rekey_time", _seconds(total - m), keys))
            values.append(_Value("child", "rand_time", _seconds(jitter), keys))

    _volume_values(inputs, f, fuzz_keys, values, errors)


def _fits(
    total: int,
    margin: int,
    jitter: int,
    what: str,
    given: bool,
    keys: tuple[str, ...],
    errors: list[Invalid],
) -> bool:
    if margin + jitter < total:
        return True
    default = "" if given else f" (ipsec.conf's default {what})"
    for name in keys:
        reason = (
            f"{what} {_human(total)}{default} must exceed rekeymargin plus its rekeyfuzz "
            f"share ({_human(margin)} + {_human(jitter)}), or the SA would be renewed at once"
        )
        errors.append(Invalid(name, reason))
    return False


def _volume_values(
    inputs: Inputs,
    fuzz: int,
    fuzz_keys: tuple[str, ...],
    values: list[_Value],
    errors: list[Invalid],
) -> None:
    for unit in ("bytes", "packets"):
        life = [(n, v) for n, v in inputs.get("life_volume", []) if n.endswith(unit)]
        margin = [(n, v) for n, v in inputs.get("margin_volume", []) if n.endswith(unit)]
        life_v, life_keys = _single({"x": life}, "x", errors)
        margin_v, margin_keys = _single({"x": margin}, "x", errors)
        if life_v is None:
            for name in margin_keys:
                errors.append(Invalid(name, f"needs ipsec_life{unit} (it is a margin below it)"))
            continue
        m = margin_v or 0
        keys = life_keys + margin_keys + (fuzz_keys if margin_keys else ())
        if life_v and m >= life_v:
            for name in keys:
                errors.append(Invalid(name, f"margin{unit} must be below life{unit}"))
            continue
        values.append(_Value("child", f"life_{unit}", str(life_v), keys))
        values.append(_Value("child", f"rekey_{unit}", str(life_v - m), keys))
        values.append(_Value("child", f"rand_{unit}", str(m * fuzz // 100), keys))


def _merge(values: list[_Value], errors: list[Invalid]) -> dict[tuple[Level, str], _Value]:
    """One value per (level, key); spellings that set it differently are all named."""
    by_target: dict[tuple[Level, str], list[_Value]] = {}
    for value in values:
        by_target.setdefault((value.level, value.key), []).append(value)
    merged: dict[tuple[Level, str], _Value] = {}
    for (level, key), given in by_target.items():
        sources = tuple(sorted({s for v in given for s in v.sources}))
        distinct = {v.value for v in given}
        if len(distinct) > 1:
            shown = " vs ".join(sorted(_shown_value(v) for v in distinct))
            for name in sources:
                others = [s for s in sources if s != name]
                with_whom = f"conflicts with {', '.join(others)}" if others else "conflicts"
                errors.append(Invalid(name, f"{with_whom}: they set {level} {key} to {shown}"))
            continue
        merged[(level, key)] = _Value(level, key, given[0].value, sources)
    return merged


def _shown_value(value: VICIValue) -> str:
    return quoted(",".join(value) if isinstance(value, tuple) else value)


def _cross_check(merged: dict[tuple[Level, str], _Value], errors: list[Invalid]) -> None:
    def seconds(level: Level, key: str) -> int | None:
        value = merged.get((level, key))
        if value is None or not isinstance(value.value, str):
            return None
        return int(value.value[:-1])

    def complain(keys: Sequence[tuple[Level, str]], reason: str) -> None:
        names = dict.fromkeys(s for k in keys for s in merged[k].sources)
        for name in names:
            errors.append(Invalid(name, reason))

    rekey, life = seconds("child", "rekey_time"), seconds("child", "life_time")
    if rekey and life and rekey >= life:
        complain(
            [("child", "rekey_time"), ("child", "life_time")],
            f"CHILD_SA rekey_time {_human(rekey)} must be below life_time {_human(life)}",
        )
    for level in ("conn", "child"):
        rekey, spread = seconds(level, "rekey_time"), seconds(level, "rand_time")
        if rekey and spread is not None and spread >= rekey:
            complain(
                [(level, "rekey_time"), (level, "rand_time")],
                f"{'IKE_SA' if level == 'conn' else 'CHILD_SA'} rand_time "
                f"{_human(spread)} must be below rekey_time {_human(rekey)}",
            )


# ---------------------------------------------------------------------------------------------
# Documentation.


def render_markdown() -> str:
    """The accepted and refused tables, as embedded in docs/ipsec-options.md."""
    lines = [
        "| OVSDB option | Spelling from | swanctl key | Values | Notes |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        names = ", ".join(f"`{PREFIX}{s}`" for s in option.spellings)
        cells = (names, option.origin, option.target, option.values, option.notes)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "| Refused OVSDB option | Why |",
        "|---|---|",
    ]
    for reason, names in _REJECTED_GROUPS:
        shown = ", ".join(f"`{PREFIX}{n}`" for n in names)
        lines.append(f"| {_cell(shown)} | {_cell(reason)} |")
    lines.append(f"| `{PREFIX}left*`, `{PREFIX}right*` | {_cell(_LEFT_RIGHT_REASON)} |")
    lines.append(
        "| any other key | not an option this daemon knows (the reason suggests the nearest "
        "accepted spelling) |"
    )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "—"
