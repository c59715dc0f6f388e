"""Preflight: what charon can do (its `get-algorithms` and `stats` replies) against what our
connections need of it, and what is missing, with the plugin and Debian package that provide it.
Pure: the daemon asks charon, this module judges.

What a connection needs of charon's own crypto (its plugins):

* IKE: every algorithm of at least one of its IKE proposals (encryption or AEAD, integrity, PRF,
  key exchange), and the key derivation functions 5.9.8 builds IKEv2's keys with (`kdf`
  section, KDF_PRF and KDF_PRF_PLUS: the kdf or openssl plugin).
* ESP: only the key exchange group (PFS, used when a CHILD_SA is rekeyed). ESP's ciphers run in
  the kernel (kernel-netlink), not in charon's plugins, so charon cannot lack them.
* Certificate authentication: PEM (we hand charon PEM), X.509, and the public key algorithms of
  the certificates and key in use (EC only through openssl), from the `plugins` list of `stats`.

Without proposals (`--use-default-crypto`) charon builds its default proposal from what it
has, so there is nothing proposal-specific to lack. A keyword not in the table below, or a
section charon does not report (older versions have no `kdf`), is never called missing: a
false alarm would be worse than charon's own words.

Over 400 lines because most of it is data that must stay together: strongSwan's proposal
keywords, which plugins provide each algorithm, and which Debian package ships each plugin per
release; the judging itself is under 150 lines.

May import: ike_options.settings, stdlib.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ovs_ipsec.core.ike_options.settings import IkeSettings, default_proposals

# Which Debian package ships each plugin's .so (`dpkg -L`), by strongSwan release: Debian 12
# ships 5.9, Debian 13 ships 6.0, which moved openssl into libstrongswan and the software
# ciphers, hashes, kdf and gmp into the extra plugins. Plugins in `libstrongswan` come with
# every strongSwan install; a charon lacking one has it left out of its `load` list (or its
# strongswan.d/charon/<plugin>.conf says `load = no`).


def _shipped(package: str, plugins: str) -> dict[str, str]:
    return {plugin: package for plugin in plugins.split()}


PLUGIN_PACKAGES_5: Mapping[str, str] = MappingProxyType({
    **_shipped(
        "libstrongswan",
        "aes constraints drbg gmp hmac kdf md5 mgf1 nonce pem pkcs1 pkcs7 pkcs8 pubkey random"
        " revocation sha1 sha2 x509 xcbc",
    ),
    **_shipped("libstrongswan-standard-plugins", "aesni gcm openssl"),
    **_shipped("libstrongswan-extra-plugins", "ccm chapoly cmac ctr curve25519 gcrypt"),
})  # fmt: skip
PLUGIN_PACKAGES_6: Mapping[str, str] = MappingProxyType({
    **_shipped(
        "libstrongswan",
        "constraints drbg nonce openssl pem pkcs1 pkcs7 pkcs8 pubkey random revocation x509",
    ),
    **_shipped("libstrongswan-standard-plugins", "aesni gcm"),
    **_shipped(
        "libstrongswan-extra-plugins",
        "aes ccm chapoly cmac ctr curve25519 gcrypt gmp hmac kdf md5 mgf1 sha1 sha2 xcbc",
    ),
})  # fmt: skip


def charon_release(text: str) -> tuple[int, ...]:
    """strongSwan's version as numbers: `6.0.1` (VICI `version`), `charon-systemd 5.9.8` (the
    daemon's own line) or Debian's `5.9.8-5+deb12u6` -> (5, 9, 8); a suffix such as `rc1` ends a
    part. ValueError if there is no version."""
    words = text.split()
    parts: list[int] = []
    for part in (words[-1] if words else "").split("."):
        digits = re.match(r"\d*", part).group()  # type: ignore[union-attr]
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a strongSwan version: {text!r}")
    return tuple(parts)


def plugin_packages(charon_version: str) -> Mapping[str, str]:
    """The table for a charon's version (see charon_release); 5.9's when unknown."""
    try:
        release = charon_release(charon_version)
    except ValueError:
        return PLUGIN_PACKAGES_5
    return PLUGIN_PACKAGES_6 if release >= (6,) else PLUGIN_PACKAGES_5


# charon's algorithm name -> the plugins (Debian builds) that provide it, preferred first.
_OPENSSL = ("openssl",)
_PROVIDERS: Mapping[str, tuple[str, ...]] = {
    **{f"AES_GCM_{n}": ("gcm", "openssl") for n in (8, 12, 16)},
    **{f"AES_CCM_{n}": ("ccm", "openssl") for n in (8, 12, 16)},
    "CHACHA20_POLY1305": ("chapoly", "openssl"),
    "AES_CBC": ("aes", "openssl"),
    "AES_CTR": ("ctr", "openssl"),
    "3DES_CBC": _OPENSSL,
    "CAMELLIA_CBC": _OPENSSL,
    "HMAC_MD5_96": ("hmac", "openssl"),
    "HMAC_SHA1_96": ("hmac", "openssl"),
    "HMAC_SHA1_160": ("hmac", "openssl"),
    "HMAC_SHA2_256_128": ("hmac", "openssl"),
    "HMAC_SHA2_384_192": ("hmac", "openssl"),
    "HMAC_SHA2_512_256": ("hmac", "openssl"),
    "AES_XCBC_96": ("xcbc",),
    "AES_CMAC_96": ("cmac",),
    "PRF_HMAC_MD5": ("hmac", "openssl"),
    "PRF_HMAC_SHA1": ("hmac", "openssl"),
    "PRF_HMAC_SHA2_256": ("hmac", "openssl"),
    "PRF_HMAC_SHA2_384": ("hmac", "openssl"),
    "PRF_HMAC_SHA2_512": ("hmac", "openssl"),
    "PRF_AES128_XCBC": ("xcbc",),
    "PRF_AES128_CMAC": ("cmac",),
    **{f"MODP_{n}": ("gmp", "openssl") for n in (768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)},
    **{f"MODP_{n}": ("gmp", "openssl") for n in ("1024_160", "2048_224", "2048_256")},
    **{f"ECP_{n}": _OPENSSL for n in (192, 224, 256, 384, 521, "224_BP", "256_BP", "384_BP")},
    "ECP_512_BP": _OPENSSL,
    "CURVE_25519": ("curve25519", "openssl"),
    "CURVE_448": _OPENSSL,
    "KDF_PRF": ("kdf", "openssl"),
    "KDF_PRF_PLUS": ("kdf", "openssl"),
}

# Transform types of a proposal, and the get-algorithms sections that hold them.
ENCRYPTION, INTEGRITY, PRF, KE = "encryption", "integrity", "prf", "key exchange"
_SECTIONS: Mapping[str, tuple[str, ...]] = {
    ENCRYPTION: ("encryption", "aead"),
    INTEGRITY: ("integrity",),
    PRF: ("prf",),
    KE: ("dh", "ke"),  # "ke" from strongSwan 6.0 on
}
_AEAD = "aead"

_SIZES = r"(?P<bits>128|192|256)"
# Proposal keyword patterns (strongSwan's proposal_keywords_static.txt, the common part) ->
# (transform type, charon's algorithm name). Whole-keyword matches only.
_KEYWORDS: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), kind, name)
    for pattern, kind, name in (
        (rf"aes{_SIZES}?", ENCRYPTION, "AES_CBC"),
        (rf"aes{_SIZES}ctr", ENCRYPTION, "AES_CTR"),
        # The ICV length in bytes or in bits: gcm16 = gcm128.
        (rf"aes{_SIZES}gcm(16|128)?", _AEAD, "AES_GCM_16"),
        (rf"aes{_SIZES}gcm(12|96)", _AEAD, "AES_GCM_12"),
        (rf"aes{_SIZES}gcm(8|64)", _AEAD, "AES_GCM_8"),
        (rf"aes{_SIZES}ccm(16|128)?", _AEAD, "AES_CCM_16"),
        (rf"aes{_SIZES}ccm(12|96)", _AEAD, "AES_CCM_12"),
        (rf"aes{_SIZES}ccm(8|64)", _AEAD, "AES_CCM_8"),
        (r"chacha20poly1305", _AEAD, "CHACHA20_POLY1305"),
        (r"3des", ENCRYPTION, "3DES_CBC"),
        (rf"camellia{_SIZES}?", ENCRYPTION, "CAMELLIA_CBC"),
        (r"md5", INTEGRITY, "HMAC_MD5_96"),
        (r"sha1?", INTEGRITY, "HMAC_SHA1_96"),
        (r"sha1_160", INTEGRITY, "HMAC_SHA1_160"),
        (r"sha(2_)?256", INTEGRITY, "HMAC_SHA2_256_128"),
        (r"sha(2_)?384", INTEGRITY, "HMAC_SHA2_384_192"),
        (r"sha(2_)?512", INTEGRITY, "HMAC_SHA2_512_256"),
        (r"aesxcbc", INTEGRITY, "AES_XCBC_96"),
        (r"aescmac", INTEGRITY, "AES_CMAC_96"),
        (r"prfmd5", PRF, "PRF_HMAC_MD5"),
        (r"prfsha1", PRF, "PRF_HMAC_SHA1"),
        (r"prfsha256", PRF, "PRF_HMAC_SHA2_256"),
        (r"prfsha384", PRF, "PRF_HMAC_SHA2_384"),
        (r"prfsha512", PRF, "PRF_HMAC_SHA2_512"),
        (r"prfaesxcbc", PRF, "PRF_AES128_XCBC"),
        (r"prfaescmac", PRF, "PRF_AES128_CMAC"),
        (r"modp(?P<modp>768|1024|1536|2048|3072|4096|6144|8192)", KE, "MODP_{modp}"),
        (r"modp1024s160", KE, "MODP_1024_160"),
        (r"modp2048s224", KE, "MODP_2048_224"),
        (r"modp2048s256", KE, "MODP_2048_256"),
        (r"ecp(?P<ecp>192|224|256|384|521)", KE, "ECP_{ecp}"),
        (r"ecp(?P<bp>224|256|384|512)bp", KE, "ECP_{bp}_BP"),
        (r"(curve|x)25519", KE, "CURVE_25519"),
        (r"(curve|x)448", KE, "CURVE_448"),
    )
)
# Keywords that need nothing of charon's plugins.
_NEUTRAL = frozenset({"esn", "noesn", "modpnone", "modpnull", "none"})
# An integrity algorithm in an IKE proposal without a PRF implies the PRF of the same hash.
_PRF_OF_INTEGRITY: Mapping[str, str] = {
    "HMAC_MD5_96": "PRF_HMAC_MD5",
    "HMAC_SHA1_96": "PRF_HMAC_SHA1",
    "HMAC_SHA1_160": "PRF_HMAC_SHA1",
    "HMAC_SHA2_256_128": "PRF_HMAC_SHA2_256",
    "HMAC_SHA2_384_192": "PRF_HMAC_SHA2_384",
    "HMAC_SHA2_512_256": "PRF_HMAC_SHA2_512",
    "AES_XCBC_96": "PRF_AES128_XCBC",
    "AES_CMAC_96": "PRF_AES128_CMAC",
}

# Certificate authentication: the plugins (any one of them) each part needs.
_PEM = ("pem",)
_X509 = ("x509", "openssl")
_KEY_PLUGINS: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    # RSA keys are parsed by pkcs1 (in PKCS#8 by pkcs8) and used by gmp; openssl does all.
    "RSA": (("RSA keys", ("pkcs1", "openssl")), ("RSA signatures", ("gmp", "openssl"))),
    "EC": (("ECDSA keys", _OPENSSL),),
    "Ed25519": (("Ed25519 keys", ("curve25519", "openssl")),),
    "Ed448": (("Ed448 keys", _OPENSSL),),
}


@dataclass(frozen=True)
class Capabilities:
    """What one charon reported: algorithm names by get-algorithms section, its loaded plugins
    (None when `stats` did not list them), and which Debian package ships each plugin for its
    release."""

    algorithms: Mapping[str, frozenset[str]]
    plugins: frozenset[str] | None = None
    plugin_packages: Mapping[str, str] = field(
        default_factory=lambda: PLUGIN_PACKAGES_5, compare=False
    )

    def has(self, kind: str, name: str) -> bool | None:
        """True or False if charon reports that kind of algorithm; None if it does not (an
        older charon's reply, a section we do not know): then nothing is claimed missing."""
        sections = [s for s in _SECTIONS.get(kind, (kind,)) if s in self.algorithms]
        if not sections:
            return None
        return any(name in self.algorithms[s] for s in sections)

    def has_plugin(self, names: Iterable[str]) -> bool | None:
        if self.plugins is None:
            return None
        return any(name in self.plugins for name in names)


def parse_capabilities(
    algorithms: Mapping[str, Any] | None,
    stats: Mapping[str, Any] | None,
    charon_version: str = "",
) -> Capabilities:
    """From decoded `get-algorithms` and `stats` replies (either may be missing) and the
    `version` reply's version."""
    sections = {
        str(section): frozenset(str(name) for name in names)
        for section, names in (algorithms or {}).items()
        if isinstance(names, Mapping)
    }
    plugins = (stats or {}).get("plugins")
    listed = frozenset(str(p) for p in plugins) if isinstance(plugins, list | tuple) else None
    return Capabilities(sections, listed, plugin_packages(charon_version))


@dataclass(frozen=True)
class Lack:
    """One thing charon lacks, what needs it, and the plugins that would provide it."""

    capability: str  # charon's algorithm name, or a certificate feature ("ECDSA keys")
    needed_for: str  # e.g. "IKE proposal aes256gcm16-prfsha256-modp2048"
    plugins: tuple[str, ...]
    shipped_in: Mapping[str, str] = field(
        default_factory=lambda: PLUGIN_PACKAGES_5, compare=False, repr=False
    )

    @property
    def remedy(self) -> str:
        """`load charon's gcm or openssl plugin (Debian package libstrongswan-standard-plugins)`"""
        if not self.plugins:
            return "load a charon plugin that provides it"
        by_package: dict[str, list[str]] = {}
        for plugin in self.plugins:
            by_package.setdefault(self.shipped_in.get(plugin, "?"), []).append(plugin)
        parts = [
            f"{' or '.join(plugins)} plugin (Debian package {package})"
            for package, plugins in by_package.items()
        ]
        return "load charon's " + " or its ".join(parts)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.shipped_in.get(p, "?") for p in self.plugins))

    def describe(self) -> str:
        return f"charon lacks {self.capability} (for {self.needed_for}): {self.remedy}"


@dataclass(frozen=True)
class Needs:
    """What one connection asks of charon; hashable, so that thousands of connections with the
    same proposals are judged once."""

    ike_proposals: tuple[str, ...] = ()
    esp_proposals: tuple[str, ...] = ()
    certificates: bool = False


@functools.lru_cache(maxsize=1024)
def tunnel_needs(settings: IkeSettings, certificates: bool, use_default_crypto: bool) -> Needs:
    """What one tunnel asks of charon, from what connections.py puts in its connection: the
    default proposals unless its ipsec_* options chose others. Cached: most tunnels share one
    answer."""
    ike, esp = default_proposals(use_default_crypto)
    conn, child = dict(settings.conn), dict(settings.child)
    return Needs(
        _texts(conn.get("proposals", ike)), _texts(child.get("esp_proposals", esp)), certificates
    )


def conn_needs(tunnels: Iterable[Needs]) -> Needs:
    """A connection's needs from its tunnels' (the IKE proposals are the first tunnel's, as in
    connections.py; each tunnel has its own CHILD_SAs)."""
    found = list(tunnels)
    if len(found) == 1:
        return found[0]
    return Needs(
        found[0].ike_proposals if found else (),
        tuple(dict.fromkeys(p for needs in found for p in needs.esp_proposals)),
        any(needs.certificates for needs in found),
    )


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        return ()
    return tuple(str(v) for v in value)


def parse_proposal(proposal: str) -> dict[str, list[str]] | None:
    """Transform type -> charon's algorithm names; None when a keyword is not in our table
    (then the proposal is not judged)."""
    parsed: dict[str, list[str]] = {}
    for keyword in proposal.strip().rstrip("!").lower().split("-"):
        if keyword in _NEUTRAL:
            continue
        for pattern, kind, name in _KEYWORDS:
            match = pattern.fullmatch(keyword)
            if match is not None:
                parsed.setdefault(kind, []).append(name.format(**match.groupdict()))
                break
        else:
            return None
    return parsed


def _ike_transforms(parsed: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """An IKE proposal's transforms as charon completes them: in an AEAD proposal integrity
    keywords name PRFs; without a PRF, the integrity algorithms imply theirs."""
    transforms = {kind: list(names) for kind, names in parsed.items() if kind != _AEAD}
    if _AEAD in parsed:
        transforms[ENCRYPTION] = transforms.get(ENCRYPTION, []) + parsed[_AEAD]
        integrity = transforms.pop(INTEGRITY, [])
        if PRF not in transforms and integrity:
            transforms[PRF] = [_PRF_OF_INTEGRITY[i] for i in integrity if i in _PRF_OF_INTEGRITY]
    elif PRF not in transforms and INTEGRITY in transforms:
        transforms[PRF] = [_PRF_OF_INTEGRITY[i] for i in transforms[INTEGRITY]
                           if i in _PRF_OF_INTEGRITY]  # fmt: skip
    return transforms


def _esp_transforms(parsed: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Only the key exchange group is charon's: ESP's ciphers run in the kernel."""
    return {KE: parsed[KE]} if KE in parsed else {}


def _proposal_lacks(
    transforms: Mapping[str, list[str]], caps: Capabilities, needed_for: str
) -> list[Lack]:
    """The transform types none of whose algorithms charon has (one Lack per algorithm)."""
    lacks = []
    for kind, names in transforms.items():
        if not names:
            continue
        present = [caps.has(kind, name) for name in names]
        if all(p is False for p in present):
            lacks += [
                Lack(name, needed_for, _PROVIDERS.get(name, ()), caps.plugin_packages)
                for name in names
            ]
    return lacks


def _proposals_lacks(
    proposals: tuple[str, ...], caps: Capabilities, what: str, ike: bool
) -> list[Lack]:
    """Nothing if one proposal is entirely available (charon and the peer can agree on it);
    otherwise what each proposal lacks."""
    lacks: list[Lack] = []
    for proposal in proposals:
        parsed = parse_proposal(proposal)
        if parsed is None:
            return []  # a keyword we cannot judge: charon may well have it
        transforms = _ike_transforms(parsed) if ike else _esp_transforms(parsed)
        missing = _proposal_lacks(transforms, caps, f"{what} proposal {proposal}")
        if not missing:
            return []
        lacks += missing
    return lacks


def lacks(needs: Needs, caps: Capabilities, key_algorithms: Iterable[str] = ()) -> tuple[Lack, ...]:
    """Everything charon lacks that a connection with these needs would use; empty if none.

    `key_algorithms` are those of the certificates and key in use ("RSA", "EC", ...), for
    connections that authenticate with certificates."""
    found: list[Lack] = []
    kdfs = [name for name in ("KDF_PRF", "KDF_PRF_PLUS") if caps.has("kdf", name) is False]
    if kdfs:
        found.append(Lack(" and ".join(kdfs), "IKEv2 key derivation", _PROVIDERS[kdfs[0]],
                          caps.plugin_packages))  # fmt: skip
    found += _proposals_lacks(needs.ike_proposals, caps, "IKE", ike=True)
    found += _proposals_lacks(needs.esp_proposals, caps, "ESP", ike=False)
    if needs.certificates:
        parts: list[tuple[str, tuple[str, ...]]] = [("PEM", _PEM), ("X.509 certificates", _X509)]
        for algorithm in sorted(set(key_algorithms)):
            parts += _KEY_PLUGINS.get(algorithm, ())
        for capability, plugins in parts:
            if caps.has_plugin(plugins) is False:
                found.append(
                    Lack(capability, "certificate authentication", plugins, caps.plugin_packages)
                )
    return tuple(dict.fromkeys(found))


def describe_lacks(found: tuple[Lack, ...]) -> str:
    """A tunnel's failure reason: every missing capability, with its remedy."""
    return "; ".join(lack.describe() for lack in found)


@dataclass
class Preflight:
    """One charon's capabilities and the certificate key algorithms in use, judging
    connections by their needs (each distinct Needs once: thousands of connections share a
    few). `new` collects the capabilities found missing since last drained, for the daemon to
    log once each."""

    caps: Capabilities
    key_algorithms: frozenset[str] = frozenset()
    _judged: dict[Needs, tuple[Lack, ...]] = field(default_factory=dict)
    new: dict[str, Lack] = field(default_factory=dict)

    def lacking(self, needs: Needs) -> tuple[Lack, ...]:
        found = self._judged.get(needs)
        if found is None:
            found = self._judged[needs] = lacks(needs, self.caps, self.key_algorithms)
            for lack in found:
                self.new.setdefault(lack.capability, lack)
        return found

    def drain(self) -> list[Lack]:
        found, self.new = list(self.new.values()), {}
        return found
