"""ike_options: ipsec_* options -> swanctl keys, every mapping row and every refusal (pure).

Over 400 lines: one table row per accepted spelling and per refusal."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core import connections as plan
from ovs_ipsec.core.ike_options import translate as translate_module
from ovs_ipsec.core.ike_options.docs import render_markdown
from ovs_ipsec.core.ike_options.options import OPTIONS, REJECTED
from ovs_ipsec.core.ike_options.settings import (
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    IkeSettings,
    conn_differences,
    default_proposals,
)
from ovs_ipsec.core.ike_options.translate import translate
from ovs_ipsec.core.model import Invalid

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "ipsec-options.md"


def ok(*options: tuple[str, str], use_default_crypto: bool = False) -> IkeSettings:
    settings_, errors = translate(options, use_default_crypto=use_default_crypto)
    assert errors == (), errors
    assert settings_ is not None
    return settings_


def refused(*options: tuple[str, str], use_default_crypto: bool = False) -> dict[str, str]:
    settings_, errors = translate(options, use_default_crypto=use_default_crypto)
    assert settings_ is None
    assert errors
    for error in errors:
        assert isinstance(error, Invalid)
        assert error.reason.strip()
        assert "internal error" not in error.reason
    return {e.key: e.reason for e in errors}


# ---------------------------------------------------------------------------------------------
# Every accepted row: input -> exact VICI keys and values.

MAPPINGS: list[tuple[str, tuple[tuple[str, str], ...], dict, dict]] = [
    # id, options, conn, child
    ("forceencaps-yes", (("forceencaps", "yes"),), {"encap": "yes"}, {}),
    ("forceencaps-no", (("forceencaps", "no"),), {"encap": "no"}, {}),
    ("forceencaps-true-upper", (("forceencaps", "TRUE"),), {"encap": "yes"}, {}),
    ("encapsulation-yes", (("encapsulation", "yes"),), {"encap": "yes"}, {}),
    ("encapsulation-auto", (("encapsulation", "auto"),), {"encap": "no"}, {}),
    ("encapsulation-no", (("encapsulation", "no"),), {"encap": "no"}, {}),
    ("encap-yes", (("encap", "yes"),), {"encap": "yes"}, {}),
    ("encap-false", (("encap", "false"),), {"encap": "no"}, {}),
    ("ovn-both-encaps-agree", (("encapsulation", "yes"), ("forceencaps", "yes")),
     {"encap": "yes"}, {}),
    ("ike-upstream-nonstrict", (("ike", "aes256gcm16-sha256-modp2048"),),
     {"proposals": ["aes256gcm16-sha256-modp2048", "default"]}, {}),
    ("ike-strict", (("ike", "aes256gcm16-prfsha256-ecp256!"),),
     {"proposals": ["aes256gcm16-prfsha256-ecp256"]}, {}),
    ("ike-two-strict-spaces",
     (("ike", " AES256-SHA256-MODP3072 , aes128gcm16-prfsha256-x25519 !"),),
     {"proposals": ["aes256-sha256-modp3072", "aes128gcm16-prfsha256-x25519"]}, {}),
    ("ike-libreswan-gcm", (("ike", "aes_gcm256-sha2_256;dh19"),),
     {"proposals": ["aes256gcm16-prfsha256-ecp256"]}, {}),
    ("ike-libreswan-classic-plus", (("ike", "aes256-sha2_512+sha2_256-dh14"),),
     {"proposals": ["aes256-sha512-sha256-modp2048"]}, {}),
    ("ike-libreswan-prf-and-integ", (("ike", "aes_cbc128-sha2_256-sha1-modp2048"),),
     {"proposals": ["aes128-prfsha256-sha1-modp2048"]}, {}),
    ("ike-libreswan-icv-a", (("ike", "aes_gcm_a256-sha2;dh31"),),
     {"proposals": ["aes256gcm8-prfsha256-curve25519"]}, {}),
    ("ike-libreswan-chacha", (("ike", "chacha20_poly1305-sha2_512-dh20"),),
     {"proposals": ["chacha20poly1305-prfsha512-ecp384"]}, {}),
    ("ike-libreswan-with-ss-item", (("ike", "aes_gcm256-sha2;modp2048,aes256-sha256-ecp256"),),
     {"proposals": ["aes256gcm16-prfsha256-modp2048", "aes256-sha256-ecp256"]}, {}),
    ("proposals-native", (("proposals", "aes256gcm16-prfsha384-ecp384,default"),),
     {"proposals": ["aes256gcm16-prfsha384-ecp384", "default"]}, {}),
    ("ike-and-proposals-agree",
     (("ike", "aes256gcm16-prfsha384-ecp384!"), ("proposals", "aes256gcm16-prfsha384-ecp384")),
     {"proposals": ["aes256gcm16-prfsha384-ecp384"]}, {}),
    ("esp-upstream-nonstrict", (("esp", "aes256gcm16-modp2048"),), {},
     {"esp_proposals": ["aes256gcm16-modp2048", "default"]}),
    ("esp-strict-esn", (("esp", "aes128-sha256-esn!"),), {},
     {"esp_proposals": ["aes128-sha256-esn"]}),
    ("esp-libreswan-gets-ike-group", (("esp", "aes_gcm256"),), {},
     {"esp_proposals": ["aes256gcm16-modp2048"]}),
    ("esp-libreswan-gets-explicit-ike-groups",
     (("esp", "aes_gcm128-none"), ("ike", "aes_gcm256-sha2;dh19+dh14")),
     {"proposals": ["aes256gcm16-prfsha256-ecp256-modp2048"]},
     {"esp_proposals": ["aes128gcm16-ecp256-modp2048"]}),
    ("esp-libreswan-own-group", (("esp", "aes256-sha2_256;dh20"),), {},
     {"esp_proposals": ["aes256-sha256-ecp384"]}),
    ("esp-libreswan-pfs-no", (("esp", "aes_gcm_c_256-null"), ("pfs", "no")), {},
     {"esp_proposals": ["aes256gcm16"]}),
    ("esp-libreswan-ctr-ccm", (("esp", "aes_ctr256-sha2_384;none,aes_ccm_b128"), ("pfs", "no")),
     {}, {"esp_proposals": ["aes256ctr-sha384", "aes128ccm12"]}),
    ("phase2alg", (("phase2alg", "aes128gcm16!"),), {}, {"esp_proposals": ["aes128gcm16"]}),
    ("esp-proposals-native", (("esp_proposals", "aes256gcm16-ecp256,aes128gcm16"),), {},
     {"esp_proposals": ["aes256gcm16-ecp256", "aes128gcm16"]}),
    ("pfs-yes-defaults", (("pfs", "yes"),), {}, {}),
    ("pfs-no-defaults", (("pfs", "no"),), {}, {"esp_proposals": ["aes256gcm16"]}),
    ("pfs-no-default-crypto", (("pfs", "no"),), {}, {}),  # use_default_crypto below
    ("pfs-yes-strict-group", (("pfs", "yes"), ("esp", "aes256gcm16-ecp256!")), {},
     {"esp_proposals": ["aes256gcm16-ecp256"]}),
    ("phase2-esp", (("phase2", "esp"),), {}, {}),
    ("keyexchange-ikev2", (("keyexchange", "ikev2"),), {}, {}),
    ("ikev2-insist", (("ikev2", "insist"),), {}, {}),
    ("ikev2-yes", (("ikev2", "yes"),), {}, {}),
    ("ikev2-propose", (("ikev2", "propose"),), {}, {}),
    ("version-2", (("version", "2"),), {}, {}),
    ("type-transport", (("type", "transport"),), {}, {}),
    ("mode-transport", (("mode", "transport"),), {}, {}),
    ("auto-route", (("auto", "route"),), {}, {}),
    ("start-action-trap", (("start_action", "trap"),), {}, {}),
    ("dpddelay", (("dpddelay", "30s"),), {"dpd_delay": "30s"}, {}),
    ("dpd-delay-plain", (("dpd-delay", "45"),), {"dpd_delay": "45s"}, {}),
    ("dpd_delay-minutes", (("dpd_delay", "2m"),), {"dpd_delay": "120s"}, {}),
    ("dpd_delay-off", (("dpd_delay", "0"),), {"dpd_delay": "0s"}, {}),
    ("dpdtimeout", (("dpdtimeout", "150s"),), {"dpd_timeout": "150s"}, {}),
    ("dpd-timeout-ovn", (("dpd-timeout", "120s"),), {"dpd_timeout": "120s"}, {}),
    ("ikev1-dpdtimeout", (("ikev1-dpdtimeout", "1m"),), {"dpd_timeout": "60s"}, {}),
    ("dpd_timeout", (("dpd_timeout", "1h"),), {"dpd_timeout": "3600s"}, {}),
    ("dpdaction-none", (("dpdaction", "none"),), {"dpd_delay": "0s"}, {"dpd_action": "clear"}),
    ("dpdaction-clear", (("dpdaction", "clear"),), {"dpd_delay": "30s"},
     {"dpd_action": "clear"}),
    ("dpdaction-hold", (("dpdaction", "hold"),), {"dpd_delay": "30s"}, {"dpd_action": "trap"}),
    ("dpdaction-restart-delay", (("dpdaction", "restart"), ("dpddelay", "10s")),
     {"dpd_delay": "10s"}, {"dpd_action": "restart"}),
    ("dpdaction-none-delay-0", (("dpdaction", "none"), ("dpd_delay", "0s")),
     {"dpd_delay": "0s"}, {"dpd_action": "clear"}),
    ("dpd_action-none", (("dpd_action", "none"),), {}, {"dpd_action": "clear"}),
    ("dpd_action-route", (("dpd_action", "route"),), {}, {"dpd_action": "trap"}),
    ("dpd_action-start", (("dpd_action", "start"),), {}, {"dpd_action": "restart"}),
    ("closeaction-hold", (("closeaction", "hold"),), {}, {"close_action": "trap"}),
    ("closeaction-clear", (("closeaction", "clear"),), {}, {"close_action": "none"}),
    ("closeaction-restart", (("closeaction", "restart"),), {}, {"close_action": "start"}),
    ("close_action-trap", (("close_action", "trap"),), {}, {"close_action": "trap"}),
    ("close_action-restart", (("close_action", "restart"),), {}, {"close_action": "start"}),
    ("ikelifetime", (("ikelifetime", "1h"),),
     {"rekey_time": "3060s", "over_time": "540s", "rand_time": "540s"}, {}),
    ("ikelifetime-reauth", (("ikelifetime", "8h"), ("reauth", "yes")),
     {"reauth_time": "28260s", "rekey_time": "0s", "over_time": "540s", "rand_time": "540s"},
     {}),
    ("ikelifetime-reauth-no", (("ikelifetime", "2h"), ("reauth", "no")),
     {"rekey_time": "6660s", "reauth_time": "0s", "over_time": "540s", "rand_time": "540s"},
     {}),
    ("reauth-yes-alone", (("reauth", "yes"),),
     {"reauth_time": "10260s", "rekey_time": "0s", "over_time": "540s", "rand_time": "540s"},
     {}),
    ("reauth-no-alone", (("reauth", "no"),), {"reauth_time": "0s"}, {}),
    ("lifetime", (("lifetime", "2h"),), {},
     {"life_time": "7200s", "rekey_time": "6660s", "rand_time": "540s"}),
    ("keylife", (("keylife", "3600"),), {},
     {"life_time": "3600s", "rekey_time": "3060s", "rand_time": "540s"}),
    ("salifetime-ovn", (("salifetime", "8h"),), {},
     {"life_time": "28800s", "rekey_time": "28260s", "rand_time": "540s"}),
    ("ipsec-lifetime", (("ipsec-lifetime", "1d"),), {},
     {"life_time": "86400s", "rekey_time": "85860s", "rand_time": "540s"}),
    ("rekeymargin-both-levels", (("rekeymargin", "5m"),),
     {"rekey_time": "10500s", "over_time": "300s", "rand_time": "300s"},
     {"life_time": "3600s", "rekey_time": "3300s", "rand_time": "300s"}),
    ("margintime-fuzz", (("margintime", "10m"), ("rekeyfuzz", "50%"), ("lifetime", "1h"),
                         ("ikelifetime", "4h")),
     {"rekey_time": "13800s", "over_time": "600s", "rand_time": "300s"},
     {"life_time": "3600s", "rekey_time": "3000s", "rand_time": "300s"}),
    ("rekeyfuzz-zero", (("rekeyfuzz", "0%"), ("lifetime", "30m")),
     {"rekey_time": "10260s", "over_time": "540s", "rand_time": "0s"},
     {"life_time": "1800s", "rekey_time": "1260s", "rand_time": "0s"}),
    ("rekey-yes", (("rekey", "yes"),), {}, {}),
    ("lifebytes", (("lifebytes", "1000000"), ("marginbytes", "100000")), {},
     {"life_bytes": "1000000", "rekey_bytes": "900000", "rand_bytes": "100000"}),
    ("lifepackets-fuzz", (("lifepackets", "10000"), ("marginpackets", "1000"),
                          ("rekeyfuzz", "50%")),
     {"rekey_time": "10260s", "over_time": "540s", "rand_time": "270s"},
     {"life_packets": "10000", "rekey_packets": "9000", "rand_packets": "500",
      "life_time": "3600s", "rekey_time": "3060s", "rand_time": "270s"}),
    ("lifebytes-no-margin", (("lifebytes", "1g"),), {},
     {"life_bytes": "1073741824", "rekey_bytes": "1073741824", "rand_bytes": "0"}),
    ("rekey_time", (("rekey_time", "4h"),), {"rekey_time": "14400s"}, {}),
    ("reauth_time", (("reauth_time", "1d"),), {"reauth_time": "86400s"}, {}),
    ("over_time", (("over_time", "0"),), {"over_time": "0s"}, {}),
    ("rand_time", (("rand_time", "5m"),), {"rand_time": "300s"}, {}),
    ("child_rekey_time", (("child_rekey_time", "50m"),), {}, {"rekey_time": "3000s"}),
    ("life_time", (("life_time", "1h"),), {}, {"life_time": "3600s"}),
    ("child_rand_time", (("child_rand_time", "1m"),), {}, {"rand_time": "60s"}),
    ("child-times-agree-with-lifetime",
     (("lifetime", "1h"), ("life_time", "3600s"), ("child_rekey_time", "51m")), {},
     {"life_time": "3600s", "rekey_time": "3060s", "rand_time": "540s"}),
    ("rekey_bytes", (("rekey_bytes", "500m"),), {}, {"rekey_bytes": str(500 * 1024**2)}),
    ("life_bytes", (("life_bytes", "1G"),), {}, {"life_bytes": str(1024**3)}),
    ("rand_bytes", (("rand_bytes", "10k"),), {}, {"rand_bytes": "10240"}),
    ("rekey_packets", (("rekey_packets", "1000000"),), {}, {"rekey_packets": "1000000"}),
    ("life_packets", (("life_packets", "2000000"),), {}, {"life_packets": "2000000"}),
    ("rand_packets", (("rand_packets", "0"),), {}, {"rand_packets": "0"}),
    ("replay_window", (("replay_window", "64"),), {}, {"replay_window": "64"}),
    ("replay-window-ovn", (("replay-window", "128"),), {}, {"replay_window": "128"}),
    ("replay-window-off", (("replay-window", "0"),), {}, {"replay_window": "0"}),
    ("replay-window-max", (("replay_window", "4096"),), {}, {"replay_window": "4096"}),
    ("keyingtries-forever", (("keyingtries", "%forever"),), {"keyingtries": "0"}, {}),
    ("keyingtries-3", (("keyingtries", "3"),), {"keyingtries": "3"}, {}),
    ("mobike-yes", (("mobike", "yes"),), {"mobike": "yes"}, {}),
    ("mobike-no", (("mobike", "no"),), {"mobike": "no"}, {}),
    ("fragmentation-force", (("fragmentation", "force"),), {"fragmentation": "force"}, {}),
    ("fragmentation-accept", (("fragmentation", "accept"),), {"fragmentation": "accept"}, {}),
    ("hw_offload-auto", (("hw_offload", "auto"),), {}, {"hw_offload": "auto"}),
    ("hw_offload-yes", (("hw_offload", "yes"),), {}, {"hw_offload": "yes"}),
    ("nic-offload-crypto", (("nic-offload", "crypto"),), {}, {"hw_offload": "yes"}),
    ("nic-offload-no", (("nic-offload", "no"),), {}, {"hw_offload": "no"}),
    ("nic-offload-auto", (("nic-offload", "auto"),), {}, {"hw_offload": "auto"}),
    ("sha256_96", (("sha256_96", "yes"),), {}, {"sha256_96": "yes"}),
    ("sha2-truncbug", (("sha2-truncbug", "no"),), {}, {"sha256_96": "no"}),
    ("key-case-insensitive", (("ForceEncaps", "yes"),), {"encap": "yes"}, {}),
    ("ovn-documented-example",
     (("replay-window", "128"), ("dpd-delay", "30s"), ("dpd-timeout", "120s"),
      ("salifetime", "8h"), ("encapsulation", "yes")),
     {"encap": "yes", "dpd_delay": "30s", "dpd_timeout": "120s"},
     {"replay_window": "128", "life_time": "28800s", "rekey_time": "28260s",
      "rand_time": "540s"}),
    ("nothing", (), {}, {}),
]  # fmt: skip
DEFAULT_CRYPTO_IDS = {"pfs-no-default-crypto"}


@pytest.mark.parametrize(
    ("options", "conn", "child", "use_default_crypto"),
    [pytest.param(o, c, ch, i in DEFAULT_CRYPTO_IDS, id=i) for i, o, c, ch in MAPPINGS],
)
def test_mapping(options, conn, child, use_default_crypto):
    result = ok(*options, use_default_crypto=use_default_crypto)
    assert result.conn_vici() == conn
    assert result.child_vici() == child


def test_every_accepted_spelling_has_a_mapping_case():
    covered = {key.lower() for _, options, _, _ in MAPPINGS for key, _ in options}
    spellings = {s for option in OPTIONS for s in option.spellings}
    assert spellings - covered == set()


def test_accepted_and_refused_spellings_are_disjoint():
    spellings = [s for option in OPTIONS for s in option.spellings]
    assert len(spellings) == len(set(spellings))
    assert set(spellings) & set(REJECTED) == set()
    assert not [s for s in spellings if s.startswith(("left", "right"))]


def test_settings_record_which_ovsdb_keys_set_what():
    result = ok(("forceencaps", "yes"), ("encapsulation", "yes"), ("ikelifetime", "2h"),
                ("rekeymargin", "10m"))  # fmt: skip
    assert result.origin("conn", "encap") == ("ipsec_encapsulation", "ipsec_forceencaps")
    assert result.origin("conn", "rekey_time") == ("ipsec_ikelifetime", "ipsec_rekeymargin")
    assert result.origin("child", "rekey_time") == ("ipsec_rekeymargin",)
    assert result.origin("conn", "mobike") == ()


def test_vici_values_are_strings_and_lists():
    result = ok(("ike", "aes256gcm16-prfsha256-ecp256!"), ("replay_window", "64"))
    assert result.conn == (("proposals", ("aes256gcm16-prfsha256-ecp256",)),)
    assert result.conn_vici() == {"proposals": ["aes256gcm16-prfsha256-ecp256"]}
    assert result.child_vici() == {"replay_window": "64"}
    assert "esp_proposals" in ok(("esp_proposals", "aes128gcm16")).child_vici()


def test_translation_is_independent_of_option_order():
    options = (("lifetime", "2h"), ("rekeyfuzz", "10%"), ("dpdaction", "hold"),
               ("esp", "aes_gcm256"), ("ike", "aes_gcm256-sha2;dh19"))  # fmt: skip
    assert ok(*options) == ok(*reversed(options))


# ---------------------------------------------------------------------------------------------
# Defaults, --use-default-crypto and the peer-level agreement plan enforces.


def test_default_proposals_match_plan():
    assert plan.IKE_PROPOSALS == IKE_PROPOSALS
    assert plan.ESP_PROPOSALS == ESP_PROPOSALS
    assert default_proposals(False) == (IKE_PROPOSALS, ESP_PROPOSALS)
    assert default_proposals(True) == ((), ())


def test_explicit_proposals_win_over_default_crypto():
    result = ok(("ike", "aes256gcm16-prfsha256-ecp256!"), ("esp", "aes256gcm16!"),
                use_default_crypto=True)  # fmt: skip
    assert result.conn_vici() == {"proposals": ["aes256gcm16-prfsha256-ecp256"]}
    assert result.child_vici() == {"esp_proposals": ["aes256gcm16"]}


def test_conn_differences_names_the_keys_of_both_tunnels():
    first = ok(("forceencaps", "yes"), ("replay_window", "64"))
    second = ok(("dpddelay", "30s"), ("replay_window", "128"))
    assert conn_differences(first, second) == ("ipsec_dpddelay", "ipsec_forceencaps")
    assert conn_differences(first, first) == ()
    # Child-level settings may differ between tunnels to one peer.
    assert conn_differences(ok(("esp", "aes128gcm16!")), ok()) == ()
    # Two spellings with the same effect agree.
    assert conn_differences(ok(("forceencaps", "yes")), ok(("encapsulation", "yes"))) == ()


# ---------------------------------------------------------------------------------------------
# Refusals: the key named, the reason useful.


@pytest.mark.parametrize("key", sorted(REJECTED))
def test_every_refused_key(key):
    errors = refused((key, "x"))
    assert errors == {f"ipsec_{key}": REJECTED[key]}


@pytest.mark.parametrize(
    "key", ["left", "leftid", "rightsubnet", "leftprotoport", "rightupdown", "leftcert"]
)
def test_left_right_keys_are_refused(key):
    reason = refused((key, "x"))[f"ipsec_{key}"]
    assert "left*/right*" in reason


def test_unknown_key_suggests_the_nearest_spelling():
    assert "did you mean ipsec_forceencaps?" in refused(("forcencaps", "yes"))["ipsec_forcencaps"]
    reason = refused(("frobnicate", "1"))["ipsec_frobnicate"]
    assert "not an option" in reason and "docs/ipsec-options.md" in reason


def test_empty_key():
    assert "empty option name" in refused(("", "yes"))["ipsec_"]


REFUSALS: list[tuple[str, tuple[tuple[str, str], ...], str, str]] = [
    # id, options, key named, fragment of the reason
    ("bool", (("forceencaps", "maybe"),), "ipsec_forceencaps", "expected yes or no"),
    ("encapsulation-bad", (("encapsulation", "sometimes"),), "ipsec_encapsulation", "one of"),
    ("encap-bad", (("encap", "2"),), "ipsec_encap", "expected yes or no"),
    ("ike-unknown-alg", (("ike", "aes256-sha999-modp2048"),), "ipsec_ike", "unknown algorithm"),
    ("ike-null", (("ike", "null-sha256-modp2048"),), "ipsec_ike", "no encryption"),
    ("ike-mixed", (("ike", "aes256-aes256gcm16-sha256-modp2048"),), "ipsec_ike",
     "AEAD and classic"),
    ("ike-no-ke", (("ike", "aes256gcm16-prfsha256"),), "ipsec_ike", "key exchange"),
    ("ike-none-ke", (("proposals", "aes256gcm16-prfsha256-none"),), "ipsec_proposals",
     "key exchange"),
    ("ike-no-integ", (("ike", "aes256-prfsha256-modp2048"),), "ipsec_ike", "integrity"),
    ("ike-no-prf", (("ike", "aes256gcm16-modp2048"),), "ipsec_ike", "PRF"),
    ("ike-prf-not-derivable", (("ike", "aes256gcm16-sha256_96-modp2048"),), "ipsec_ike", "PRF"),
    ("ike-modpnull", (("ike", "aes256gcm16-prfsha256-modpnull"),), "ipsec_ike", "no security"),
    ("ike-esn", (("ike", "aes256gcm16-prfsha256-modp2048-esn"),), "ipsec_ike", "ESP proposals"),
    ("ike-empty-item", (("ike", "aes256gcm16-prfsha256-modp2048,,"),), "ipsec_ike",
     "empty proposal"),
    ("ike-empty-alg", (("proposals", "aes256gcm16--modp2048"),), "ipsec_proposals",
     "empty algorithm"),
    ("ike-bang-middle", (("ike", "aes256gcm16-prfsha256-modp2048!,default"),), "ipsec_ike",
     "'!' may only end"),
    ("proposals-bang", (("proposals", "aes256gcm16-prfsha256-modp2048!"),), "ipsec_proposals",
     "always strict"),
    ("ike-too-many", (("ike", ",".join(["aes256gcm16-prfsha256-modp2048"] * 33)),), "ipsec_ike",
     "more than 32"),
    ("ls-keyless", (("ike", "aes_gcm-sha2;dh19"),), "ipsec_ike", "key length"),
    ("ls-ike-no-dh", (("ike", "aes_gcm256-sha2_256"),), "ipsec_ike", "names no key exchange"),
    ("ls-typed", (("ike", "encrypt=aes_gcm256;prf=sha2"),), "ipsec_ike", "typed form"),
    ("ls-aead-integ", (("esp", "aes_gcm256-sha2_256"),), "ipsec_esp", "own integrity"),
    ("ls-unknown", (("esp", "aes_gcm256-whirlpool_512"),), "ipsec_esp", "no strongSwan"),
    ("ls-null", (("esp", "null-sha2_256"),), "ipsec_esp", "no encryption"),
    ("ls-bad-icv-on-cbc", (("esp", "aes_a256-sha2"),), "ipsec_esp", "no strongSwan"),
    ("ls-in-native", (("esp_proposals", "aes_gcm256"),), "ipsec_esp_proposals",
     "translated only in ipsec_esp"),
    ("esp-null", (("esp", "null-sha1"),), "ipsec_esp", "no encryption"),
    ("esp-gmac", (("esp_proposals", "aes256gmac"),), "ipsec_esp_proposals", "no encryption"),
    ("esp-no-integ", (("esp", "aes256!"),), "ipsec_esp", "unauthenticated"),
    ("esp-prf", (("esp", "aes256gcm16-prfsha256"),), "ipsec_esp", "IKE proposals only"),
    ("esp-no-cipher", (("esp_proposals", "sha256-modp2048"),), "ipsec_esp_proposals",
     "no encryption algorithm"),
    ("esp-modpnull", (("esp", "aes256gcm16-modpnull"),), "ipsec_esp", "no security"),
    ("pfs-bad", (("pfs", "perhaps"),), "ipsec_pfs", "expected yes or no"),
    ("pfs-yes-nonstrict", (("pfs", "yes"), ("esp", "aes256gcm16-ecp256")), "ipsec_pfs",
     "not strict"),
    ("pfs-yes-bare", (("pfs", "yes"), ("esp_proposals", "aes256gcm16")), "ipsec_pfs",
     "no DH group"),
    ("pfs-no-group", (("pfs", "no"), ("esp_proposals", "aes256gcm16-ecp256")), "ipsec_pfs",
     "names a DH group"),
    ("phase2-ah", (("phase2", "ah"),), "ipsec_phase2", "does not encrypt"),
    ("keyexchange-ike", (("keyexchange", "ike"),), "ipsec_keyexchange", "IKEv1"),
    ("keyexchange-ikev1", (("keyexchange", "ikev1"),), "ipsec_keyexchange", "IKEv1"),
    ("keyexchange-bad", (("keyexchange", "ikev3"),), "ipsec_keyexchange", "one of ikev2"),
    ("ikev2-no", (("ikev2", "no"),), "ipsec_ikev2", "IKEv1"),
    ("ikev2-never", (("ikev2", "never"),), "ipsec_ikev2", "IKEv1"),
    ("ikev2-permit", (("ikev2", "permit"),), "ipsec_ikev2", "IKEv1"),
    ("version-1", (("version", "1"),), "ipsec_version", "IKEv1"),
    ("version-0", (("version", "0"),), "ipsec_version", "IKEv1"),
    ("type-tunnel", (("type", "tunnel"),), "ipsec_type", "transport mode"),
    ("type-passthrough", (("type", "passthrough"),), "ipsec_type", "transport mode"),
    ("mode-drop", (("mode", "drop"),), "ipsec_mode", "transport mode"),
    ("auto-start", (("auto", "start"),), "ipsec_auto", "plaintext"),
    ("auto-add", (("auto", "add"),), "ipsec_auto", "plaintext"),
    ("start-action-none", (("start_action", "none"),), "ipsec_start_action", "plaintext"),
    ("start-action-start", (("start_action", "start"),), "ipsec_start_action", "plaintext"),
    ("dpddelay-negative", (("dpddelay", "-5s"),), "ipsec_dpddelay", "negative"),
    ("dpddelay-fraction", (("dpddelay", "1.5h"),), "ipsec_dpddelay", "duration such as"),
    ("dpddelay-unit", (("dpd-delay", "5x"),), "ipsec_dpd-delay", "duration such as"),
    ("dpddelay-too-long", (("dpd_delay", "2d"),), "ipsec_dpd_delay", "maximum of 1d"),
    ("dpddelay-unicode-digits", (("dpddelay", "\u0663\u0660s"),), "ipsec_dpddelay", "ASCII"),
    ("dpdtimeout-bad", (("dpd-timeout", "soon"),), "ipsec_dpd-timeout", "duration such as"),
    ("dpdaction-bad", (("dpdaction", "explode"),), "ipsec_dpdaction", "one of"),
    ("dpd_action-hold", (("dpd_action", "hold"),), "ipsec_dpd_action", "one of"),
    ("closeaction-bad", (("closeaction", "trap"),), "ipsec_closeaction", "one of"),
    ("close_action-bad", (("close_action", "hold"),), "ipsec_close_action", "one of"),
    ("ikelifetime-short", (("ikelifetime", "5s"),), "ipsec_ikelifetime", "shorter than 10s"),
    ("ikelifetime-long", (("ikelifetime", "40d"),), "ipsec_ikelifetime", "maximum of 30d"),
    ("ikelifetime-vs-margin", (("ikelifetime", "1h"), ("rekeymargin", "40m")),
     "ipsec_rekeymargin", "must exceed rekeymargin"),
    ("lifetime-vs-default-margin", (("lifetime", "10m"),), "ipsec_lifetime",
     "must exceed rekeymargin"),
    ("margin-vs-default-lifetime", (("rekeymargin", "1h"),), "ipsec_rekeymargin",
     "ipsec.conf's default"),
    ("rekeyfuzz-bad", (("rekeyfuzz", "lots"),), "ipsec_rekeyfuzz", "percentage"),
    ("rekeyfuzz-huge", (("rekeyfuzz", "2000%"),), "ipsec_rekeyfuzz", "at most 1000%"),
    ("reauth-bad", (("reauth", "sometimes"),), "ipsec_reauth", "expected yes or no"),
    ("rekey-no", (("rekey", "no"),), "ipsec_rekey", "longer lifetimes"),
    ("marginbytes-alone", (("marginbytes", "100"),), "ipsec_marginbytes", "needs ipsec_lifebytes"),
    ("marginpackets-too-big", (("lifepackets", "100"), ("marginpackets", "100")),
     "ipsec_marginpackets", "below lifepackets"),
    ("lifebytes-bad", (("lifebytes", "lots"),), "ipsec_lifebytes", "expected a number"),
    ("rekey_time-short", (("rekey_time", "1s"),), "ipsec_rekey_time", "shorter than 10s"),
    ("reauth_time-bad", (("reauth_time", "daily"),), "ipsec_reauth_time", "duration such as"),
    ("over_time-long", (("over_time", "31d"),), "ipsec_over_time", "maximum of 30d"),
    ("rand-vs-rekey-conn", (("rekey_time", "1h"), ("rand_time", "2h")), "ipsec_rand_time",
     "must be below rekey_time"),
    ("rand-vs-rekey-child", (("child_rekey_time", "1h"), ("child_rand_time", "1h")),
     "ipsec_child_rand_time", "must be below rekey_time"),
    ("child-rekey-vs-life", (("child_rekey_time", "2h"), ("life_time", "1h")),
     "ipsec_life_time", "must be below life_time"),
    ("life_bytes-huge", (("life_bytes", "1000000000000000000"),), "ipsec_life_bytes",
     "expected a number"),
    ("life_bytes-over-max", (("life_bytes", "999999999g"),), "ipsec_life_bytes", "larger"),
    ("rekey_packets-negative", (("rekey_packets", "-1"),), "ipsec_rekey_packets", "negative"),
    ("replay-window-too-big", (("replay-window", "5000"),), "ipsec_replay-window",
     "between 0 and 4096"),
    ("replay-window-negative", (("replay_window", "-1"),), "ipsec_replay_window", "negative"),
    ("replay-window-text", (("replay_window", "big"),), "ipsec_replay_window", "whole number"),
    ("keyingtries-big", (("keyingtries", "1001"),), "ipsec_keyingtries", "between 0 and 1000"),
    ("keyingtries-text", (("keyingtries", "forever"),), "ipsec_keyingtries", "whole number"),
    ("mobike-bad", (("mobike", "maybe"),), "ipsec_mobike", "expected yes or no"),
    ("fragmentation-bad", (("fragmentation", "always"),), "ipsec_fragmentation", "one of"),
    ("hw_offload-crypto", (("hw_offload", "crypto"),), "ipsec_hw_offload", "one of"),
    ("nic-offload-packet", (("nic-offload", "packet"),), "ipsec_nic-offload", "strongSwan 6"),
    ("sha256_96-bad", (("sha256_96", "96"),), "ipsec_sha256_96", "expected yes or no"),
    ("empty-value", (("dpddelay", ""),), "ipsec_dpddelay", "empty value"),
    ("blank-value", (("mobike", "   "),), "ipsec_mobike", "empty value"),
    ("newline", (("ike", "aes256gcm16-prfsha256-modp2048\nleftupdown=/bin/sh"),), "ipsec_ike",
     "control characters"),
    ("tab", (("mobike", "no\t"),), "ipsec_mobike", "control characters"),
    ("nul", (("encap", "yes\x00"),), "ipsec_encap", "control characters"),
    ("del", (("encap", "yes\x7f"),), "ipsec_encap", "control characters"),
    ("non-ascii", (("mobike", "n\u00f6"),), "ipsec_mobike", "ASCII"),
    ("too-long", (("esp", "a" * 1025),), "ipsec_esp", "longer than 1024"),
    ("twice", (("mobike", "yes"), ("mobike", "no")), "ipsec_mobike", "given twice"),
    ("conflict-encap", (("forceencaps", "yes"), ("encap", "no")), "ipsec_encap",
     "conflicts with ipsec_forceencaps"),
    ("conflict-proposals", (("ike", "aes256gcm16-prfsha256-modp2048"),
                            ("proposals", "aes256gcm16-prfsha256-modp2048")),
     "ipsec_proposals", "conflicts with ipsec_ike"),
    ("conflict-dpd", (("dpdaction", "none"), ("dpddelay", "30s")), "ipsec_dpdaction",
     "conflicts with ipsec_dpddelay"),
    ("conflict-margin-spellings", (("rekeymargin", "5m"), ("margintime", "6m")),
     "ipsec_margintime", "conflicts with ipsec_rekeymargin"),
    ("conflict-lifetime-native", (("lifetime", "1h"), ("life_time", "2h")), "ipsec_life_time",
     "conflicts with ipsec_lifetime"),
    ("conflict-offload", (("nic-offload", "yes"), ("hw_offload", "no")), "ipsec_hw_offload",
     "conflicts with ipsec_nic-offload"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "key", "fragment"), [pytest.param(o, k, f, id=i) for i, o, k, f in REFUSALS]
)
def test_refusal(options, key, fragment):
    errors = refused(*options)
    assert key in errors, errors
    assert fragment in errors[key]


def test_conflicts_name_both_keys():
    errors = refused(("forceencaps", "yes"), ("encap", "no"))
    assert set(errors) == {"ipsec_forceencaps", "ipsec_encap"}
    assert "ipsec_encap" in errors["ipsec_forceencaps"]
    errors = refused(("pfs", "no"), ("esp", "aes256gcm16-ecp256!"))
    assert set(errors) == {"ipsec_pfs", "ipsec_esp"}


def test_refusals_that_depend_on_default_crypto():
    errors = refused(("pfs", "yes"), use_default_crypto=True)
    assert "no DH group" in errors["ipsec_pfs"]
    errors = refused(("esp", "aes_gcm256"), use_default_crypto=True)
    assert "ipsec_pfs=no" in errors["ipsec_esp"]
    # ... which an IKE proposal naming a group, or pfs=no, resolves.
    assert ok(("esp", "aes_gcm256"), ("pfs", "no"), use_default_crypto=True).child_vici() == {
        "esp_proposals": ["aes256gcm16"]
    }


def test_a_refused_value_is_not_echoed_in_full():
    errors = refused(("dpddelay", "x" * 1000))
    assert len(errors["ipsec_dpddelay"]) < 200


def test_only_bad_keys_are_named():
    errors = refused(("forceencaps", "yes"), ("leftupdown", "/bin/sh"), ("dpddelay", "soon"))
    assert set(errors) == {"ipsec_leftupdown", "ipsec_dpddelay"}


def test_internal_errors_cost_the_tunnel_not_the_daemon(monkeypatch):
    def broken(*_args):
        raise RuntimeError("bug")

    monkeypatch.setattr(translate_module, "_translate", broken)
    result, errors = translate([("mobike", "yes")])
    assert result is None
    assert errors[0].key == "ipsec_*" and "internal error" in errors[0].reason


# ---------------------------------------------------------------------------------------------
# Properties.

# Keys that must never reach charon from an option, whatever the input.
FORBIDDEN_OUTPUT = {
    "start_action", "mode", "local_ts", "remote_ts", "if_id_in", "if_id_out", "mark_in",
    "mark_out", "mark_in_sa", "set_mark_in", "set_mark_out", "local_addrs", "remote_addrs",
    "local_port", "remote_port", "updown", "priority", "reqid", "policies", "local", "remote",
    "children", "ah_proposals", "unique", "version",
}  # fmt: skip
INTERESTING_KEYS = sorted(
    {s for o in OPTIONS for s in o.spellings} | set(REJECTED) | {"leftupdown", "bogus", ""}
)
INTERESTING_VALUES = [
    "yes", "no", "auto", "none", "clear", "hold", "restart", "trap", "route", "transport",
    "tunnel", "ikev2", "2", "0", "%forever", "30s", "1h", "10m", "3600", "100%", "-1", "",
    "aes256gcm16-prfsha256-modp2048", "aes256gcm16-modp2048!", "aes_gcm256-sha2_256;dh19",
    "aes_gcm256", "default", "null-sha1", "4096", "1g", "crypto", "packet", "a\nb",
]  # fmt: skip
option_lists = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(INTERESTING_KEYS), st.text(max_size=20)),
        st.one_of(st.sampled_from(INTERESTING_VALUES), st.text(max_size=40)),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(options=option_lists, use_default_crypto=st.booleans())
def test_arbitrary_options_never_raise(options, use_default_crypto):
    result, errors = translate(options, use_default_crypto=use_default_crypto)
    names = {f"ipsec_{key}" for key, _ in options}
    if result is None:
        assert errors
        for error in errors:
            assert error.key in names
            assert error.reason and "internal error" not in error.reason
        return
    assert errors == ()
    for level in (result.conn, result.child):
        for key, value in level:
            assert key not in FORBIDDEN_OUTPUT
            for text in value if isinstance(value, tuple) else (value,):
                assert isinstance(text, str) and text
                assert text.isascii() and text.isprintable()
    for _, keys in result.sources:
        assert set(keys) <= names


@settings(max_examples=200, deadline=None)
@given(
    options=st.lists(
        st.tuples(st.sampled_from(INTERESTING_KEYS), st.sampled_from(INTERESTING_VALUES)),
        max_size=6,
        unique_by=lambda kv: kv[0],
    )
)
def test_result_does_not_depend_on_option_order(options):
    first, _ = translate(options)
    second, _ = translate(list(reversed(options)))
    assert first == second


# ---------------------------------------------------------------------------------------------
# The operator documentation embeds the generated table.


def test_doc_embeds_the_generated_table():
    text = DOC.read_text(encoding="utf-8")
    begin = "<!-- BEGIN GENERATED: ovs_ipsec.core.ike_options.docs.render_markdown() -->\n"
    end = "<!-- END GENERATED -->"
    assert begin in text and end in text
    embedded = text.split(begin, 1)[1].split(end, 1)[0]
    assert embedded == render_markdown(), (
        "docs/ipsec-options.md is stale: regenerate the block from render_markdown()"
    )


def test_doc_table_lists_every_spelling_and_refusal():
    table = render_markdown()
    for option in OPTIONS:
        for spelling in option.spellings:
            assert f"`ipsec_{spelling}`" in table
    for key in REJECTED:
        assert f"`ipsec_{key}`" in table


@pytest.mark.parametrize(
    ("word", "expected"),
    [("yes", "yes"), ("TRUE", "yes"), ("on", "yes"), ("1", "yes"), ("no", "no"), ("off", "no")],
)
def test_yes_no_options_read_the_words_ipsec_fail_open_reads(word: str, expected: str) -> None:
    """One boolean reader (parse.parse_bool) for the ipsec_* options and ipsec_fail_open."""
    assert ok(("mobike", word)).conn_vici()["mobike"] == expected


@pytest.mark.parametrize("word", ["enabled", "disabled", "y"])
def test_other_boolean_words_are_refused(word: str) -> None:
    assert "expected yes or no" in refused(("mobike", word))["ipsec_mobike"]
