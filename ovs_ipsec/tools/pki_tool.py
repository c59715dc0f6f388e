"""`ovs-ipsec-pki`: make and inspect the certificates OVS IPsec needs (the parts of ovs-pki we use).

The certificates come from tools/pki_builders.py (in memory); this is the command line, which
writes them into `--dir` and reports on files:

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

Over 400 lines, all of it the command line: six commands, their argument parser, the atomic file
writes and `show`'s report (`describe`).

May import: pki, pki_builders, cryptography, stdlib.
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

from cryptography import x509

from ovs_ipsec.core import pki
from ovs_ipsec.tools.pki_builders import (
    CA_DAYS,
    CA_NAME,
    DEFAULT_RSA_BITS,
    HOST_DAYS,
    CertAndKey,
    PkiToolError,
    make_ca,
    make_csr,
    make_host_cert,
    make_key,
    make_self_signed,
    sign_csr,
)

PROG = "ovs-ipsec-pki"
CA_CERT_FILE = "cacert.pem"
CA_KEY_FILE = "cakey.pem"
# Names the command line accepts: they become file names, the CN and the SAN DNS entry.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")


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
