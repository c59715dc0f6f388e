"""Certificate and key file contents -> the identities and credentials the plan uses. Pure.

The daemon reads the files named in OVSDB (certificate, private_key, ca_cert, each tunnel's
remote_cert) and hands their bytes here, or the reason they could not be read. Nothing here
touches the filesystem, so a content change at the same path is just different input.

May import: model, pki, vici_wire, stdlib.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ovs_ipsec.core.model import Config, Invalid
from ovs_ipsec.core.vici_wire import MAX_VALUE

if TYPE_CHECKING:
    # At run time pki (and with it `cryptography`, about 14 MiB of memory) is imported only
    # once a certificate file has to be read: PSK-only hosts never load it.
    from ovs_ipsec.core import pki

# Bytes of a file, or why it could not be read.
FileContent = bytes | str


def file_digests(files: Mapping[str, FileContent]) -> dict[str, str]:
    """Per path, a digest of the bytes (or why the file could not be read): enough to tell
    that a file changed without keeping what it holds."""
    return {
        path: "sha256:" + hashlib.sha256(content).hexdigest()
        if isinstance(content, bytes)
        else f"unreadable: {content}"
        for path, content in files.items()
    }


@dataclass(frozen=True)
class LocalCredentials:
    identity: str
    cert: pki.CertInfo
    key: pki.PrivateKeyInfo
    key_digest: str


@dataclass(frozen=True)
class Credentials:
    local: LocalCredentials | None = None
    # Why there are no usable local credentials (None when none were configured).
    local_errors: tuple[Invalid, ...] = ()
    cas: tuple[pki.CertInfo, ...] = ()
    ca_errors: tuple[Invalid, ...] = ()
    remote_certs: Mapping[str, pki.CertInfo] = field(default_factory=dict)
    remote_errors: Mapping[str, Invalid] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def resolve(
    config: Config, files: Mapping[str, FileContent], now: dt.datetime, warn_days: int = 30
) -> Credentials:
    if not files:
        return Credentials()
    from ovs_ipsec.core import pki  # noqa: F811 - see the note at the imports

    g = config.global_config
    warnings: list[str] = []

    local: LocalCredentials | None = None
    local_errors: list[Invalid] = []
    if g.certificate and g.private_key and g.certificate in files and g.private_key in files:
        local, local_errors = _resolve_local(
            files[g.certificate], files[g.private_key], now, warn_days, warnings
        )

    cas: tuple[pki.CertInfo, ...] = ()
    ca_errors: list[Invalid] = []
    if g.ca_cert and g.ca_cert in files:
        content = files[g.ca_cert]
        if isinstance(content, str):
            ca_errors.append(Invalid("ca_cert", content))
        else:
            infos, error = pki.parse_certs(content, key="ca_cert")
            if error:
                ca_errors.append(error)
            elif too_large := next(filter(None, (_too_large("ca_cert", i) for i in infos)), None):
                ca_errors.append(too_large)
            else:
                cas, errors, ca_warnings = pki.check_ca_certs(infos, now, warn_days=warn_days)
                ca_errors.extend(errors)
                warnings.extend(f"ca_cert: {w}" for w in ca_warnings)

    remote_certs: dict[str, pki.CertInfo] = {}
    remote_errors: dict[str, Invalid] = {}
    for tunnel in config.tunnels.values():
        path = tunnel.remote_cert
        if not path or path not in files or path in remote_certs or path in remote_errors:
            continue
        info, error = _resolve_host_cert(files[path], "remote_cert", now, warn_days, warnings)
        if info is not None:
            remote_certs[path] = info
        elif error is not None:
            remote_errors[path] = error

    return Credentials(
        local=local,
        local_errors=tuple(local_errors),
        cas=cas,
        ca_errors=tuple(ca_errors),
        remote_certs=remote_certs,
        remote_errors=remote_errors,
        warnings=tuple(warnings),
    )


def _resolve_local(
    cert_content: FileContent,
    key_content: FileContent,
    now: dt.datetime,
    warn_days: int,
    warnings: list[str],
) -> tuple[LocalCredentials | None, list[Invalid]]:
    from ovs_ipsec.core import pki  # noqa: F811

    errors: list[Invalid] = []
    cert, error = _resolve_host_cert(cert_content, "certificate", now, warn_days, warnings)
    if error:
        errors.append(error)
    key: pki.PrivateKeyInfo | None = None
    if isinstance(key_content, str):
        errors.append(Invalid("private_key", key_content))
    else:
        key, key_error = pki.parse_private_key(key_content, key="private_key")
        if key_error:
            errors.append(key_error)
    if cert is None or key is None or errors:
        return None, errors
    if not pki.key_matches_cert(key, cert):
        return None, [Invalid("private_key", "does not match the public key of certificate")]
    identity = pki.cert_identity(cert)
    assert identity is not None  # check_host_cert rejects certificates without one CN
    digest = pki.content_digest(key.pem.reveal().encode())
    return LocalCredentials(identity=identity, cert=cert, key=key, key_digest=digest), []


def _resolve_host_cert(
    content: FileContent, key: str, now: dt.datetime, warn_days: int, warnings: list[str]
) -> tuple[pki.CertInfo | None, Invalid | None]:
    from ovs_ipsec.core import pki  # noqa: F811

    if isinstance(content, str):
        return None, Invalid(key, content)
    infos, error = pki.parse_certs(content, key=key)
    if error:
        return None, error
    if len(infos) != 1:
        return None, Invalid(key, f"holds {len(infos)} certificates; expected exactly one")
    if too_large := _too_large(key, infos[0]):
        return None, too_large
    errors, cert_warnings = pki.check_host_cert(infos[0], now, key=key, warn_days=warn_days)
    warnings.extend(f"{key}: {w}" for w in cert_warnings)
    if errors:
        return None, errors[0] if len(errors) == 1 else Invalid(
            key, "; ".join(e.reason for e in errors)
        )
    return infos[0], None


def _too_large(key: str, info: pki.CertInfo) -> Invalid | None:
    """A certificate charon cannot be given: VICI carries it as one value (a PEM of 80 KiB, a
    certificate with a thousand SANs say, used to stop the daemon at every start)."""
    if len(info.pem) <= MAX_VALUE:
        return None
    return Invalid(key, f"a certificate of {len(info.pem)} bytes as PEM; charon takes at most "
                        f"{MAX_VALUE} in one VICI value")  # fmt: skip
