"""`ovs-ipsec-pki`: make and inspect the certificates OVS IPsec needs (the parts of ovs-pki we use).

Two faces. The library functions (`make_key`, `make_ca`, `make_host_cert`, `make_self_signed`,
`make_csr`, `sign_csr`) build PEM bytes in memory with `cryptography`, no subprocess, and can also
build the bad certificates tests need (CN-only or CN-less subjects, missing or different SAN, X.509
v1, validity in the past or future, another CA). The command line writes files into `--dir`:

    init                cacert.pem, cakey.pem                 (a CA; --force to replace it)
    req NAME            NAME-privkey.pem, NAME-req.pem        (key and CSR)
    sign NAME           NAME-cert.pem                         (from NAME-req.pem, by the CA)
    host NAME           NAME-privkey.pem, NAME-cert.pem       (key and CA-signed certificate)
    self-signed NAME    NAME-privkey.pem, NAME-cert.pem       (key and self-signed certificate)
    show FILE           what FILE holds, and whether OVS IPsec can use it

Host certificates are X.509 v3 with subject CN=NAME (O=ORG first with --org), subjectAltName
DNS:NAME, EKU serverAuth+clientAuth, basicConstraints CA:FALSE, keyUsage, SKI and AKI. Defaults:
ECDSA P-256 keys (--key-type rsa --bits 3072 as the alternative), 730 days for hosts and 3650 for
the CA. Files are written atomically (temporary file, then rename); private keys are created with
mode 0600 and certificates with 0644, both reduced by the umask; existing files are never replaced
without --force. Exit codes: 0 success, 1 failure (including `show` finding a certificate that OVS
IPsec cannot use), 2 usage error.

May import: pki, model, cryptography, stdlib.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ovs_ipsec.core import pki

PROG = "ovs-ipsec-pki"
HOST_DAYS = 730
CA_DAYS = 3650
CA_NAME = "ovs-ipsec CA"
DEFAULT_RSA_BITS = 3072
# Certificates start this far in the past, so peers with slightly slow clocks accept them.
BACKDATE = dt.timedelta(minutes=5)
CA_CERT_FILE = "cacert.pem"
CA_KEY_FILE = "cakey.pem"
# Names the command line accepts: they become file names, the CN and the SAN DNS entry.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")

# Key types the library can make. "ec" (P-256) and "rsa" are offered on the command line; the
# others exist for tests ("dsa" is a type charon cannot authenticate with).
KEY_TYPES = ("ec", "rsa", "ed25519", "dsa")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CertAndKey(NamedTuple):
    """A certificate and its private key, both PEM; unpacks as (cert_pem, key_pem)."""

    cert_pem: bytes
    key_pem: bytes


class PkiToolError(Exception):
    """A failure the command line reports as `ovs-ipsec-pki: error: ...` and exit code 1."""


# ---------------------------------------------------------------------------------------------
# Library: keys, names, certificates.


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


# ---------------------------------------------------------------------------------------------
# Files.


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    The temporary file is created with `mode` (less the umask) from the start, so a private key is
    never readable by others, not even for a moment; it replaces `path` only when complete.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


PRIVATE_KEY = "private key"


def _write_outputs(outputs: Sequence[tuple[Path, bytes, str]], force: bool) -> None:
    """Write (path, data, kind) triples; refuse if any path exists, unless `force`.

    Private keys get mode 0600, everything else 0644 (both less the umask). Keys are written
    first, so a new certificate never sits next to an old key.
    """
    if not force:
        existing = [str(path) for path, _, _ in outputs if path.exists() or path.is_symlink()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise PkiToolError(f"{', '.join(existing)} already {verb}; use --force to replace")
    for path, data, kind in sorted(outputs, key=lambda o: o[2] != PRIVATE_KEY):
        secret = kind == PRIVATE_KEY
        write_atomic(path, data, 0o600 if secret else 0o644)
        print(f"wrote {path} ({kind}{', mode 0600' if secret else ''})")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiToolError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise PkiToolError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _load_ca(directory: Path) -> CertAndKey:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists():
        raise PkiToolError(f"no CA in {directory}: {cert_path} not found (run '{PROG} init')")
    cert_pem, key_pem = _read(cert_path, "CA certificate"), _read(key_path, "CA private key")
    certs, invalid = pki.parse_certs(cert_pem, key="cacert.pem")
    if invalid:
        raise PkiToolError(f"{cert_path}: {invalid.reason}")
    key_info, invalid = pki.parse_private_key(key_pem, key="cakey.pem")
    if invalid or key_info is None:
        raise PkiToolError(f"{key_path}: {invalid.reason if invalid else 'unusable'}")
    if not pki.key_matches_cert(key_info, certs[0]):
        raise PkiToolError(f"{key_path} does not belong to {cert_path}")
    now = dt.datetime.now(dt.UTC)
    if not certs[0].not_before <= now <= certs[0].not_after:
        raise PkiToolError(f"{cert_path}: the CA certificate is not valid now")
    return CertAndKey(certs[0].pem, key_info.pem.reveal().encode("ascii"))


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise PkiToolError(
            f"invalid NAME {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes the CN, the subjectAltName and part of file names)"
        )
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        raise PkiToolError(
            f"invalid NAME {name!r}: charon would take an IP address as an IP identity, not the CN"
        )
    return name


# ---------------------------------------------------------------------------------------------
# show


def _fmt(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _relative(value: dt.datetime, now: dt.datetime) -> str:
    days = int(abs((value - now).total_seconds()) // 86400)
    span = "less than a day" if days == 0 else f"{days} day{'s' if days != 1 else ''}"
    return f"in {span}" if value >= now else f"{span} ago"


_CERT_BEGIN = re.compile(rb"-----BEGIN (X509 )?CERTIFICATE-----")
_KEY_BEGIN = re.compile(rb"-----BEGIN (ENCRYPTED |RSA |EC )?PRIVATE KEY-----")
_CSR_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"


def describe(data: bytes, now: dt.datetime, *, warn_days: int = 30) -> tuple[list[str], bool]:
    """The `show` report for a file's contents: (lines, usable). Never contains key material."""
    has_cert = _CERT_BEGIN.search(data) is not None
    has_key = _KEY_BEGIN.search(data) is not None
    has_csr = _CSR_BEGIN in data
    lines: list[str] = []
    ok = True
    certs, cert_invalid = pki.parse_certs(data)
    if cert_invalid is not None and (has_cert or not (has_key or has_csr)):
        lines.append(f"NOT OK: {cert_invalid.reason}")
        ok = False
    bundle = len(certs) > 1 and all(c.is_ca for c in certs)
    for index, info in enumerate(certs, start=1):
        cert_lines, cert_ok = _describe_cert(info, now, warn_days, index, len(certs))
        lines += cert_lines
        # In a CA bundle one expired CA is normal during a rollover; the bundle verdict decides.
        ok = ok and (cert_ok or bundle)
    if bundle:
        usable, errors, _ = pki.check_ca_certs(certs, now, warn_days=warn_days)
        if errors:
            ok = False
            lines.append("bundle: NOT OK as ca_cert")
            lines += [f"    - {e.reason}" for e in errors]
        else:
            lines.append(
                f"bundle: OK as ca_cert ({len(usable)} of {len(certs)} CA certificates used)"
            )
    if has_key:
        key_info, key_invalid = pki.parse_private_key(data)
        if key_info is None:
            ok = False
            lines.append(f"private key: NOT OK: {key_invalid.reason if key_invalid else '?'}")
        else:
            lines.append(f"private key: {key_info.key_description} (key material not shown)")
            if certs:
                match = pki.key_matches_cert(key_info, certs[0])
                ok = ok and match
                lines.append(f"  {'matches' if match else 'does NOT match'} the first certificate")
    if has_csr:
        csr_lines, csr_ok = _describe_csr(data)
        lines += csr_lines
        ok = ok and csr_ok
    return lines, ok


def _describe_cert(
    info: pki.CertInfo, now: dt.datetime, warn_days: int, index: int, count: int
) -> tuple[list[str], bool]:
    lines = [f"certificate {index} of {count}:" if count > 1 else "certificate:"]
    lines += [
        f"  subject:     {info.subject}",
        f"  issuer:      {info.issuer}" + ("  (self-issued)" if info.self_issued else ""),
        f"  SAN:         {', '.join(info.san) if info.san else '(none)'}",
        f"  version:     X.509 v{info.version}",
        f"  serial:      {info.serial:#x}",
        f"  not before:  {_fmt(info.not_before)} ({_relative(info.not_before, now)})",
        f"  not after:   {_fmt(info.not_after)} ({_relative(info.not_after, now)})",
        f"  key:         {info.key_description}",
        f"  SHA-256:     {info.fingerprint_sha256}",
        f"  CA:          {'yes' if info.is_ca else 'no'}",
    ]
    if info.is_ca:
        _, errors, warnings = pki.check_ca_certs([info], now, warn_days=warn_days)
        good = "OK: usable as ca_cert"
    else:
        errors, warnings = pki.check_host_cert(info, now, key="certificate", warn_days=warn_days)
        good = f"OK: usable as certificate or remote_cert, identity {pki.cert_identity(info)!r}"
    lines += [f"  warning:     {w}" for w in warnings]
    if errors:
        lines.append("  verdict:     NOT OK for OVS IPsec")
        lines += [f"    - {e.reason}" for e in errors]
    else:
        lines.append(f"  verdict:     {good}")
    return lines, not errors


def _describe_csr(data: bytes) -> tuple[list[str], bool]:
    try:
        csr = x509.load_pem_x509_csr(data)
        subject = pki.printable(csr.subject.rfc4514_string())
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            san_text = pki.printable(", ".join(f"DNS:{n}" for n in dns))
        except x509.ExtensionNotFound:
            san_text = "(none requested)"
        valid = csr.is_signature_valid
    except Exception as exc:  # untrusted input
        return [f"certificate request: NOT OK: cannot be parsed: {pki.printable(str(exc))}"], False
    lines = [
        "certificate request (sign it with 'ovs-ipsec-pki sign'):",
        f"  subject:     {subject}",
        f"  SAN:         {san_text}",
        f"  signature:   {'valid' if valid else 'NOT valid'}",
    ]
    return lines, valid


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    # --dir is accepted before and after the command. The copy on each command must not share
    # its argparse action with the top-level one, whose default would then override a --dir
    # given before the command.
    dir_help = "directory for the CA and the files made or read (default: current directory)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=argparse.SUPPRESS, help=dir_help)
    making = argparse.ArgumentParser(add_help=False)
    making.add_argument("--force", action="store_true", help="replace existing files")
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="ec (P-256, default) or rsa"
    )
    keyed.add_argument(
        "--bits", type=int, default=DEFAULT_RSA_BITS, help="RSA key size (default: %(default)s)"
    )
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument(
        "--org",
        help="also put O=ORG in the subject (upstream ovs-monitor-ipsec, unlike this one, cannot "
        "read a CN-only subject)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make and inspect certificates for OVS IPsec (ovs-monitor-ipsec).",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error.",
    )
    parser.add_argument("--dir", default=".", help=dir_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init", parents=[common, making, keyed], help=f"create a CA ({CA_CERT_FILE}, {CA_KEY_FILE})"
    )
    p.add_argument("--name", default=CA_NAME, help="the CA's CN (default: %(default)s)")
    p.add_argument("--org", help="also put O=ORG in the CA's subject")
    p.add_argument("--days", type=int, default=CA_DAYS, help="validity (default: %(default)s)")

    p = sub.add_parser(
        "req", parents=[common, making, keyed, named], help="make NAME-privkey.pem, NAME-req.pem"
    )
    p.add_argument("name", metavar="NAME")

    p = sub.add_parser(
        "sign", parents=[common, making], help="sign NAME-req.pem with the CA: NAME-cert.pem"
    )
    p.add_argument("name", metavar="NAME", help="NAME, or the path of NAME-req.pem")
    p.add_argument("--days", type=int, default=HOST_DAYS, help="validity (default: %(default)s)")

    for command, text in (
        ("host", "make NAME-privkey.pem and NAME-cert.pem signed by the CA"),
        ("self-signed", "make NAME-privkey.pem and a self-signed NAME-cert.pem"),
    ):
        p = sub.add_parser(command, parents=[common, making, keyed, named], help=text)
        p.add_argument("name", metavar="NAME")
        p.add_argument(
            "--days", type=int, default=HOST_DAYS, help="validity (default: %(default)s)"
        )

    p = sub.add_parser(
        "show", parents=[common], help="describe FILE and say whether OVS IPsec can use it"
    )
    p.add_argument("file", metavar="FILE", help="certificate, CA bundle, key or request")
    p.add_argument(
        "--warn-days",
        type=int,
        default=30,
        help="warn about expiry this many days ahead (default: %(default)s)",
    )
    return parser


def _cmd_init(args: argparse.Namespace, directory: Path) -> int:
    ca = make_ca(args.name, org=args.org, key_type=args.key_type, bits=args.bits, days=args.days)
    _write_outputs(
        [
            (directory / CA_KEY_FILE, ca.key_pem, PRIVATE_KEY),
            (directory / CA_CERT_FILE, ca.cert_pem, "CA certificate"),
        ],
        args.force,
    )
    return 0


def _cmd_req(args: argparse.Namespace, directory: Path) -> int:
    name = _check_name(args.name)
    key_pem = make_key(args.key_type, args.bits)
    csr_pem = make_csr(name, key_pem, org=args.org)
    _write_outputs(
        [
            (directory / f"{name}-privkey.pem", key_pem, PRIVATE_KEY),
            (directory / f"{name}-req.pem", csr_pem, "certificate request"),
        ],
        args.force,
    )
    return 0


def _cmd_sign(args: argparse.Namespace, directory: Path) -> int:
    arg = args.name
    if arg.endswith("-req.pem"):
        req_path = directory / arg
        name = _check_name(req_path.name[: -len("-req.pem")])
        out_dir = req_path.parent
    else:
        name = _check_name(arg)
        req_path = directory / f"{name}-req.pem"
        out_dir = directory
    ca = _load_ca(directory)
    cert_pem = sign_csr(_read(req_path, "certificate request"), ca, days=args.days)
    _write_outputs([(out_dir / f"{name}-cert.pem", cert_pem, "certificate")], args.force)
    _report_cert(cert_pem)
    return 0


def _cmd_host(args: argparse.Namespace, directory: Path) -> int:
    name = _check_name(args.name)
    if args.command == "host":
        made = make_host_cert(
            name,
            _load_ca(directory),
            org=args.org,
            key_type=args.key_type,
            bits=args.bits,
            days=args.days,
        )
    else:
        made = make_self_signed(
            name, org=args.org, key_type=args.key_type, bits=args.bits, days=args.days
        )
    _write_outputs(
        [
            (directory / f"{name}-privkey.pem", made.key_pem, PRIVATE_KEY),
            (directory / f"{name}-cert.pem", made.cert_pem, "certificate"),
        ],
        args.force,
    )
    _report_cert(made.cert_pem)
    return 0


def _report_cert(cert_pem: bytes) -> None:
    certs, _ = pki.parse_certs(cert_pem)
    for info in certs:
        print(f"  subject {info.subject}, SAN {', '.join(info.san) or '(none)'}")
        print(f"  valid until {_fmt(info.not_after)}, SHA-256 {info.fingerprint_sha256}")


def _cmd_show(args: argparse.Namespace, directory: Path) -> int:
    path = directory / args.file
    data = _read(path, "file")
    lines, ok = describe(data, dt.datetime.now(dt.UTC), warn_days=args.warn_days)
    print(f"{path}:")
    for line in lines:
        print(line)
    if b"PRIVATE KEY" in data:
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                print(f"warning: {path} holds a private key but has mode {mode:04o}; use 0600")
    return 0 if ok else 1


_COMMANDS = {
    "init": _cmd_init,
    "req": _cmd_req,
    "sign": _cmd_sign,
    "host": _cmd_host,
    "self-signed": _cmd_host,
    "show": _cmd_show,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    directory = Path(args.dir)
    try:
        if args.command != "show" and not directory.is_dir():
            raise PkiToolError(f"{directory} is not a directory")
        if getattr(args, "days", 1) <= 0:
            raise PkiToolError("--days must be positive")
        if getattr(args, "key_type", None) == "rsa" and not 2048 <= args.bits <= 16384:
            raise PkiToolError("--bits must be between 2048 and 16384")
        return _COMMANDS[args.command](args, directory)
    except PkiToolError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
