"""The certificates OVS IPsec needs, built in memory as PEM bytes with `cryptography` (no
subprocess): the library behind `ovs-ipsec-pki` (tools/pki_tool.py) and the tests.

`make_key`, `make_ca`, `make_host_cert`, `make_self_signed`, `make_csr` and `sign_csr` make what
OVS expects by default; their keyword knobs build the bad certificates tests need (CN-only or
CN-less subjects, missing or different SAN, X.509 v1, validity in the past or future, another CA,
key types charon cannot use).

Host certificates are X.509 v3 with subject CN=NAME (O=ORG first with `org`), subjectAltName
DNS:NAME, EKU serverAuth+clientAuth, basicConstraints CA:FALSE, keyUsage, SKI and AKI. Defaults:
ECDSA P-256 keys (RSA 3072 as the alternative), 730 days for hosts and 3650 for the CA.

Over 400 lines because it is one certificate factory: the knobs for bad certificates (the X.509 v1
rewrite of the DER in `_build` above all) share every builder with the good ones.

May import: pki, cryptography, stdlib.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ovs_ipsec.core import pki

HOST_DAYS = 730
CA_DAYS = 3650
CA_NAME = "ovs-ipsec CA"
DEFAULT_RSA_BITS = 3072
# Certificates start this far in the past, so peers with slightly slow clocks accept them.
BACKDATE = dt.timedelta(minutes=5)


# Key types the library can make. "ec" (P-256) and "rsa" are offered on the command line; the
# others exist for tests ("dsa" is a type charon cannot authenticate with).
KEY_TYPES = ("ec", "rsa", "ed25519", "dsa")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CertAndKey(NamedTuple):
    """A certificate and its private key, both PEM; unpacks as (cert_pem, key_pem)."""

    cert_pem: bytes
    key_pem: bytes


class PkiToolError(Exception):
    """A request the builders refuse (a bad CSR); the command line reports it as
    `ovs-ipsec-pki: error: ...` and exit code 1."""


def make_key(key_type: str = "ec", bits: int = DEFAULT_RSA_BITS) -> bytes:
    """A new unencrypted private key, PKCS#8 PEM. `bits` applies to RSA and DSA only."""
    return _key_pem(_new_key(key_type, bits))


def _new_key(key_type: str, bits: int) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "dsa":
        return pki.quiet_dsa("generate_private_key")(key_size=bits)
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(key_pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, (PrivateKey, pki.quiet_dsa("DSAPrivateKey"))):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def host_name(name: str, org: str | None = None) -> x509.Name:
    """The subject of a host certificate: `O=org` (if any), then `CN=name` (RFC 4514: CN first)."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _subject(name: str, org: str | None, subject: x509.Name | str | None) -> x509.Name:
    if subject is None:
        return host_name(name, org)
    if isinstance(subject, str):
        return x509.Name.from_rfc4514_string(subject)
    return subject


def _general_names(entries: Sequence[str]) -> list[x509.GeneralName]:
    """ "IP:10.0.0.1", "email:a@b", "DNS:x" or a bare "x" (DNS) to GeneralNames."""
    names: list[x509.GeneralName] = []
    for entry in entries:
        kind, _, value = entry.partition(":")
        if kind == "IP" and value:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "email" and value:
            names.append(x509.RFC822Name(value))
        elif kind == "DNS" and value:
            names.append(x509.DNSName(value))
        else:
            names.append(x509.DNSName(entry))
    return names


def _validity(
    now: dt.datetime | None,
    days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    now = now or dt.datetime.now(dt.UTC)
    start = not_before or now - BACKDATE
    end = not_after or (start if not_before else now) + dt.timedelta(days=days)
    return start, end


def _build(builder: x509.CertificateBuilder, signing_key: PrivateKey, version: int) -> bytes:
    """Sign `builder` and return PEM; `version=1` turns the result into an X.509 v1 certificate.

    cryptography only builds v3 certificates. A v1 certificate is the same TBSCertificate without
    its `[0] EXPLICIT Version` field (and without extensions, which v1 cannot carry), so for v1
    the v3 TBS is rewritten and signed again with the same algorithm.
    """
    cert = builder.sign(signing_key, _hash_for(signing_key))
    if version == 3:
        return cert.public_bytes(serialization.Encoding.PEM)
    if version != 1:
        raise ValueError(f"cannot build X.509 v{version}; only 1 and 3")
    if cert.extensions:
        raise ValueError("an X.509 v1 certificate cannot carry extensions")
    tbs = cert.tbs_certificate_bytes
    tag, body = _der_read(tbs, 0)[:2]
    v3_field = b"\xa0\x03\x02\x01\x02"
    if tag != 0x30 or not body.startswith(v3_field):
        raise ValueError("unexpected TBSCertificate layout")
    tbs_v1 = _der_tlv(0x30, body[len(v3_field) :])
    outer = _der_read(cert.public_bytes(serialization.Encoding.DER), 0)[1]
    _, _, after_tbs = _der_read(outer, 0)
    algorithm_tag, algorithm_body, _ = _der_read(outer, after_tbs)
    signature = _sign_raw(signing_key, tbs_v1)
    der = _der_tlv(
        0x30,
        tbs_v1 + _der_tlv(algorithm_tag, algorithm_body) + _der_tlv(0x03, b"\x00" + signature),
    )
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _sign_raw(key: PrivateKey, data: bytes) -> bytes:
    digest = _hash_for(key) or hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, pki.quiet_dsa("DSAPrivateKey")):
        return key.sign(data, digest)
    return key.sign(data)  # EdDSA: no separate digest


def _der_read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, offset after) of the DER TLV at `offset` (definite lengths only)."""
    tag = data[offset]
    length = data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    return tag, data[offset : offset + length], offset + length


def _der_tlv(tag: int, contents: bytes) -> bytes:
    length = len(contents)
    if length < 0x80:
        return bytes([tag, length]) + contents
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + contents


def _ski(public_key: object) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]


def make_ca(
    name: str = CA_NAME,
    *,
    org: str | None = None,
    subject: x509.Name | str | None = None,
    key_type: str = "ec",
    bits: int = DEFAULT_RSA_BITS,
    key_pem: bytes | None = None,
    days: int = CA_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    now: dt.datetime | None = None,
    version: int = 3,
) -> CertAndKey:
    """A self-signed CA: basicConstraints CA:TRUE (critical), keyCertSign+cRLSign, SKI, AKI."""
    key = _load_key(key_pem) if key_pem else _new_key(key_type, bits)
    name_ = _subject(name, org, subject)
    start, end = _validity(now, days, not_before, not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name_)
        .issuer_name(name_)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if version == 3:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_ski(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
    return CertAndKey(_build(builder, key, version), _key_pem(key))


def _host_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    issuer_public_key: object,
    san: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    version: int,
    is_ca: bool,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if version != 3:
        return builder
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=rsa_key,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_ski(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if san:
        # Critical when the subject is empty (RFC 5280 4.2.1.6), as tests may ask for that.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(san)), critical=len(subject) == 0
        )
    return builder


def make_host_cert(
    name: str,
    ca: tuple[bytes, bytes],
    *,
    org: str | None = None,
    subject: x509.Name | str | None = None,
    san: Sequence[str] | None = None,
    key_type: str = "ec",
    bits: int = DEFAULT_RSA_BITS,
    key_pem: bytes | None = None,
    days: int = HOST_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    now: dt.datetime | None = None,
    version: int = 3,
    is_ca: bool = False,
) -> CertAndKey:
    """A host certificate for `name` signed by `ca` (cert_pem, key_pem), with a new key.

    By default it meets OVS's requirements: subject `[O=org,] CN=name`, SAN `DNS:name`. For tests:
    `subject` replaces the whole subject (RFC 4514 string or Name; e.g. "O=lab" has no CN), `san`
    replaces the SAN entries ("x", "DNS:x", "IP:a.b.c.d", "email:a@b"; empty: no SAN extension),
    `key_pem` reuses a key, `version=1` builds an X.509 v1 certificate (no extensions),
    `not_before`/`not_after`/`now` place the validity anywhere.
    """
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    ca_key = _load_key(ca[1])
    key = _load_key(key_pem) if key_pem else _new_key(key_type, bits)
    start, end = _validity(now, days, not_before, not_after)
    builder = _host_builder(
        _subject(name, org, subject),
        ca_cert.subject,
        key.public_key(),
        ca_key.public_key(),
        [name] if san is None else san,
        start,
        end,
        version,
        is_ca,
    )
    return CertAndKey(_build(builder, ca_key, version), _key_pem(key))


def make_self_signed(
    name: str,
    *,
    org: str | None = None,
    subject: x509.Name | str | None = None,
    san: Sequence[str] | None = None,
    key_type: str = "ec",
    bits: int = DEFAULT_RSA_BITS,
    key_pem: bytes | None = None,
    days: int = HOST_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    now: dt.datetime | None = None,
    version: int = 3,
) -> CertAndKey:
    """A self-signed host certificate (CA:FALSE) meeting the same requirements; same options."""
    key = _load_key(key_pem) if key_pem else _new_key(key_type, bits)
    name_ = _subject(name, org, subject)
    start, end = _validity(now, days, not_before, not_after)
    builder = _host_builder(
        name_,
        name_,
        key.public_key(),
        key.public_key(),
        [name] if san is None else san,
        start,
        end,
        version,
        False,
    )
    return CertAndKey(_build(builder, key, version), _key_pem(key))


def make_csr(name: str, key_pem: bytes, *, org: str | None = None) -> bytes:
    """A CSR (PEM) for subject `[O=org,] CN=name` asking for SAN DNS:name (as `ovs-pki req -u`)."""
    key = _load_key(key_pem)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(host_name(name, org))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    return builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.PEM)


def sign_csr(
    csr_pem: bytes,
    ca: tuple[bytes, bytes],
    *,
    days: int = HOST_DAYS,
    now: dt.datetime | None = None,
) -> bytes:
    """Sign a CSR as a host certificate (PEM). The CSR's subject is kept and must have exactly one
    CN; the extensions are the CA's choice (those of `make_host_cert`, SAN DNS = CN), not the
    CSR's. Raises PkiToolError for a CSR that is unparsable, badly signed or has no single CN.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise PkiToolError(f"cannot parse the certificate request: {exc}") from exc
    if not valid:
        raise PkiToolError("the certificate request's signature is not valid")
    if len(cns) != 1:
        raise PkiToolError(
            f"the certificate request's subject '{csr.subject.rfc4514_string()}' must have exactly "
            f"one CN, not {len(cns)}"
        )
    cn = str(cns[0].value)
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    ca_key = _load_key(ca[1])
    start, end = _validity(now, days, None, None)
    builder = _host_builder(
        csr.subject,
        ca_cert.subject,
        csr.public_key(),
        ca_key.public_key(),
        [cn],
        start,
        end,
        3,
        False,
    )
    return _build(builder, ca_key, 3)
