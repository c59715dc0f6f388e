"""Pure inspection of the certificates and private keys named in OVSDB.

Someone else reads the files; this module gets their bytes and the current time, and answers with
frozen data (`CertInfo`, `PrivateKeyInfo`) or with reasons (`model.Invalid`, warning strings). It
never raises on bad input, never does I/O, and never puts key material into any text it returns.

What it checks is what charon needs for OVS's certificate modes (ovs-ipsec-howto "Authentication
Methods"): an X.509 v3 host certificate whose subject has exactly one CN that is also one of its
subjectAltName DNS entries (charon uses the bare CN as an FQDN identity and finds it in the SAN),
inside its validity period; a private key matching it; CA certificates with basicConstraints
CA:TRUE. Unlike upstream (W16), any valid subject is accepted: CN only, CN first or last, escaped
commas. Text taken from a certificate for display (subject, issuer, SAN) has its control
characters escaped, so a hostile certificate cannot forge log lines.

Over 400 lines because certificates and private keys are inspected with the same PEM/DER splitting,
key facts and control-character escaping; split in two, each half would reach into the other's
private helpers.

May import: model, log_text, cryptography, stdlib.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from ovs_ipsec.core import log_text
from ovs_ipsec.core.model import Invalid, Secret

# One PEM block: label and base64 body (RFC 7468, lax about whitespace and headers in the body).
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
_ENCRYPTED_KEY_LABEL = b"ENCRYPTED PRIVATE KEY"
# RFC 1421 header of a traditional ("BEGIN RSA PRIVATE KEY") key encrypted by openssl.
_PROC_TYPE_ENCRYPTED = re.compile(rb"^Proc-Type:[ \t]*4[ \t]*,[ \t]*ENCRYPTED", re.MULTILINE)
# Key algorithms charon (5.9, openssl plugin) can authenticate IKEv2 with.
_SUPPORTED_KEYS = ("RSA", "EC", "Ed25519", "Ed448")
_SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_UTC = dt.UTC
# Characters that must not reach charon identities, VICI messages or log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# cryptography parses lazily, so a malformed certificate or key can surface as any of several
# exception types (ValueError, InvalidVersion, DuplicateExtension, UnsupportedGeneralNameType,
# UnsupportedAlgorithm, TypeError, ...) at the first attribute access. File contents are untrusted
# input, and the daemon must turn them into a reason rather than die (upstream W6), so the parse
# boundaries below catch Exception on purpose.


# ---------------------------------------------------------------------------------------------
# Data.


@dataclass(frozen=True)
class CertInfo:
    """One parsed certificate; everything the daemon or `ovs-ipsec-pki show` needs from it."""

    pem: bytes = field(repr=False)  # this certificate alone, PEM (what charon gets over VICI)
    subject: str  # RFC 4514 (most specific RDN first, as openssl -nameopt RFC2253); for display
    issuer: str  # the same, for display
    cn: str | None  # the CN when the subject has exactly one, else None (see `cns`)
    cns: tuple[str, ...]  # every CN attribute of the subject
    san_dns: tuple[str, ...]  # subjectAltName DNS entries
    san: tuple[str, ...]  # every subjectAltName entry for display: "DNS:x", "IP:y", ...
    version: int  # 1 or 3
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    is_ca: bool  # basicConstraints CA:TRUE
    self_issued: bool  # issuer name equals subject name
    fingerprint_sha256: str  # "AB:CD:..." like `openssl x509 -fingerprint -sha256`
    serial: int
    key_algorithm: str  # "RSA", "EC", "Ed25519", "Ed448", "DSA" or "unknown"
    key_size: int  # bits (RSA/DSA modulus, EC curve size, 256/456 for EdDSA), 0 if unknown
    key_curve: str | None  # EC curve name, e.g. "secp256r1"
    spki_der: bytes = field(repr=False)  # public key (SubjectPublicKeyInfo, DER), for matching

    @property
    def key_description(self) -> str:
        return _describe_key(self.key_algorithm, self.key_size, self.key_curve)


@dataclass(frozen=True)
class PrivateKeyInfo:
    """An unencrypted private key. `pem` is PKCS#8 PEM, normalised, and never shown in a repr."""

    pem: Secret
    key_algorithm: str
    key_size: int
    key_curve: str | None
    spki_der: bytes = field(repr=False)  # public key (SubjectPublicKeyInfo, DER)

    @property
    def key_description(self) -> str:
        return _describe_key(self.key_algorithm, self.key_size, self.key_curve)


# ---------------------------------------------------------------------------------------------
# Helpers.


def content_digest(data: bytes) -> str:
    """A cheap, stable fingerprint of file contents, to notice rotation without a path change."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for each PEM block in `data`, in order."""
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _labels(blocks: Sequence[tuple[bytes, bytes]]) -> str:
    seen: list[str] = []
    for label, _ in blocks:
        text = label.decode("ascii")
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)


def _utc(value: dt.datetime) -> dt.datetime:
    """`value` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


def _fmt_time(value: dt.datetime) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe_key(algorithm: str, size: int, curve: str | None) -> str:
    if algorithm == "EC":
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(curve or '', curve or '?')}"
    if algorithm in ("RSA", "DSA"):
        return f"{algorithm} {size}"
    return algorithm


@contextlib.contextmanager
def dsa_quietly() -> Iterator[None]:
    """cryptography warns whenever DSA is touched, loading an operator's DSA file included. DSA
    is only recognised here to be refused by name (charon cannot use it), and the PKI tool makes
    DSA keys only for tests that show that: the warning would say nothing to an operator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def quiet_dsa(name: str) -> type:
    """A class or function of cryptography's DSA module, without its deprecation warning."""
    with dsa_quietly():
        return getattr(dsa, name)


def _key_facts(public_key: object) -> tuple[str, int, str | None]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size, None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC", public_key.curve.key_size, public_key.curve.name
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448", 456, None
    if isinstance(public_key, quiet_dsa("DSAPublicKey")):
        return "DSA", public_key.key_size, None
    return "unknown", 0, None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def printable(text: str) -> str:
    """`text` with control characters escaped, fit for a log line or a terminal (whole: a
    certificate bounds its own names)."""
    return log_text.printable(text, limit=None)


def _format_general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"dirName:{name.value.rfc4514_string()}"
    return type(name).__name__


def _cert_info(cert: x509.Certificate) -> CertInfo:
    """Everything from a loaded certificate; may raise on a malformed one (lazy parsing)."""
    version = 1 if cert.version == x509.Version.v1 else 3
    cns = tuple(
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_names: list[x509.GeneralName] = list(san_ext)
    except x509.ExtensionNotFound:
        san_names = []
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    with dsa_quietly():
        public_key = cert.public_key()
    algorithm, size, curve = _key_facts(public_key)
    digest = cert.fingerprint(hashes.SHA256())
    return CertInfo(
        pem=cert.public_bytes(serialization.Encoding.PEM),
        subject=printable(cert.subject.rfc4514_string()),
        issuer=printable(cert.issuer.rfc4514_string()),
        cn=cns[0] if len(cns) == 1 else None,
        cns=cns,
        san_dns=tuple(n.value for n in san_names if isinstance(n, x509.DNSName)),
        san=tuple(printable(_format_general_name(n)) for n in san_names),
        version=version,
        not_before=_not_before(cert),
        not_after=_not_after(cert),
        is_ca=is_ca,
        self_issued=cert.issuer == cert.subject,
        fingerprint_sha256=":".join(f"{b:02X}" for b in digest),
        serial=cert.serial_number,
        key_algorithm=algorithm,
        key_size=size,
        key_curve=curve,
        spki_der=_spki(public_key),
    )


def _not_before(cert: x509.Certificate) -> dt.datetime:
    value = getattr(cert, "not_valid_before_utc", None)  # cryptography >= 42
    return value if value is not None else _utc(cert.not_valid_before)


def _not_after(cert: x509.Certificate) -> dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    return value if value is not None else _utc(cert.not_valid_after)


def _looks_like_der_certificate(data: bytes) -> bool:
    if not data.startswith(b"\x30"):
        return False
    try:
        x509.load_der_x509_certificate(data)
    except Exception:  # untrusted input, see the note at the top
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Certificates.


def parse_certs(
    data: bytes, *, key: str = "certificate"
) -> tuple[tuple[CertInfo, ...], Invalid | None]:
    """Every PEM certificate in `data` (one for a host certificate, several in a CA bundle).

    All or nothing: if any certificate block cannot be parsed the result is `((), Invalid)`.
    Other PEM blocks (a private key in a combined file, parameters) are ignored when at least one
    certificate is present. `key` is the OVSDB key named in the reason.
    """
    if not data or not data.strip():
        return (), Invalid(key, "file is empty")
    blocks = _pem_blocks(data)
    cert_blocks = [block for label, block in blocks if label in _CERT_LABELS]
    if not cert_blocks:
        if _looks_like_der_certificate(data):
            return (), Invalid(
                key,
                "not a PEM certificate: the file is DER; convert it with "
                "'openssl x509 -inform der -in FILE -out FILE.pem'",
            )
        if blocks:
            return (), Invalid(key, f"not a PEM certificate: the file holds only {_labels(blocks)}")
        return (), Invalid(key, "not a PEM certificate")
    infos: list[CertInfo] = []
    for index, block in enumerate(cert_blocks, start=1):
        where = "certificate" if len(cert_blocks) == 1 else f"certificate #{index}"
        try:
            info = _cert_info(x509.load_pem_x509_certificate(block))
        except Exception as exc:  # untrusted input, see the note at the top
            return (), Invalid(key, f"{where} cannot be parsed: {_short(exc)}")
        infos.append(info)
    return tuple(infos), None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = printable(text)
    return text if len(text) <= 200 else text[:197] + "..."


def _check_validity(
    info: CertInfo, now: dt.datetime, what: str, warn_days: int
) -> tuple[str | None, str | None]:
    """(error, warning) about `info`'s validity period at `now`."""
    now = _utc(now)
    if now < info.not_before:
        return f"{what} is not valid before {_fmt_time(info.not_before)}", None
    if now > info.not_after:
        return f"{what} expired on {_fmt_time(info.not_after)}", None
    left = info.not_after - now
    if left <= dt.timedelta(days=warn_days):
        days = left.days
        when = "in less than a day" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        return None, f"{what} expires {when}, on {_fmt_time(info.not_after)}"
    return None, None


def _key_problem(info: CertInfo) -> tuple[str | None, str | None]:
    """(error, warning) about the certificate's public key type for IKEv2 authentication."""
    if info.key_algorithm not in _SUPPORTED_KEYS:
        return (
            f"{info.key_description} keys cannot be used for IKEv2 authentication; "
            "use RSA, ECDSA or EdDSA",
            None,
        )
    if info.key_algorithm == "EC" and info.key_curve not in _SUPPORTED_CURVES:
        curve = info.key_curve
        return f"EC curve {curve} is not supported by charon; use P-256, P-384 or P-521", None
    if info.key_algorithm == "RSA" and info.key_size < 2048:
        return None, f"RSA key of {info.key_size} bits is weak; use 2048 bits or more"
    return None, None


def check_host_cert(
    info: CertInfo, now: dt.datetime, *, key: str, warn_days: int = 30
) -> tuple[list[Invalid], list[str]]:
    """(errors, warnings) for a host certificate (ours, or a peer's pinned `remote_cert`).

    Errors: not X.509 v3; no CN or several CNs; CN not a subjectAltName DNS entry (compared
    case-insensitively, as charon compares FQDN identities); CN with control characters; expired or
    not yet valid; a key type charon cannot authenticate with. Warnings: expiry within `warn_days`,
    a weak RSA key. All problems are reported, not only the first.
    """
    errors: list[Invalid] = []
    warnings: list[str] = []
    if info.version != 3:
        errors.append(
            Invalid(
                key,
                f"certificate is X.509 v{info.version}; OVS IPsec needs X.509 v3 "
                "with a subjectAltName DNS entry equal to the CN",
            )
        )
    if not info.cns:
        errors.append(Invalid(key, f"certificate subject '{info.subject}' has no CN"))
    elif len(info.cns) > 1:
        errors.append(
            Invalid(
                key,
                f"certificate subject '{info.subject}' has {len(info.cns)} CNs; "
                "exactly one is needed",
            )
        )
    elif not info.cn or _CONTROL.search(info.cn):
        errors.append(
            Invalid(key, f"certificate CN in '{info.subject}' is empty or has control characters")
        )
    elif info.version == 3 and info.cn.lower() not in {n.lower() for n in info.san_dns}:
        # (A v1 certificate has no extensions at all; that is reported above.)
        if not info.san:
            reason = (
                f"certificate has no subjectAltName; it needs DNS:{info.cn} (the CN), which "
                "charon matches the identity against"
            )
        else:
            reason = (
                f"certificate CN '{info.cn}' is not a subjectAltName DNS entry "
                f"(subjectAltName: {', '.join(info.san)})"
            )
        errors.append(Invalid(key, reason))
    error, warning = _check_validity(info, now, "certificate", warn_days)
    if error:
        errors.append(Invalid(key, error))
    if warning:
        warnings.append(warning)
    error, warning = _key_problem(info)
    if error:
        errors.append(Invalid(key, f"certificate: {error}"))
    if warning:
        warnings.append(f"certificate: {warning}")
    return errors, warnings


def check_ca_certs(
    infos: Sequence[CertInfo], now: dt.datetime, *, key: str = "ca_cert", warn_days: int = 30
) -> tuple[tuple[CertInfo, ...], list[Invalid], list[str]]:
    """(usable CAs, errors, warnings) for the contents of a CA bundle.

    Every certificate must be a CA (basicConstraints CA:TRUE); any that is not makes the whole
    bundle an error (it is most likely the wrong file). During a CA rollover a bundle holds old and
    new CAs, so validity is judged per certificate:

    - expired: warning, left out of the usable set (it can never verify anything again);
    - not yet valid: warning, but kept, so a pre-staged next CA starts working at its notBefore
      without anyone re-reading the file (charon checks validity itself when it verifies);
    - expiring within `warn_days`: warning, kept.

    It is an error if no certificate is currently valid. Duplicates are dropped silently. When
    there are errors the usable tuple is empty.
    """
    if not infos:
        return (), [Invalid(key, "no CA certificate in the file")], []
    errors: list[Invalid] = []
    warnings: list[str] = []
    usable: list[CertInfo] = []
    expired: list[str] = []
    pending: list[str] = []
    valid_now = 0
    seen: set[str] = set()
    several = len(infos) > 1
    for index, info in enumerate(infos, start=1):
        if info.fingerprint_sha256 in seen:
            continue
        seen.add(info.fingerprint_sha256)
        what = f"CA certificate #{index} ({info.subject})" if several else "CA certificate"
        if not info.is_ca:
            errors.append(
                Invalid(
                    key,
                    f"{what if several else f'certificate {info.subject!r}'} is not a CA "
                    "certificate (no basicConstraints CA:TRUE)",
                )
            )
            continue
        key_error, key_warning = _key_problem(info)
        if key_error:
            errors.append(Invalid(key, f"{what}: {key_error}"))
        if key_warning:
            warnings.append(f"{what}: {key_warning}")
        error, warning = _check_validity(info, now, what, warn_days)
        if error is None:
            valid_now += 1
            usable.append(info)
            if warning:
                warnings.append(warning)
        elif _utc(now) < info.not_before:
            pending.append(error)
            usable.append(info)
        else:
            expired.append(error)
    if errors:
        return (), errors, warnings
    if valid_now == 0:
        problems = expired + pending
        if not several:
            return (), [Invalid(key, problems[0])], warnings
        return (
            (),
            [Invalid(key, "no CA certificate is currently valid: " + "; ".join(problems))],
            warnings,
        )
    warnings += [f"{e}; ignored" for e in expired]
    warnings += [f"{p}; kept for when it becomes valid" for p in pending]
    return tuple(usable), [], warnings


def issued_by(info: CertInfo, cas: Sequence[CertInfo]) -> bool:
    """Whether `info` carries a valid signature by one of `cas` (no time or chain policy)."""
    try:
        cert = x509.load_pem_x509_certificate(info.pem)
    except Exception:  # untrusted input, see the note at the top
        return False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.pem))
        except Exception:  # any failure means "not issued by this one"
            continue
        return True
    return False


def cert_identity(info: CertInfo) -> str | None:
    """The identity charon should use for this certificate's owner: its CN, or None.

    Charon guesses an identity's type from its text ("10.0.0.1" becomes an IP address, "a@b" an
    e-mail address, "O=x, CN=y" a DN); a caller that needs the CN taken as an FQDN whatever it looks
    like should hand it over as "fqdn:" + identity.
    """
    return info.cn


# ---------------------------------------------------------------------------------------------
# Private keys.


def parse_private_key(
    data: bytes, *, key: str = "private_key"
) -> tuple[PrivateKeyInfo | None, Invalid | None]:
    """The one unencrypted PEM private key in `data` (PKCS#8, or traditional RSA/EC).

    Other blocks (a certificate in a combined file, EC PARAMETERS) are ignored. Reasons never
    include key material or the parser's messages about it.
    """
    if not data or not data.strip():
        return None, Invalid(key, "file is empty")
    blocks = _pem_blocks(data)
    encrypted = any(
        label == _ENCRYPTED_KEY_LABEL
        or (label in _KEY_LABELS and _PROC_TYPE_ENCRYPTED.search(block) is not None)
        for label, block in blocks
    )
    if encrypted:
        return None, Invalid(
            key, "private key is encrypted (passphrase-protected); an unencrypted key is needed"
        )
    key_blocks = [block for label, block in blocks if label in _KEY_LABELS]
    if not key_blocks:
        if blocks:
            return None, Invalid(
                key, f"not a PEM private key: the file holds only {_labels(blocks)}"
            )
        if _looks_like_der_key(data):
            return None, Invalid(
                key,
                "not a PEM private key: the file is DER; convert it with "
                "'openssl pkey -inform der -in FILE -out FILE.pem'",
            )
        return None, Invalid(key, "not a PEM private key")
    if len(key_blocks) > 1:
        return None, Invalid(key, f"the file holds {len(key_blocks)} private keys; expected one")
    try:
        with dsa_quietly():
            private_key = serialization.load_pem_private_key(key_blocks[0], password=None)
    except TypeError:
        # cryptography's way of saying "encrypted, and no password given".
        return None, Invalid(
            key, "private key is encrypted (passphrase-protected); an unencrypted key is needed"
        )
    except Exception:  # untrusted input; its message is not worth the risk
        return None, Invalid(key, "private key cannot be parsed")
    try:
        public_key = private_key.public_key()
        algorithm, size, curve = _key_facts(public_key)
        if algorithm not in _SUPPORTED_KEYS:
            return None, Invalid(
                key,
                f"{_describe_key(algorithm, size, curve)} private keys cannot be used for "
                "IKEv2 authentication; use RSA, ECDSA or EdDSA",
            )
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        info = PrivateKeyInfo(
            pem=Secret(pem.decode("ascii")),
            key_algorithm=algorithm,
            key_size=size,
            key_curve=curve,
            spki_der=_spki(public_key),
        )
    except Exception:  # untrusted input; its message is not worth the risk
        return None, Invalid(key, "private key cannot be parsed")
    return info, None


def _looks_like_der_key(data: bytes) -> bool:
    if not data.startswith(b"\x30"):
        return False
    try:
        serialization.load_der_private_key(data, password=None)
    except Exception:  # untrusted input
        return False
    return True


def key_matches_cert(key_info: PrivateKeyInfo, cert_info: CertInfo) -> bool:
    """Whether the private key belongs to the certificate (same public key)."""
    return key_info.spki_der == cert_info.spki_der
