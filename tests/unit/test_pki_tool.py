"""ovs-ipsec-pki: the command line in a temporary directory, and the library's test helpers.

Over 400 lines: every subcommand of the command line, and the builders' knobs the other tests rely
on."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ovs_ipsec.core import pki
from ovs_ipsec.tools import pki_builders, pki_tool


def now() -> dt.datetime:
    """The time of the check, not of the import: the suite runs for minutes and certificates made
    here are backdated by only a few."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture(autouse=True)
def umask_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A known umask (modes below are what the tool asks for, less 022), and a scratch working
    directory, so that a --dir the tool ignored cannot litter the source tree."""
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def pkidir(tmp_path: Path) -> Path:
    """A directory with a CA made by `init`."""
    assert pki_tool.main(["--dir", str(tmp_path), "init"]) == 0
    return tmp_path


def run(directory: Path, *argv: str) -> int:
    return pki_tool.main(["--dir", str(directory), *argv])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert_info(path: Path) -> pki.CertInfo:
    infos, invalid = pki.parse_certs(path.read_bytes())
    assert invalid is None and len(infos) == 1
    return infos[0]


def key_info(path: Path) -> pki.PrivateKeyInfo:
    info, invalid = pki.parse_private_key(path.read_bytes())
    assert invalid is None and info is not None
    return info


def secret_lines(path: Path) -> list[str]:
    return [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("-----") and len(line) > 16
    ]


def assert_ovs_host_cert(cert_path: Path, key_path: Path, cn: str) -> pki.CertInfo:
    info = cert_info(cert_path)
    assert pki.check_host_cert(info, now(), key="certificate")[0] == []
    assert info.cn == cn and info.san_dns == (cn,)
    assert pki.key_matches_cert(key_info(key_path), info)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.version == x509.Version.v3
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert ski.digest and aki.key_identifier
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    return info


# ---------------------------------------------------------------------------------------------
# init


def test_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "init") == 0
    cacert, cakey = tmp_path / "cacert.pem", tmp_path / "cakey.pem"
    assert mode(cakey) == 0o600 and mode(cacert) == 0o644
    info = cert_info(cacert)
    assert info.is_ca and info.self_issued and info.subject == "CN=ovs-ipsec CA"
    assert info.key_description == "EC P-256"
    assert info.not_after - info.not_before == dt.timedelta(days=3650) + pki_builders.BACKDATE
    assert pki.check_ca_certs([info], now()) == ((info,), [], [])
    assert pki.key_matches_cert(key_info(cakey), info)
    out = capsys.readouterr().out
    assert "cakey.pem (private key, mode 0600)" in out
    assert not any(line in out for line in secret_lines(cakey))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cacert.pem", "cakey.pem"]


def test_init_refuses_to_overwrite(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (pkidir / "cacert.pem").read_bytes()
    assert run(pkidir, "init") == 1
    err = capsys.readouterr().err
    assert "ovs-ipsec-pki: error:" in err and "already exist; use --force" in err
    assert (pkidir / "cacert.pem").read_bytes() == before
    assert run(pkidir, "init", "--force", "--name", "new CA", "--org", "lab") == 0
    assert cert_info(pkidir / "cacert.pem").subject == "CN=new CA,O=lab"
    assert mode(pkidir / "cakey.pem") == 0o600


def test_init_rsa_and_days(tmp_path: Path) -> None:
    assert run(tmp_path, "init", "--key-type", "rsa", "--bits", "2048", "--days", "10") == 0
    info = cert_info(tmp_path / "cacert.pem")
    assert info.key_description == "RSA 2048"
    assert info.not_after - info.not_before == dt.timedelta(days=10) + pki_builders.BACKDATE


def test_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "nope", "init") == 1
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--days", "0"], ["--key-type", "rsa", "--bits", "1024"]])
def test_bad_options(tmp_path: Path, argv: list[str]) -> None:
    assert run(tmp_path, "init", *argv) == 1
    assert list(tmp_path.iterdir()) == []


def test_usage_error_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, "frobnicate")
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------
# host, self-signed, req + sign


def test_host(pkidir: Path) -> None:
    assert run(pkidir, "host", "host1") == 0
    cert, key = pkidir / "host1-cert.pem", pkidir / "host1-privkey.pem"
    assert mode(key) == 0o600 and mode(cert) == 0o644
    info = assert_ovs_host_cert(cert, key, "host1")
    assert info.subject == "CN=host1" and info.issuer == "CN=ovs-ipsec CA"
    assert info.key_description == "EC P-256"
    assert info.not_after - info.not_before == dt.timedelta(days=730) + pki_builders.BACKDATE
    assert pki.issued_by(info, [cert_info(pkidir / "cacert.pem")])


def test_host_options_and_dir_after_command(pkidir: Path) -> None:
    argv = ["host", "host2", "--org", "lab", "--key-type", "rsa", "--bits", "2048"]
    assert pki_tool.main([*argv, "--days", "5", "--dir", str(pkidir)]) == 0
    info = assert_ovs_host_cert(pkidir / "host2-cert.pem", pkidir / "host2-privkey.pem", "host2")
    assert info.subject == "CN=host2,O=lab"
    assert info.key_description == "RSA 2048"
    assert info.not_after - info.not_before == dt.timedelta(days=5) + pki_builders.BACKDATE


def test_host_refuses_to_overwrite(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pkidir, "host", "host1") == 0
    key_before = (pkidir / "host1-privkey.pem").read_bytes()
    assert run(pkidir, "host", "host1") == 1
    assert "use --force" in capsys.readouterr().err
    assert (pkidir / "host1-privkey.pem").read_bytes() == key_before
    assert run(pkidir, "host", "host1", "--force") == 0
    assert (pkidir / "host1-privkey.pem").read_bytes() != key_before
    assert_ovs_host_cert(pkidir / "host1-cert.pem", pkidir / "host1-privkey.pem", "host1")


def test_host_without_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "host", "host1") == 1
    assert "run 'ovs-ipsec-pki init'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_host_with_mismatched_ca_key(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (pkidir / "cakey.pem").write_bytes(pki_builders.make_key())
    assert run(pkidir, "host", "host1") == 1
    assert "does not belong to" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "10.0.0.1", "fd01::1"])
def test_invalid_names(pkidir: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pkidir, "host", "--", name) == 1
    assert "invalid NAME" in capsys.readouterr().err
    assert sorted(p.name for p in pkidir.iterdir()) == ["cacert.pem", "cakey.pem"]


def test_self_signed(tmp_path: Path) -> None:
    assert run(tmp_path, "self-signed", "host1") == 0
    cert, key = tmp_path / "host1-cert.pem", tmp_path / "host1-privkey.pem"
    assert mode(key) == 0o600 and mode(cert) == 0o644
    info = assert_ovs_host_cert(cert, key, "host1")
    assert info.self_issued and not info.is_ca
    assert pki.issued_by(info, [info])


def test_req_and_sign(pkidir: Path) -> None:
    assert run(pkidir, "req", "host3", "--org", "lab") == 0
    key, req = pkidir / "host3-privkey.pem", pkidir / "host3-req.pem"
    assert mode(key) == 0o600 and mode(req) == 0o644
    csr = x509.load_pem_x509_csr(req.read_bytes())
    assert csr.subject.rfc4514_string() == "CN=host3,O=lab" and csr.is_signature_valid
    assert run(pkidir, "sign", "host3", "--days", "30") == 0
    info = assert_ovs_host_cert(pkidir / "host3-cert.pem", key, "host3")
    assert info.subject == "CN=host3,O=lab"
    assert info.not_after - info.not_before == dt.timedelta(days=30) + pki_builders.BACKDATE
    assert pki.issued_by(info, [cert_info(pkidir / "cacert.pem")])


def test_sign_by_request_path(pkidir: Path) -> None:
    assert run(pkidir, "req", "host4") == 0
    assert run(pkidir, "sign", "host4-req.pem") == 0
    assert_ovs_host_cert(pkidir / "host4-cert.pem", pkidir / "host4-privkey.pem", "host4")


def test_sign_without_request(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pkidir, "sign", "host5") == 1
    assert "host5-req.pem: certificate request not found" in capsys.readouterr().err


def test_sign_rejects_a_bad_request(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (pkidir / "host6-req.pem").write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n")
    assert run(pkidir, "sign", "host6") == 1
    assert "cannot parse the certificate request" in capsys.readouterr().err


def test_sign_csr_needs_one_cn() -> None:
    ca = pki_builders.make_ca()
    key = pki_builders.make_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name.from_rfc4514_string("O=lab"))
        .sign(pki_builders._load_key(key), pki_builders.hashes.SHA256())
        .public_bytes(pki_builders.serialization.Encoding.PEM)
    )
    with pytest.raises(pki_builders.PkiToolError, match="must have exactly one CN, not 0"):
        pki_builders.sign_csr(csr, ca)


# ---------------------------------------------------------------------------------------------
# show


def show(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = pki_tool.main(["show", str(path)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_show_host_certificate(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pkidir, "host", "host1", "--org", "lab") == 0
    capsys.readouterr()
    rc, out = show(pkidir / "host1-cert.pem", capsys)
    info = cert_info(pkidir / "host1-cert.pem")
    assert rc == 0
    assert "subject:     CN=host1,O=lab" in out
    assert "issuer:      CN=ovs-ipsec CA" in out
    assert "SAN:         DNS:host1" in out
    assert f"SHA-256:     {info.fingerprint_sha256}" in out
    assert "CA:          no" in out
    assert "verdict:     OK: usable as certificate or remote_cert, identity 'host1'" in out


def test_show_ca(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = show(pkidir / "cacert.pem", capsys)
    assert rc == 0
    assert "CA:          yes" in out and "verdict:     OK: usable as ca_cert" in out


def test_show_ca_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki_builders.make_ca("a").cert_pem + pki_builders.make_ca("b").cert_pem)
    rc, out = show(bundle, capsys)
    assert rc == 0
    assert "certificate 1 of 2:" in out and "certificate 2 of 2:" in out
    assert "bundle: OK as ca_cert (2 of 2 CA certificates used)" in out


def test_show_rollover_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = pki_builders.make_ca(
        "old", not_before=now() - dt.timedelta(days=99), not_after=now() - dt.timedelta(days=1)
    )
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old.cert_pem + pki_builders.make_ca("new").cert_pem)
    rc, out = show(bundle, capsys)
    assert "bundle: OK as ca_cert (1 of 2 CA certificates used)" in out
    assert rc == 0
    bundle.write_bytes(old.cert_pem + pki_builders.make_self_signed("host1").cert_pem)
    rc, out = show(bundle, capsys)
    assert rc == 1


def test_show_private_key(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = pkidir / "cakey.pem"
    rc, out = show(key, capsys)
    assert rc == 0
    assert "private key: EC P-256 (key material not shown)" in out
    assert "PRIVATE KEY-----" not in out
    assert not any(line in out for line in secret_lines(key))


def test_show_rsa_key_and_loose_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(pki_builders.make_key("rsa", 2048))
    key.chmod(0o644)
    rc, out = show(key, capsys)
    assert "private key: RSA 2048 (key material not shown)" in out
    assert "has mode 0644; use 0600" in out
    assert not any(line in out for line in secret_lines(key))
    assert rc == 0


def test_show_combined_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = pki_builders.make_self_signed("host1")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(made.cert_pem + made.key_pem)
    rc, out = show(combined, capsys)
    assert rc == 0 and "matches the first certificate" in out
    combined.write_bytes(made.cert_pem + pki_builders.make_key())
    rc, out = show(combined, capsys)
    assert rc == 1 and "does NOT match the first certificate" in out
    assert not any(line in out for line in secret_lines(combined))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"san": ()}, "certificate has no subjectAltName"),
        ({"san": ["other"]}, "certificate CN 'host1' is not a subjectAltName DNS entry"),
        ({"subject": "O=lab"}, "certificate subject 'O=lab' has no CN"),
        ({"version": 1}, "certificate is X.509 v1"),
        (
            {"not_before": now() - dt.timedelta(days=9), "not_after": now() - dt.timedelta(days=1)},
            "certificate expired on",
        ),
    ],
)
def test_show_bad_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kwargs: dict[str, object], reason: str
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(pki_builders.make_self_signed("host1", **kwargs).cert_pem)  # type: ignore[arg-type]
    rc, out = show(path, capsys)
    assert rc == 1
    assert "verdict:     NOT OK for OVS IPsec" in out
    assert f"    - {reason}" in out


def test_show_expiring_soon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "soon.pem"
    path.write_bytes(pki_builders.make_self_signed("host1", days=3).cert_pem)
    rc, out = show(path, capsys)
    assert rc == 0
    assert "warning:     certificate expires in 2 days" in out
    assert "verdict:     OK" in out


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "NOT OK: file is empty"),
        (b"hello\n", "NOT OK: not a PEM certificate"),
        (b"0\x82\x01\x00garbage", "NOT OK: not a PEM certificate"),
        (
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "private key: NOT OK: private key is encrypted",
        ),
    ],
)
def test_show_unusable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, reason: str
) -> None:
    path = tmp_path / "f.pem"
    path.write_bytes(data)
    rc, out = show(path, capsys)
    assert rc == 1 and reason in out


def test_show_der_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = pki_builders.make_self_signed("host1")
    der = x509.load_pem_x509_certificate(made.cert_pem).public_bytes(
        pki_builders.serialization.Encoding.DER
    )
    path = tmp_path / "c.der"
    path.write_bytes(der)
    rc, out = show(path, capsys)
    assert rc == 1 and "the file is DER" in out


def test_show_request(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(pkidir, "req", "host7") == 0
    capsys.readouterr()
    rc, out = show(pkidir / "host7-req.pem", capsys)
    assert rc == 0 and "subject:     CN=host7" in out and "SAN:         DNS:host7" in out


def test_show_broken_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.pem"
    path.write_bytes(
        b"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"
    )
    rc, out = show(path, capsys)
    assert rc == 1 and "certificate request: NOT OK: cannot be parsed" in out


def test_show_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = show(tmp_path / "nope.pem", capsys)
    assert rc == 1 and "nope.pem: file not found" in out


def test_show_relative_to_dir(pkidir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pki_tool.main(["show", "cacert.pem", "--dir", str(pkidir)]) == 0
    assert "usable as ca_cert" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Files: atomic, never readable by others.


def test_write_atomic_modes_ignore_a_loose_umask(tmp_path: Path) -> None:
    os.umask(0)
    pki_tool.write_atomic(tmp_path / "k.pem", b"secret", 0o600)
    pki_tool.write_atomic(tmp_path / "c.pem", b"public", 0o644)
    assert mode(tmp_path / "k.pem") == 0o600 and mode(tmp_path / "c.pem") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "k.pem"
    target.write_bytes(b"old contents, longer than the new ones")
    target.chmod(0o644)
    pki_tool.write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600  # a fresh inode, not the old file's loose mode
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_write_atomic_cleans_up_on_failure(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        pki_tool.write_atomic(tmp_path / "d", b"x", 0o600)  # cannot replace a directory
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


# ---------------------------------------------------------------------------------------------
# Library corner cases.


def test_make_host_cert_signed_by_another_ca() -> None:
    ca, other = pki_builders.make_ca("a"), pki_builders.make_ca("b")
    info = pki.parse_certs(pki_builders.make_host_cert("h", other).cert_pem)[0][0]
    assert info.issuer == "CN=b"
    assert not pki.issued_by(info, pki.parse_certs(ca.cert_pem)[0])


def test_v2_is_refused() -> None:
    with pytest.raises(ValueError, match="only 1 and 3"):
        pki_builders.make_self_signed("h", version=2)


def test_unknown_key_type() -> None:
    with pytest.raises(ValueError, match="unknown key type"):
        pki_builders.make_key("rot13")


def test_san_entry_kinds() -> None:
    made = pki_builders.make_self_signed("h", san=["h", "DNS:x", "IP:10.0.0.1", "email:a@b"])
    info = pki.parse_certs(made.cert_pem)[0][0]
    assert info.san == ("DNS:h", "DNS:x", "IP:10.0.0.1", "email:a@b")
    assert info.san_dns == ("h", "x")


@settings(max_examples=150, deadline=None)
@given(
    prefix=st.sampled_from(
        [
            b"",
            b"-----BEGIN CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE REQUEST-----\n",
            b"-----BEGIN PRIVATE KEY-----\n",
        ]
    ),
    body=st.binary(max_size=512),
)
def test_describe_never_raises(prefix: bytes, body: bytes) -> None:
    lines, ok = pki_tool.describe(prefix + body, now())
    assert lines or ok


def test_commands_print_no_warnings(tmp_path: Path) -> None:
    """What the demo and operators run prints no Python warning (cryptography deprecates DSA
    and warned at import of the tool), under `-W error` as well."""
    for argv in (["init"], ["host", "h2"], ["self-signed", "h1"], ["show", "h2-cert.pem"]):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-m", "ovs_ipsec.tools.pki_tool",
             "--dir", str(tmp_path), *argv],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", (argv, done.stderr)
