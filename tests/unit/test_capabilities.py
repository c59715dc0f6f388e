"""Preflight's pure core: proposal keywords -> charon's algorithm names, needs × capabilities ->
what is missing with the plugin and Debian package, judged against real charon 5.9.8 replies.

tests/unit/data/charon-5.9.8-capabilities.json holds `get-algorithms`, the `plugins` of `stats`
and `version` of a lab charon (ovs_ipsec.tools.lab, CHARON_PLUGINS) started with every plugin and
without some (`Host.start_charon(without=...)`), decoded with vici_wire.bytes_to_text; recorded by
tests/unit/data/record_capabilities.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ovs_ipsec.core.capabilities import (
    _PROVIDERS,
    PLUGIN_PACKAGES_5,
    PLUGIN_PACKAGES_6,
    Capabilities,
    Lack,
    Needs,
    Preflight,
    charon_release,
    conn_needs,
    describe_lacks,
    lacks,
    parse_capabilities,
    parse_proposal,
    plugin_packages,
    tunnel_needs,
)
from ovs_ipsec.core.causes import Cause
from ovs_ipsec.core.connections import ConnSpec, plan
from ovs_ipsec.core.ike_options.settings import (
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    NO_SETTINGS,
    IkeSettings,
)
from ovs_ipsec.core.model import InterfaceRow, Snapshot
from ovs_ipsec.core.parse import parse_config
from ovs_ipsec.core.status import State, View, fold

DATA = Path(__file__).parent / "data" / "charon-5.9.8-capabilities.json"
RECORDED = json.loads(DATA.read_text())
DEFAULTS = Needs(IKE_PROPOSALS, ESP_PROPOSALS)
STANDARD = "libstrongswan-standard-plugins"


def charon(variant: str) -> Capabilities:
    reply = RECORDED[variant]
    return parse_capabilities(reply["get-algorithms"], {"plugins": reply["stats-plugins"]})


def names(found: tuple[Lack, ...]) -> list[str]:
    return [lack.capability for lack in found]


@pytest.mark.parametrize(
    ("proposal", "expected"),
    [
        ("aes256gcm16-prfsha256-modp2048",
         {"aead": ["AES_GCM_16"], "prf": ["PRF_HMAC_SHA2_256"], "key exchange": ["MODP_2048"]}),
        ("aes128gcm-sha256-x25519", {"aead": ["AES_GCM_16"], "integrity": ["HMAC_SHA2_256_128"],
                                     "key exchange": ["CURVE_25519"]}),
        ("aes128-aes256-sha1-sha384-ecp384-ecp256bp!",
         {"encryption": ["AES_CBC", "AES_CBC"], "integrity": ["HMAC_SHA1_96", "HMAC_SHA2_384_192"],
          "key exchange": ["ECP_384", "ECP_256_BP"]}),
        ("aes256gcm16-modp2048-esn", {"aead": ["AES_GCM_16"], "key exchange": ["MODP_2048"]}),
        ("aes128gcm128-aes256gcm96-aes192ccm64", {"aead": ["AES_GCM_16", "AES_GCM_12",
                                                           "AES_CCM_8"]}),
        ("chacha20poly1305-prfsha512-curve448",
         {"aead": ["CHACHA20_POLY1305"], "prf": ["PRF_HMAC_SHA2_512"],
          "key exchange": ["CURVE_448"]}),
        ("3des-md5-modp1024s160", {"encryption": ["3DES_CBC"], "integrity": ["HMAC_MD5_96"],
                                   "key exchange": ["MODP_1024_160"]}),
        ("aes256ctr-aesxcbc-prfaescmac-modp2048s256",
         {"encryption": ["AES_CTR"], "integrity": ["AES_XCBC_96"], "prf": ["PRF_AES128_CMAC"],
          "key exchange": ["MODP_2048_256"]}),
    ],
)  # fmt: skip
def test_common_keywords_map_to_charons_algorithm_names(
    proposal: str, expected: dict[str, list[str]]
) -> None:
    assert parse_proposal(proposal) == expected


KEYWORDS = (
    "aes aes128 aes192 aes256 aes128ctr aes256ctr aes128gcm aes256gcm8 aes192gcm96 aes256ccm12"
    " aes128ccm chacha20poly1305 3des camellia camellia256 md5 sha sha1 sha1_160 sha256 sha2_384"
    " sha512 aesxcbc aescmac prfmd5 prfsha1 prfsha256 prfsha384 prfsha512 prfaesxcbc prfaescmac"
    " modp768 modp1024 modp1536 modp2048 modp3072 modp4096 modp6144 modp8192 modp1024s160"
    " modp2048s224 modp2048s256 ecp192 ecp224 ecp256 ecp384 ecp521 ecp224bp ecp256bp ecp384bp"
    " ecp512bp curve25519 x25519 curve448 x448"
)


def test_every_keyword_we_know_names_the_plugins_that_provide_it() -> None:
    full = charon("full")
    for keyword in KEYWORDS.split():
        parsed = parse_proposal(keyword)
        assert parsed, keyword
        for kind, algorithms in parsed.items():
            for name in algorithms:
                lack = Lack(name, "", _PROVIDERS[name])
                assert lack.packages and "?" not in lack.packages, keyword
                assert full.has(kind, name) or name in ("AES_CMAC_96", "AES_XCBC_96",
                    "PRF_AES128_XCBC", "PRF_AES128_CMAC"), (keyword, name)  # fmt: skip


@pytest.mark.parametrize("proposal", ["aes256gcm16-prfsha256-mlkem768", "serpent256-sha256", ""])
def test_a_keyword_we_do_not_know_is_never_called_missing(proposal: str) -> None:
    if proposal:
        assert parse_proposal(proposal) is None
    assert lacks(Needs((proposal,)), charon("without-openssl-gcm-kdf")) == tuple(
        lacks(Needs(), charon("without-openssl-gcm-kdf"))
    )


def test_a_charon_with_every_plugin_lacks_nothing() -> None:
    full = charon("full")
    needs = Needs((*IKE_PROPOSALS, "aes128-sha256-ecp384"), ESP_PROPOSALS, certificates=True)
    assert lacks(needs, full, {"RSA", "EC", "Ed25519"}) == ()


def test_without_openssl_and_gcm_the_default_ike_proposal_lacks_aes_gcm() -> None:
    found = lacks(DEFAULTS, charon("without-openssl-gcm"))
    assert names(found) == ["AES_GCM_16"]
    (lack,) = found
    assert lack.needed_for == "IKE proposal aes256gcm16-prfsha256-modp2048"
    assert lack.remedy == f"load charon's gcm or openssl plugin (Debian package {STANDARD})"
    assert lack.packages == (STANDARD,)
    assert describe_lacks(found) == (
        "charon lacks AES_GCM_16 (for IKE proposal aes256gcm16-prfsha256-modp2048): "
        f"load charon's gcm or openssl plugin (Debian package {STANDARD})"
    )


def test_esp_ciphers_are_the_kernels_only_esps_key_exchange_is_charons() -> None:
    caps = charon("without-openssl-gcm")
    assert lacks(Needs(("aes256-sha256-modp2048",), ESP_PROPOSALS), caps) == ()
    found = lacks(Needs((), ("aes256gcm16-ecp256",)), caps)
    assert [(lack.capability, lack.needed_for) for lack in found] == [
        ("ECP_256", "ESP proposal aes256gcm16-ecp256")
    ]


def test_in_an_aead_proposal_integrity_names_the_prf_and_otherwise_implies_it() -> None:
    no_sha384 = Capabilities({"aead": frozenset({"AES_GCM_16"}), "integrity": frozenset(),
                              "prf": frozenset({"PRF_HMAC_SHA2_256"}),
                              "dh": frozenset({"MODP_2048"})})  # fmt: skip
    assert lacks(Needs(("aes256gcm16-sha256-modp2048",)), no_sha384) == ()
    assert names(lacks(Needs(("aes256gcm16-sha384-modp2048",)), no_sha384)) == ["PRF_HMAC_SHA2_384"]
    # AES-CBC with SHA-256: the integrity algorithm and its PRF both count.
    found = lacks(Needs(("aes256-sha256-modp2048",)), no_sha384)
    assert names(found) == ["AES_CBC", "HMAC_SHA2_256_128"]


def test_one_proposal_charon_has_is_enough_and_alternatives_within_a_proposal_too() -> None:
    caps = charon("without-openssl-gcm")
    assert lacks(Needs((*IKE_PROPOSALS, "aes256-sha256-modp2048")), caps) == ()
    assert lacks(Needs(("aes256gcm16-aes256-sha256-modp2048-ecp256",)), caps) == ()
    found = lacks(Needs((*IKE_PROPOSALS, "aes128-sha256-ecp384")), caps)
    assert names(found) == ["AES_GCM_16", "ECP_384"]


def test_key_exchange_groups_name_every_package_that_could_provide_them() -> None:
    (lack,) = lacks(Needs(("aes256-sha256-curve25519",)), charon("without-openssl-gcm"))
    assert lack.remedy == (
        "load charon's curve25519 plugin (Debian package libstrongswan-extra-plugins) or its "
        f"openssl plugin (Debian package {STANDARD})"
    )


def test_key_derivation_is_needed_whatever_the_proposals() -> None:
    without = charon("without-openssl-gcm-kdf")
    for needs in (Needs(), Needs(("aes256-sha256-modp2048",))):
        (lack,) = lacks(needs, without)
        assert lack.capability == "KDF_PRF and KDF_PRF_PLUS"
        assert lack.plugins == ("kdf", "openssl")
        assert lack.packages == ("libstrongswan", STANDARD)
    # openssl provides them too: the kdf plugin alone is not needed.
    assert lacks(DEFAULTS, charon("without-kdf")) == ()
    # An older charon reports no kdf section: nothing to judge.
    older = Capabilities({"prf": frozenset({"PRF_HMAC_SHA2_256"})})
    assert lacks(Needs(), older) == ()


def test_certificates_need_pem_x509_and_the_plugins_of_their_key_algorithms() -> None:
    caps = charon("without-openssl-gcm")
    plain = Needs(("aes256-sha256-modp2048",), certificates=True)
    assert lacks(plain, caps, {"RSA"}) == ()
    (lack,) = lacks(plain, caps, {"EC", "RSA"})
    assert (lack.capability, lack.needed_for) == ("ECDSA keys", "certificate authentication")
    assert lack.packages == (STANDARD,)
    bare = Capabilities({}, frozenset({"openssl"}))
    assert names(lacks(plain, bare, {"EC"})) == ["PEM"]
    assert names(lacks(plain, Capabilities({}, frozenset()), {"Ed25519"})) == [
        "PEM", "X.509 certificates", "Ed25519 keys"
    ]  # fmt: skip
    # PSK tunnels need none of it; unknown plugins (no `plugins` in stats): nothing claimed.
    assert lacks(Needs(), Capabilities({}, frozenset()), {"EC"}) == ()
    assert lacks(Needs(certificates=True), Capabilities({}), {"EC"}) == ()


def test_replies_of_another_shape_are_tolerated() -> None:
    caps = parse_capabilities({"aead": {"AES_GCM_16": "gcm"}, "junk": "x"}, {"plugins": "no"})
    assert caps.algorithms == {"aead": frozenset({"AES_GCM_16"})} and caps.plugins is None
    assert parse_capabilities(None, None) == Capabilities({}, None)


def test_tunnel_needs_follow_the_defaults_options_and_default_crypto() -> None:
    assert tunnel_needs(NO_SETTINGS, False, False) == DEFAULTS
    assert tunnel_needs(NO_SETTINGS, True, True) == Needs((), (), True)
    chosen = IkeSettings(conn=(("proposals", ("aes128-sha256-ecp256",)),),
                         child=(("esp_proposals", ("aes128-sha256",)),))  # fmt: skip
    assert tunnel_needs(chosen, False, False) == Needs(
        ("aes128-sha256-ecp256",), ("aes128-sha256",)
    )
    both = conn_needs([DEFAULTS, tunnel_needs(chosen, True, False)])
    assert both == Needs(IKE_PROPOSALS, (*ESP_PROPOSALS, "aes128-sha256"), True)


def test_preflight_judges_each_distinct_need_once_and_reports_each_lack_once() -> None:
    calls = []
    preflight = Preflight(charon("without-openssl-gcm"))
    for needs in [DEFAULTS] * 1000 + [Needs(("aes256gcm16-sha256-ecp256",))]:
        calls.append(preflight.lacking(needs))
    assert len(preflight._judged) == 2
    assert [lack.capability for lack in preflight.drain()] == ["AES_GCM_16", "ECP_256"]
    assert preflight.lacking(DEFAULTS) and preflight.drain() == []


def test_the_fold_fails_lacking_tunnels_with_the_capability_cause() -> None:
    rows = (
        InterfaceRow("g0", "gre", {"remote_ip": "10.77.0.2", "psk": "x"}),
        InterfaceRow("g1", "gre", {"remote_ip": "10.77.0.3", "psk": "y",
                                   "ipsec_ike": "aes256-sha256-modp2048"}),
    )  # fmt: skip
    config = parse_config(Snapshot(rows, {}))
    desired = plan(config)
    preflight = Preflight(charon("without-openssl-gcm"))

    needs = {"ovs-10.77.0.2": DEFAULTS, "ovs-10.77.0.3": Needs(("aes256-sha256-modp2048",))}

    def lacking(conn: ConnSpec) -> tuple[Lack, ...]:
        return preflight.lacking(needs[conn.name])

    result = fold(View(desired, frozenset(desired.conns), lacking=lacking))
    assert result["g0"].state is State.FAILED and result["g0"].cause is Cause.CAPABILITY
    assert "AES_GCM_16" in result["g0"].reason and STANDARD in result["g0"].reason
    assert result["g1"].state is State.CONFIGURED
    # charon unreachable says so first: what the old charon lacked is no longer known.
    down = fold(View(desired, frozenset(desired.conns), charon_error="gone", lacking=lacking))
    assert down["g0"].cause is Cause.CHARON


def test_plugin_packages_are_those_debian_ships_them_in() -> None:
    """Checked against `dpkg -L` for the packages installed here, in the table of the installed
    strongSwan's release (5.9 on Debian 12, 6.0 on Debian 13)."""
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libstrongswan"], capture_output=True, text=True
    ).stdout
    table = plugin_packages(version)
    checked = 0
    for package in sorted(set(table.values())):
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listing.returncode != 0:
            continue
        shipped = {
            Path(line).name.removeprefix("libstrongswan-").removesuffix(".so")
            for line in listing.stdout.splitlines()
            if "/plugins/libstrongswan-" in line and line.endswith(".so")
        }
        for plugin, expected in table.items():
            if expected == package:
                assert plugin in shipped, f"{plugin} is not in {package} {version}"
                checked += 1
    if not checked:
        pytest.skip("no strongSwan package installed")


def test_the_package_named_follows_charons_release() -> None:
    """Debian 13's strongSwan 6.0 moved openssl into libstrongswan and aes, sha2, kdf, gmp into
    the extra plugins: the remedy names the package of the connected charon's release."""
    assert plugin_packages("charon-systemd 5.9.8") is PLUGIN_PACKAGES_5
    assert plugin_packages("charon-systemd 6.0.1") is PLUGIN_PACKAGES_6
    assert plugin_packages("") is PLUGIN_PACKAGES_5
    assert set(PLUGIN_PACKAGES_5) == set(PLUGIN_PACKAGES_6)
    caps = parse_capabilities({"aead": {}, "kdf": {}}, None, "charon-systemd 6.0.1")
    needs = Needs(("aes256gcm16-prfsha256-modp2048",))
    remedies = " ".join(lack.remedy for lack in lacks(needs, caps))
    assert "openssl plugin (Debian package libstrongswan)" in remedies
    assert "kdf plugin (Debian package libstrongswan-extra-plugins)" in remedies


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("6.0.1", (6, 0, 1)),
        ("charon-systemd 5.9.8", (5, 9, 8)),
        ("5.9.8-5+deb12u6", (5, 9, 8)),
        ("6.0.0rc1", (6, 0, 0)),
        ("6.0dr1", (6, 0)),
    ],
)
def test_charon_release_reads_every_spelling_in_use(text: str, release: tuple[int, ...]) -> None:
    """VICI's `version`, the daemon's own line and Debian's package version (one parser for the
    daemon, the lab and this file's dpkg check)."""
    assert charon_release(text) == release


@pytest.mark.parametrize("text", ["", "charon-systemd", "x.5"])
def test_charon_release_refuses_what_has_no_version(text: str) -> None:
    with pytest.raises(ValueError):
        charon_release(text)
