"""Thin adapter over the NSS database pluto uses (`--ipsec-d`): our certificates and key in and
out with Debian's NSS tools (`certutil`, `pk12util`), each run bounded by the command timeout
(`Nss`), and what a pluto conn needs of it (`Certificates`, used by adapters/pluto.py).

Only nicknames of ours (`libreswan_conf.is_our_nickname`) are listed, replaced or deleted. A key
goes in as a PKCS#12 file written root-only in a private temporary directory, protected by a
one-time password and deleted at once; never in argv or a log.

May import: proc, core.libreswan_conf, core.connections, core.credentials, core.model, errors,
cryptography, stdlib.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence

from ovs_ipsec.adapters import proc
from ovs_ipsec.core import libreswan_conf
from ovs_ipsec.core.connections import ConnSpec, KeySpec
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.libreswan_conf import NSS_CA, NSS_LOCAL_PREFIX, NssNames, is_our_nickname
from ovs_ipsec.core.model import Tunnel
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


class Certificates:
    """Our certificate and key, the CAs and the pinned peer certificates pluto's conns name, in
    NSS: each added once (a rotated one gets a nickname of its own: libreswan_conf, and replaces
    the previous pair of ours), stale ones pruned, all of ours removed at `exit`."""

    def __init__(self, nss: Nss) -> None:
        self.nss = nss
        self._nicknames: set[str] | None = None  # ours in NSS (None: not listed yet)

    def _names(self) -> set[str]:
        if self._nicknames is None:
            self._nicknames = set(self.nss.nicknames())
        return self._nicknames

    def key_ids(self) -> frozenset[str]:
        self._nicknames = None  # list again: NSS may have changed under us
        return frozenset(n for n in self._names() if n.startswith(NSS_LOCAL_PREFIX))

    def for_conn(
        self, spec: ConnSpec, tunnels: Mapping[str, Tunnel], credentials: Credentials
    ) -> NssNames:
        """What a certificate conn names, in NSS."""
        local = credentials.local
        if local is None:
            raise CharonError("load-conn", "no certificate and key of ours to authenticate with")
        key_nick = libreswan_conf.local_nickname(local.identity, local.key_digest)
        if key_nick not in self._names():
            self.load_key(KeySpec(local.key_digest, local.key.pem), credentials)
        for ca in credentials.cas:
            # pluto 4.10 caches NSS's CA list for minutes once a negotiation read it: a CA
            # added meanwhile is used from then on (`whack --rereadcerts` does not reload it).
            self._add(libreswan_conf.ca_nickname(ca.fingerprint_sha256), ca.pem, "CT,,")
        pinned: dict[str, str] = {}
        algorithms: dict[str, str] = {}
        for name in spec.tunnels:
            path = tunnels[name].remote_cert if name in tunnels else None
            cert = credentials.remote_certs.get(path) if path is not None else None
            if path is not None and cert is not None:
                pinned[path] = libreswan_conf.peer_nickname(cert.cn or "", cert.fingerprint_sha256)
                algorithms[path] = cert.key_algorithm
                self._add(pinned[path], cert.pem, "P,,")
        return NssNames(key_nick, pinned, local.cert.key_algorithm, algorithms)

    def _add(self, nickname: str, pem: bytes, trust: str) -> None:
        names = self._names()
        if nickname not in names:
            self.nss.add_cert(nickname, pem, trust)
            names.add(nickname)

    def load_key(self, spec: KeySpec, credentials: Credentials) -> str:
        """Our certificate and this key, as one PKCS#12 (pluto finds the key by the
        certificate's nickname: `leftcert=`). Returns the nickname."""
        local = credentials.local
        if local is None or local.key_digest != spec.digest:
            raise CharonError("load-key", "no certificate for this key")
        nickname = libreswan_conf.local_nickname(local.identity, spec.digest)
        names = self._names()
        if nickname not in names:
            # NSS gives every certificate of one subject the nickname of the first: a rotated
            # pair (same CN) would land under the previous one's, and the conn naming the new
            # nickname would not load. There is one certificate of ours at a time, so the
            # previous pair leaves first (its IKE SAs live on; unload_key then finds it gone).
            for previous in sorted(n for n in names if n.startswith(NSS_LOCAL_PREFIX)):
                self.nss.delete(previous, with_key=True)
                names.discard(previous)
            self.nss.add_cert_and_key(nickname, local.cert.pem, spec.secret.reveal())
            names.add(nickname)
        return nickname

    def unload_key(self, key_id: str) -> None:
        if is_our_nickname(key_id) and key_id in self._names():
            self.nss.delete(key_id, with_key=True)
            self._names().discard(key_id)

    def prune(self, conn_texts: Sequence[str]) -> None:
        """Our CA and peer certificates no conn of ours names any more leave NSS."""
        if self._nicknames is None:
            return
        used = {line.split("=", 1)[1].strip() for text in conn_texts
                for line in text.splitlines() if line.strip().startswith("rightcert=")}  # fmt: skip
        cas_used = any("rightca=" in text for text in conn_texts)
        for nickname in sorted(self._nicknames):
            if nickname.startswith(NSS_LOCAL_PREFIX) or nickname in used:
                continue
            if nickname.startswith(NSS_CA) and cas_used:
                continue
            with contextlib.suppress(CharonError):
                self.nss.delete(nickname)
            self._nicknames.discard(nickname)

    def remove_all(self) -> None:
        """`exit` with cleanup: every certificate and key of ours leaves (as upstream's)."""
        with contextlib.suppress(CharonError):
            for nickname in sorted(self.nss.nicknames()):
                self.nss.delete(nickname, with_key=nickname.startswith(NSS_LOCAL_PREFIX))
        self._nicknames = set()
