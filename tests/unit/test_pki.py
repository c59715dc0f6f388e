"""ovs_ipsec.core.pki: every validation failure, the subjects upstream gets wrong (W16), and
fuzzing.

Certificates come from `pki_builders` with a fixed `NOW`, so nothing depends on
the clock; EC P-256 keys keep the whole module well under a second.

Over 400 lines: one test per validation failure and per subject form.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core import pki
from ovs_ipsec.core.model import Invalid
from ovs_ipsec.tools import pki_builders

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers.


@pytest.fixture(scope="module")
def ca() -> pki_builders.CertAndKey:
    return pki_builders.make_ca("test CA", org="lab", now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> pki_builders.CertAndKey:
    return pki_builders.make_ca("other CA", now=NOW)


@pytest.fixture(scope="module")
def host1(ca: pki_builders.CertAndKey) -> pki_builders.CertAndKey:
    return pki_builders.make_host_cert("host1", ca, org="lab", now=NOW)


def one(cert_pem: bytes) -> pki.CertInfo:
    infos, invalid = pki.parse_certs(cert_pem)
    assert invalid is None, invalid
    assert len(infos) == 1
    return infos[0]


def host(ca: pki_builders.CertAndKey, name: str = "host1", **kwargs: object) -> pki.CertInfo:
    kwargs.setdefault("now", NOW)
    return one(pki_builders.make_host_cert(name, ca, **kwargs).cert_pem)  # type: ignore[arg-type]


def check(info: pki.CertInfo, now: dt.datetime = NOW) -> tuple[list[str], list[str]]:
    errors, warnings = pki.check_host_cert(info, now, key="certificate")
    assert all(e.key == "certificate" for e in errors)
    return [e.reason for e in errors], warnings


def pem_bodies(pem: bytes) -> list[str]:
    """The base64 lines of every PEM block, to prove they appear nowhere in a message."""
    return [
        line.decode()
        for line in pem.splitlines()
        if line and not line.startswith(b"-----") and len(line) > 16
    ]


# ---------------------------------------------------------------------------------------------
# parse_certs: what is in a file.


def test_parse_one_certificate(ca: pki_builders.CertAndKey, host1: pki_builders.CertAndKey) -> None:
    info = one(host1.cert_pem)
    cert = x509.load_pem_x509_certificate(host1.cert_pem)
    assert info.subject == "CN=host1,O=lab"
    assert info.issuer == "CN=test CA,O=lab"
    assert info.cn == "host1" and info.cns == ("host1",)
    assert info.san_dns == ("host1",) and info.san == ("DNS:host1",)
    assert info.version == 3
    assert not info.is_ca and not info.self_issued
    assert info.serial == cert.serial_number
    assert info.fingerprint_sha256 == ":".join(
        f"{b:02X}" for b in cert.fingerprint(hashes.SHA256())
    )
    assert info.not_before == NOW - pki_builders.BACKDATE
    assert info.not_after == NOW + dt.timedelta(days=pki_builders.HOST_DAYS)
    assert info.not_before.tzinfo is not None
    assert info.key_algorithm == "EC" and info.key_curve == "secp256r1"
    assert info.key_description == "EC P-256"
    assert info.pem == host1.cert_pem
    assert pki.cert_identity(info) == "host1"
    assert "BEGIN" not in repr(info)  # the PEM stays out of log lines


def test_parse_bundle_of_two(
    ca: pki_builders.CertAndKey, other_ca: pki_builders.CertAndKey
) -> None:
    infos, invalid = pki.parse_certs(ca.cert_pem + b"\n" + other_ca.cert_pem)
    assert invalid is None
    assert [i.subject for i in infos] == ["CN=test CA,O=lab", "CN=other CA"]
    assert [i.pem for i in infos] == [ca.cert_pem, other_ca.cert_pem]


def test_parse_ignores_other_blocks_and_text(host1: pki_builders.CertAndKey) -> None:
    data = b"Bag Attributes\n  friendlyName: x\n" + host1.key_pem + host1.cert_pem
    data = data.replace(b"\n", b"\r\n")
    assert one(data).cn == "host1"


@pytest.mark.parametrize("data", [b"", b"   \n\t\n"])
def test_parse_empty(data: bytes) -> None:
    assert pki.parse_certs(data) == ((), Invalid("certificate", "file is empty"))


def test_parse_uses_the_key_name(host1: pki_builders.CertAndKey) -> None:
    assert pki.parse_certs(b"", key="remote_cert")[1] == Invalid("remote_cert", "file is empty")


def test_parse_garbage() -> None:
    assert pki.parse_certs(b"\x00\xffhello")[1] == Invalid("certificate", "not a PEM certificate")


def test_parse_der(host1: pki_builders.CertAndKey) -> None:
    der = x509.load_pem_x509_certificate(host1.cert_pem).public_bytes(serialization.Encoding.DER)
    infos, invalid = pki.parse_certs(der)
    assert infos == ()
    assert invalid is not None
    assert invalid.reason.startswith("not a PEM certificate: the file is DER")


def test_parse_key_file_given_as_certificate(host1: pki_builders.CertAndKey) -> None:
    infos, invalid = pki.parse_certs(host1.key_pem)
    assert infos == ()
    assert invalid == Invalid(
        "certificate", "not a PEM certificate: the file holds only PRIVATE KEY"
    )


def test_parse_broken_certificate(host1: pki_builders.CertAndKey) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nTUlJQm9ndXM=\n-----END CERTIFICATE-----\n"
    infos, invalid = pki.parse_certs(broken)
    assert infos == ()
    assert invalid is not None and invalid.reason.startswith("certificate cannot be parsed: ")


def test_parse_bundle_is_all_or_nothing(host1: pki_builders.CertAndKey) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    infos, invalid = pki.parse_certs(host1.cert_pem + broken)
    assert infos == ()
    assert invalid is not None and invalid.reason.startswith("certificate #2 cannot be parsed")


# ---------------------------------------------------------------------------------------------
# check_host_cert: the OVS requirements.


def test_good_host_certificate(host1: pki_builders.CertAndKey) -> None:
    assert check(one(host1.cert_pem)) == ([], [])


def test_cn_only_subject_is_accepted(ca: pki_builders.CertAndKey) -> None:
    """Upstream's `CN=(.+?),` finds no CN in `CN=host9` (W16); we take any valid subject."""
    info = host(ca, "host9")
    assert info.subject == "CN=host9"
    assert info.cn == "host9"
    assert check(info) == ([], [])


@pytest.mark.parametrize(
    ("subject", "rfc4514"),
    [
        # Name order is DER order; RFC 4514 prints it reversed (most specific first).
        ([("O", "lab"), ("CN", "host1")], "CN=host1,O=lab"),  # CN first in RFC 4514
        ([("CN", "host1"), ("O", "lab")], "O=lab,CN=host1"),  # CN last in RFC 4514
        ([("C", "DE"), ("CN", "host1"), ("OU", "net"), ("O", "lab")], "O=lab,OU=net,CN=host1,C=DE"),
    ],
)
def test_cn_anywhere_in_the_subject(
    ca: pki_builders.CertAndKey, subject: list[tuple[str, str]], rfc4514: str
) -> None:
    oids = {
        "O": x509.NameOID.ORGANIZATION_NAME,
        "OU": x509.NameOID.ORGANIZATIONAL_UNIT_NAME,
        "C": x509.NameOID.COUNTRY_NAME,
        "CN": x509.NameOID.COMMON_NAME,
    }
    name = x509.Name([x509.NameAttribute(oids[k], v) for k, v in subject])
    info = host(ca, "host1", subject=name)
    assert info.subject == rfc4514
    assert info.cn == "host1"
    assert check(info) == ([], [])


def test_escaped_comma_in_cn(ca: pki_builders.CertAndKey) -> None:
    """Upstream truncates `CN=a\\,b,O=lab` at the escaped comma (W16)."""
    info = host(ca, "web,1", subject=r"CN=web\,1,O=lab")
    assert info.subject == r"CN=web\,1,O=lab"
    assert info.cn == "web,1"
    assert pki.cert_identity(info) == "web,1"
    assert check(info) == ([], [])


def test_cn_matches_san_case_insensitively(ca: pki_builders.CertAndKey) -> None:
    assert check(host(ca, "Host1", san=["host1"])) == ([], [])


def test_v1_certificate(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, version=1)
    assert info.version == 1
    assert info.san == ()
    errors, _ = check(info)
    assert errors == [
        "certificate is X.509 v1; OVS IPsec needs X.509 v3 with a subjectAltName DNS entry "
        "equal to the CN"
    ]


def test_cn_missing(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, subject="O=lab")
    assert info.cn is None and pki.cert_identity(info) is None
    assert check(info)[0] == ["certificate subject 'O=lab' has no CN"]


def test_empty_subject(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, subject=x509.Name([]))
    assert check(info)[0] == ["certificate subject '' has no CN"]


def test_two_cns(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, subject="CN=a,CN=b", san=["a", "b"])
    assert info.cn is None and set(info.cns) == {"a", "b"}
    assert check(info)[0] == ["certificate subject 'CN=a,CN=b' has 2 CNs; exactly one is needed"]


def test_cn_not_in_san(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, san=["host2", "IP:10.0.0.1"])
    assert check(info)[0] == [
        "certificate CN 'host1' is not a subjectAltName DNS entry "
        "(subjectAltName: DNS:host2, IP:10.0.0.1)"
    ]


def test_cn_only_as_ip_san(ca: pki_builders.CertAndKey) -> None:
    errors, _ = check(host(ca, "10.0.0.1", san=["IP:10.0.0.1"]))
    assert errors == [
        "certificate CN '10.0.0.1' is not a subjectAltName DNS entry (subjectAltName: IP:10.0.0.1)"
    ]


def test_san_missing(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, san=())
    assert info.san == () and info.san_dns == ()
    assert check(info)[0] == [
        "certificate has no subjectAltName; it needs DNS:host1 (the CN), which charon matches "
        "the identity against"
    ]


def test_cn_with_control_character(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, "bad\nname", san=["badname"])
    assert check(info)[0] == [
        "certificate CN in 'CN=bad\\x0aname' is empty or has control characters"
    ]


def test_expired(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, not_before=NOW - 20 * DAY, not_after=NOW - DAY)
    assert check(info) == (["certificate expired on 2030-05-31 12:00:00 UTC"], [])


def test_not_yet_valid(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, not_before=NOW + DAY)
    assert check(info) == (["certificate is not valid before 2030-06-02 12:00:00 UTC"], [])


@pytest.mark.parametrize(
    ("left", "text"),
    [
        (10 * DAY, "in 10 days"),
        (DAY + dt.timedelta(hours=1), "in 1 day"),
        (dt.timedelta(hours=3), "in less than a day"),
    ],
)
def test_expiring_soon_is_a_warning(
    ca: pki_builders.CertAndKey, left: dt.timedelta, text: str
) -> None:
    info = host(ca, not_after=NOW + left)
    errors, warnings = check(info)
    assert errors == []
    assert warnings == [f"certificate expires {text}, on {pki._fmt_time(NOW + left)}"]


def test_warn_days_is_adjustable(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, not_after=NOW + 10 * DAY)
    assert pki.check_host_cert(info, NOW, key="certificate", warn_days=5) == ([], [])
    assert pki.check_host_cert(info, NOW, key="certificate", warn_days=0) == ([], [])


def test_naive_now_is_utc(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    naive = NOW.replace(tzinfo=None)
    assert pki.check_host_cert(info, naive, key="certificate")[0]
    assert pki.check_host_cert(info, naive - 2 * DAY, key="certificate")[0] == []


def test_all_problems_are_reported(ca: pki_builders.CertAndKey) -> None:
    info = host(ca, subject="O=lab", version=1, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    errors, _ = check(info)
    assert len(errors) == 3


def test_remote_cert_key_name(ca: pki_builders.CertAndKey) -> None:
    errors, _ = pki.check_host_cert(host(ca, san=()), NOW, key="remote_cert")
    assert [e.key for e in errors] == ["remote_cert"]


def test_dsa_key_is_an_error() -> None:
    info = one(pki_builders.make_self_signed("host1", key_type="dsa", bits=1024, now=NOW).cert_pem)
    assert info.key_algorithm == "DSA"
    assert check(info)[0] == [
        "certificate: DSA 1024 keys cannot be used for IKEv2 authentication; "
        "use RSA, ECDSA or EdDSA"
    ]


def test_weak_rsa_key_is_a_warning() -> None:
    info = one(pki_builders.make_self_signed("host1", key_type="rsa", bits=1024, now=NOW).cert_pem)
    assert check(info) == ([], ["certificate: RSA key of 1024 bits is weak; use 2048 bits or more"])


@pytest.mark.parametrize(("key_type", "described"), [("rsa", "RSA 2048"), ("ed25519", "Ed25519")])
def test_other_good_key_types(ca: pki_builders.CertAndKey, key_type: str, described: str) -> None:
    info = host(ca, key_type=key_type, bits=2048)
    assert info.key_description == described
    assert check(info) == ([], [])


def test_unsupported_curve_is_an_error() -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = one(pki_builders.make_self_signed("host1", key_pem=pem, now=NOW).cert_pem)
    assert check(info)[0] == [
        "certificate: EC curve secp256k1 is not supported by charon; use P-256, P-384 or P-521"
    ]


def test_self_signed_host_certificate() -> None:
    info = one(pki_builders.make_self_signed("host2", now=NOW).cert_pem)
    assert info.self_issued and not info.is_ca
    assert pki.issued_by(info, [info])
    assert check(info) == ([], [])


def test_issued_by(
    ca: pki_builders.CertAndKey, other_ca: pki_builders.CertAndKey, host1: pki_builders.CertAndKey
) -> None:
    ca_info, other_info, host_info = one(ca.cert_pem), one(other_ca.cert_pem), one(host1.cert_pem)
    assert pki.issued_by(host_info, [ca_info])
    assert pki.issued_by(host_info, [other_info, ca_info])
    assert not pki.issued_by(host_info, [other_info])
    assert not pki.issued_by(host(other_ca), [ca_info])
    assert not pki.issued_by(host_info, [])


# ---------------------------------------------------------------------------------------------
# check_ca_certs: bundles and rollover.


def ca_check(
    *cas: pki_builders.CertAndKey,
) -> tuple[list[str], list[str], list[str]]:
    infos = [one(c.cert_pem) for c in cas]
    usable, errors, warnings = pki.check_ca_certs(infos, NOW)
    assert all(e.key == "ca_cert" for e in errors)
    return [u.subject for u in usable], [e.reason for e in errors], warnings


def test_one_ca(ca: pki_builders.CertAndKey) -> None:
    assert ca_check(ca) == (["CN=test CA,O=lab"], [], [])


def test_two_cas_both_trusted(
    ca: pki_builders.CertAndKey, other_ca: pki_builders.CertAndKey
) -> None:
    assert ca_check(ca, other_ca) == (["CN=test CA,O=lab", "CN=other CA"], [], [])


def test_duplicate_ca_is_dropped(ca: pki_builders.CertAndKey) -> None:
    assert ca_check(ca, ca) == (["CN=test CA,O=lab"], [], [])


def test_no_ca() -> None:
    assert pki.check_ca_certs([], NOW) == (
        (),
        [Invalid("ca_cert", "no CA certificate in the file")],
        [],
    )


def test_host_certificate_as_ca(host1: pki_builders.CertAndKey) -> None:
    assert ca_check(host1) == (
        [],
        ["certificate 'CN=host1,O=lab' is not a CA certificate (no basicConstraints CA:TRUE)"],
        [],
    )


def test_bundle_with_a_non_ca(ca: pki_builders.CertAndKey, host1: pki_builders.CertAndKey) -> None:
    assert ca_check(ca, host1) == (
        [],
        [
            "CA certificate #2 (CN=host1,O=lab) is not a CA certificate "
            "(no basicConstraints CA:TRUE)"
        ],
        [],
    )


def test_v1_ca_is_not_a_ca() -> None:
    v1 = pki_builders.make_ca("old CA", version=1, now=NOW)
    assert one(v1.cert_pem).version == 1
    assert ca_check(v1)[1] == [
        "certificate 'CN=old CA' is not a CA certificate (no basicConstraints CA:TRUE)"
    ]


def test_rollover_expired_ca_is_skipped(ca: pki_builders.CertAndKey) -> None:
    old = pki_builders.make_ca("old CA", not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    usable, errors, warnings = ca_check(old, ca)
    assert usable == ["CN=test CA,O=lab"] and errors == []
    assert warnings == ["CA certificate #1 (CN=old CA) expired on 2030-05-31 12:00:00 UTC; ignored"]


def test_rollover_next_ca_is_kept(ca: pki_builders.CertAndKey) -> None:
    nxt = pki_builders.make_ca("next CA", not_before=NOW + 7 * DAY)
    usable, errors, warnings = ca_check(ca, nxt)
    assert usable == ["CN=test CA,O=lab", "CN=next CA"] and errors == []
    assert warnings == [
        "CA certificate #2 (CN=next CA) is not valid before 2030-06-08 12:00:00 UTC; "
        "kept for when it becomes valid"
    ]


def test_no_ca_valid_now() -> None:
    old = pki_builders.make_ca("old CA", not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    nxt = pki_builders.make_ca("next CA", not_before=NOW + 7 * DAY)
    usable, errors, _ = ca_check(old, nxt)
    assert usable == []
    assert errors == [
        "no CA certificate is currently valid: "
        "CA certificate #1 (CN=old CA) expired on 2030-05-31 12:00:00 UTC; "
        "CA certificate #2 (CN=next CA) is not valid before 2030-06-08 12:00:00 UTC"
    ]


def test_single_expired_ca() -> None:
    old = pki_builders.make_ca("old CA", not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    assert ca_check(old) == ([], ["CA certificate expired on 2030-05-31 12:00:00 UTC"], [])


def test_ca_expiring_soon() -> None:
    soon = pki_builders.make_ca("soon CA", not_after=NOW + 3 * DAY, now=NOW)
    assert ca_check(soon) == (
        ["CN=soon CA"],
        [],
        ["CA certificate expires in 3 days, on 2030-06-04 12:00:00 UTC"],
    )


def test_ca_with_unsupported_key() -> None:
    dsa_ca = pki_builders.make_ca("dsa CA", key_type="dsa", bits=1024, now=NOW)
    assert ca_check(dsa_ca)[1] == [
        "CA certificate: DSA 1024 keys cannot be used for IKEv2 authentication; "
        "use RSA, ECDSA or EdDSA"
    ]


# ---------------------------------------------------------------------------------------------
# Private keys.


def traditional(key_pem: bytes, password: bytes | None = None) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    )


def test_key_pkcs8(host1: pki_builders.CertAndKey) -> None:
    info, invalid = pki.parse_private_key(host1.key_pem)
    assert invalid is None and info is not None
    assert info.key_description == "EC P-256"
    assert info.pem.reveal().encode() == host1.key_pem
    assert pki.key_matches_cert(info, one(host1.cert_pem))


def test_key_traditional_ec(host1: pki_builders.CertAndKey) -> None:
    pem = traditional(host1.key_pem)
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    info, invalid = pki.parse_private_key(pem)
    assert invalid is None and info is not None
    assert info.pem.reveal().startswith("-----BEGIN PRIVATE KEY-----")  # normalised to PKCS#8
    assert pki.key_matches_cert(info, one(host1.cert_pem))


def test_key_traditional_rsa() -> None:
    made = pki_builders.make_self_signed("h", key_type="rsa", bits=2048, now=NOW)
    pem = traditional(made.key_pem)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    info, invalid = pki.parse_private_key(pem)
    assert invalid is None and info is not None
    assert info.key_description == "RSA 2048"
    assert pki.key_matches_cert(info, one(made.cert_pem))


def test_key_with_certificate_in_the_same_file(host1: pki_builders.CertAndKey) -> None:
    info, invalid = pki.parse_private_key(host1.cert_pem + host1.key_pem)
    assert invalid is None and info is not None


def test_key_mismatch(ca: pki_builders.CertAndKey, host1: pki_builders.CertAndKey) -> None:
    info, _ = pki.parse_private_key(ca.key_pem)
    assert info is not None
    assert not pki.key_matches_cert(info, one(host1.cert_pem))
    # Same key re-used in a new certificate: matches.
    reissued = pki_builders.make_host_cert("host1", ca, key_pem=ca.key_pem, now=NOW)
    assert pki.key_matches_cert(info, one(reissued.cert_pem))


ENCRYPTED = Invalid(
    "private_key", "private key is encrypted (passphrase-protected); an unencrypted key is needed"
)


def test_key_encrypted_pkcs8(host1: pki_builders.CertAndKey) -> None:
    key = serialization.load_pem_private_key(host1.key_pem, password=None)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"swordfish"),
    )
    assert pki.parse_private_key(pem) == (None, ENCRYPTED)


def test_key_encrypted_traditional() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = traditional(plain, b"swordfish")
    assert b"Proc-Type: 4,ENCRYPTED" in pem
    assert pki.parse_private_key(pem) == (None, ENCRYPTED)


@pytest.mark.parametrize("data", [b"", b"\n \n"])
def test_key_empty(data: bytes) -> None:
    assert pki.parse_private_key(data) == (None, Invalid("private_key", "file is empty"))


def test_key_garbage() -> None:
    assert pki.parse_private_key(b"swordfish\n") == (
        None,
        Invalid("private_key", "not a PEM private key"),
    )


def test_key_der(host1: pki_builders.CertAndKey) -> None:
    key = serialization.load_pem_private_key(host1.key_pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info, invalid = pki.parse_private_key(der)
    assert info is None and invalid is not None
    assert invalid.reason.startswith("not a PEM private key: the file is DER")


def test_certificate_given_as_key(host1: pki_builders.CertAndKey) -> None:
    assert pki.parse_private_key(host1.cert_pem, key="certificate") == (
        None,
        Invalid("certificate", "not a PEM private key: the file holds only CERTIFICATE"),
    )


def test_two_keys(host1: pki_builders.CertAndKey, ca: pki_builders.CertAndKey) -> None:
    assert pki.parse_private_key(host1.key_pem + ca.key_pem) == (
        None,
        Invalid("private_key", "the file holds 2 private keys; expected one"),
    )


def test_broken_key_reveals_nothing(host1: pki_builders.CertAndKey) -> None:
    lines = host1.key_pem.splitlines()
    broken = b"\n".join([lines[0], lines[1][:-8] + b"AAAAAAAA", *lines[2:]])
    info, invalid = pki.parse_private_key(broken)
    assert info is None
    assert invalid == Invalid("private_key", "private key cannot be parsed")


def test_dsa_key_rejected() -> None:
    made = pki_builders.make_self_signed("h", key_type="dsa", bits=1024, now=NOW)
    assert pki.parse_private_key(made.key_pem) == (
        None,
        Invalid(
            "private_key",
            "DSA 1024 private keys cannot be used for IKEv2 authentication; "
            "use RSA, ECDSA or EdDSA",
        ),
    )


def test_key_material_never_shown(host1: pki_builders.CertAndKey) -> None:
    info, _ = pki.parse_private_key(host1.key_pem)
    assert info is not None
    text = repr(info) + str(info)
    secret_lines = pem_bodies(host1.key_pem)
    assert secret_lines and not any(line in text for line in secret_lines)
    assert "Secret(<redacted>)" in text


# ---------------------------------------------------------------------------------------------
# Rotation and identity helpers.


def test_content_digest(host1: pki_builders.CertAndKey, ca: pki_builders.CertAndKey) -> None:
    digest = pki.content_digest(host1.cert_pem)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert digest == pki.content_digest(bytes(host1.cert_pem))
    assert digest != pki.content_digest(ca.cert_pem)


# ---------------------------------------------------------------------------------------------
# Never raises, whatever the bytes.


def _armored(label: bytes, body: bytes) -> bytes:
    text = base64.encodebytes(body)
    return b"-----BEGIN " + label + b"-----\n" + text + b"-----END " + label + b"-----\n"


@pytest.fixture(scope="module")
def sample_der(host1: pki_builders.CertAndKey) -> bytes:
    return x509.load_pem_x509_certificate(host1.cert_pem).public_bytes(serialization.Encoding.DER)


_LABELS = st.sampled_from(
    [b"CERTIFICATE", b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"X509 CERTIFICATE"]
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    infos, invalid = pki.parse_certs(data)
    assert (invalid is None) == bool(infos)
    key, key_invalid = pki.parse_private_key(data)
    assert (key_invalid is None) == (key is not None)


@settings(max_examples=200, deadline=None)
@given(label=_LABELS, body=st.binary(max_size=1024))
def test_armored_garbage_never_raises(label: bytes, body: bytes) -> None:
    data = _armored(label, body)
    assert pki.parse_certs(data)[1] is not None
    assert pki.parse_private_key(data)[1] is not None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_certificates_never_raise(sample_der: bytes, data: st.DataObject) -> None:
    der = bytearray(sample_der)
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    for blob in (_armored(b"CERTIFICATE", bytes(der)), _armored(b"CERTIFICATE", bytes(der[:cut]))):
        infos, invalid = pki.parse_certs(blob)
        for info in infos:
            pki.check_host_cert(info, NOW, key="certificate")
            pki.check_ca_certs([info], NOW)
            pki.issued_by(info, [info])
        pki.parse_private_key(blob)
        assert (invalid is None) == bool(infos)
