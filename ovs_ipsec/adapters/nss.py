"""Thin adapter over the NSS database pluto uses (`--ipsec-d`): our certificates and key in and
out with Debian's NSS tools (`certutil`, `pk12util`), each run bounded by the command timeout.

Only nicknames of ours (`libreswan_conf.is_our_nickname`) are listed, replaced or deleted. A key
goes in as a PKCS#12 file written root-only in a private temporary directory, protected by a
one-time password and deleted at once; never in argv or a log.

May import: proc, core.libreswan_conf, errors, cryptography, stdlib.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile

from ovs_ipsec.adapters import proc
from ovs_ipsec.core.libreswan_conf import is_our_nickname
from ovs_ipsec.errors import CharonError, CommandError


class Nss:
    def __init__(self, directory: str, timeout: float) -> None:
        self.directory = directory
        self.timeout = timeout

    @property
    def _db(self) -> str:
        return f"sql:{self.directory}"

    def nicknames(self) -> frozenset[str]:
        """Our certificates' nicknames in the database."""
        out = self._run(("certutil", "-d", self._db, "-L"), "list-certs").stdout
        names = set()
        for line in out.splitlines():
            # "<nickname>   <trust flags>": the flags are the last word.
            parts = line.rstrip().rsplit(None, 1)
            if len(parts) == 2 and is_our_nickname(parts[0].strip()):
                names.add(parts[0].strip())
        return frozenset(names)

    def add_cert(self, nickname: str, pem: bytes, trust: str) -> None:
        """A CA (trust `CT,,`) or a pinned peer certificate (`P,,`)."""
        self._run(("certutil", "-d", self._db, "-A", "-n", nickname, "-t", trust, "-a"),
                  "load-cert", input_bytes=pem)  # fmt: skip

    def add_cert_and_key(self, nickname: str, cert_pem: bytes, key_pem: str) -> None:
        """Our certificate with its private key, as `nickname`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12

        password = secrets.token_hex(16)
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), None)
        data = pkcs12.serialize_key_and_certificates(
            nickname.encode(), key, x509.load_pem_x509_certificate(cert_pem), None,  # type: ignore[arg-type]
            serialization.BestAvailableEncryption(password.encode()),
        )  # fmt: skip
        directory = tempfile.mkdtemp(prefix="ovs-ipsec-nss-")  # 0700
        try:
            path = os.path.join(directory, "key.p12")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            self._run(("pk12util", "-d", self._db, "-i", path, "-W", password), "load-key")
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def delete(self, nickname: str, *, with_key: bool = False) -> None:
        if not is_our_nickname(nickname):
            raise ValueError(f"{nickname} is not ours")
        self._run(("certutil", "-d", self._db, "-F" if with_key else "-D", "-n", nickname),
                  "unload-cert")  # fmt: skip

    def _run(
        self, argv: tuple[str, ...], command: str, input_bytes: bytes | None = None
    ) -> proc.Result:
        try:
            result = proc.run(
                argv, timeout=self.timeout, check=False,
                input=None if input_bytes is None else input_bytes.decode("ascii"),
            )  # fmt: skip
        except CommandError as exc:
            raise CharonError(command, str(exc)) from exc
        if result.returncode != 0:
            raise CharonError(command, proc.error_text(result.stderr or result.stdout))
        return result
