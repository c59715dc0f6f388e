"""The IKE and ESP proposal grammar: strongSwan proposals checked as charon would check them,
Libreswan proposals translated into strongSwan's, and the daemon's own rules (no null or
GMAC-only encryption, no `modpnull`, an integrity algorithm and a key exchange where IKE needs
them).

May import: ike_options.values, parse, stdlib.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ovs_ipsec.core.ike_options.values import Refused
from ovs_ipsec.core.parse import quoted

MAX_PROPOSALS = 32


# strongSwan keywords (5.9.8 proposal_keywords_static.txt, minus NTRU/NewHope which 6.0 dropped).

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
        raise Refused(f"empty algorithm in {proto} proposal {quoted(item)}")
    unknown = [t for t in tokens if t not in STRONGSWAN_KEYWORDS]
    if unknown:
        raise Refused(f"unknown algorithm {quoted(unknown[0])} in {proto} proposal {quoted(item)}")
    _check_strongswan(tokens, proto, item)
    return "-".join(tokens)


def _check_strongswan(tokens: Sequence[str], proto: str, item: str) -> None:
    kinds = [STRONGSWAN_KEYWORDS[t] for t in tokens]
    shown = quoted(item)
    if _KE_INSECURE in kinds:
        raise Refused(f"modpnull in {proto} proposal {shown} is a test group with no security")
    if _NULL in kinds or _GMAC in kinds:
        raise Refused(
            f"{proto} proposal {shown} has no encryption (null or GMAC): tunnel traffic would "
            "cross the wire readable"
        )
    ciphers = [k for k in kinds if k in (_AEAD, _CLASSIC)]
    if not ciphers:
        raise Refused(f"{proto} proposal {shown} names no encryption algorithm")
    aead = _AEAD in ciphers
    if aead and _CLASSIC in ciphers:
        raise Refused(
            f"{proto} proposal {shown} mixes AEAD and classic ciphers; charon refuses that, "
            "separate them with a comma"
        )
    if proto == "IKE":
        if _ESN in kinds:
            raise Refused(f"esn/noesn apply to ESP proposals only, not IKE proposal {shown}")
        if not aead and _INTEG not in kinds:
            raise Refused(f"IKE proposal {shown} needs an integrity algorithm (e.g. sha256)")
        derivable = any(t in _PRF_FROM_INTEG for t in tokens)
        if _PRF not in kinds and not derivable:
            raise Refused(f"IKE proposal {shown} needs a PRF (e.g. prfsha256)")
        if _KE not in kinds:
            raise Refused(
                f"IKE proposal {shown} needs a key exchange method (e.g. modp2048, ecp256, "
                "curve25519)"
            )
    else:
        if _PRF in kinds:
            raise Refused(f"PRFs apply to IKE proposals only, not ESP proposal {shown}")
        if not aead and _INTEG not in kinds:
            raise Refused(
                f"ESP proposal {shown} has a classic cipher without an integrity algorithm: "
                "ESP would be unauthenticated"
            )


def has_ke(item: str) -> bool:
    return any(STRONGSWAN_KEYWORDS.get(t) == _KE for t in item.split("-"))


def ke_groups(items: Iterable[str]) -> tuple[str, ...]:
    groups: list[str] = []
    for item in items:
        for token in item.split("-"):
            if STRONGSWAN_KEYWORDS.get(token) == _KE and token not in groups:
                groups.append(token)
    return tuple(groups)


def without_ke(item: str) -> str:
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
        raise Refused(
            f"{proto} algorithm {quoted(name)} has no encryption: tunnel traffic would cross "
            "the wire readable"
        )
    match = _LS_CIPHER.fullmatch(name)
    if not match:
        raise Refused(f"Libreswan {proto} algorithm {quoted(name)} has no strongSwan equivalent")
    family, icv, bits = match.group("family"), match.group("icv"), match.group("bits")
    if bits is None:
        raise Refused(
            f"give the key length of {quoted(name)} (e.g. {family}256): Libreswan and strongSwan "
            "differ on the default"
        )
    if family in ("aes_gcm", "aes_ccm"):
        return f"aes{bits}{family[4:]}{_LS_ICV[icv]}", True
    if icv is not None:
        raise Refused(f"Libreswan {proto} algorithm {quoted(name)} has no strongSwan equivalent")
    base = "camellia" if family.startswith("camellia") else "aes"
    return f"{base}{bits}{'ctr' if family == 'aes_ctr' else ''}", False


def _libreswan_proposal(item: str, proto: str) -> str:
    """Translate one Libreswan proposal, e.g. aes_gcm256-sha2_256;dh19 -> aes256gcm16-prf..."""
    if "=" in item:
        raise Refused(
            f"Libreswan's typed form (encrypt=, prf=, ke=...) in {quoted(item)} is not "
            "translated; use strongSwan syntax"
        )
    groups = re.split(r"[-;]", item)
    if any(not g for g in groups):
        raise Refused(f"empty algorithm in {proto} proposal {quoted(item)}")
    names = [g.split("+") for g in groups]
    if any(not n for group in names for n in group):
        raise Refused(f"empty algorithm in {proto} proposal {quoted(item)}")

    ciphers = [_libreswan_cipher(n, proto) for n in names[0]]
    aead = any(is_aead for _, is_aead in ciphers)
    # After the ciphers, Libreswan reads the optional groups in this order.
    order = ["prf", "integ", "ke"] if proto == "IKE" else ["integ", "ke"]
    found: dict[str, list[str]] = {}
    for group in names[1:]:
        kind = next((k for k in order if _libreswan_kind_fits(k, group)), None)
        if kind is None:
            bad = next(n for n in group if n not in _LS_HASH and n not in _LS_KE)
            raise Refused(
                f"Libreswan {proto} algorithm {quoted(bad)} has no strongSwan equivalent "
                f"(or is out of order) in {quoted(item)}"
            )
        found[kind] = group
        order = order[order.index(kind) + 1 :]

    tokens = [cipher for cipher, _ in ciphers]
    integ = [_LS_HASH[n] for n in found.get("integ", []) if n not in _LS_NONE]
    prf = [_LS_HASH[n] for n in found.get("prf", [])]
    if aead and integ:
        raise Refused(
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
        raise Refused(
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
class Proposals:
    items: tuple[str, ...]
    libreswan: bool  # some item was Libreswan syntax


def parse_proposals(value: str, proto: str, *, legacy: bool) -> Proposals:
    text = value
    strict = not legacy
    if legacy and text.endswith("!"):
        strict = True
        text = text[:-1].rstrip()
    if "!" in text:
        raise Refused(
            "'!' (strict) belongs at the end of ipsec.conf's ike=/esp=; "
            "swanctl proposal lists are always strict"
            if not legacy
            else "'!' may only end the list"
        )
    parts = [part.strip().lower() for part in text.split(",")]
    if len(parts) > MAX_PROPOSALS:
        raise Refused(f"more than {MAX_PROPOSALS} proposals")
    items: list[str] = []
    libreswan = False
    for part in parts:
        if not part:
            raise Refused("empty proposal in the comma-separated list")
        if part == "default":
            items.append(part)
            continue
        try:
            items.append(_strongswan_proposal(part, proto))
            continue
        except Refused as refused:
            if not _looks_libreswan(part):
                raise
            if not legacy:
                raise Refused(
                    f"{refused.reason}; Libreswan syntax is translated only in "
                    f"ipsec_{'ike' if proto == 'IKE' else 'esp'}"
                ) from None
        items.append(_libreswan_proposal(part, proto))
        libreswan = True
    if legacy and not strict and not libreswan:
        # ipsec.conf without '!' appends charon's default proposals (stroke_config.c).
        items.append("default")
    return Proposals(tuple(dict.fromkeys(items)), libreswan)
