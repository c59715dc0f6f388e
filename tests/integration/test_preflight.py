"""Preflight against a real charon that lacks plugins (as on a machine without
libstrongswan-standard-plugins): the daemon names what is missing and the package once, holds the
tunnels that need it back as `failed` (their plaintext still blocked), lets the others work, and
recovers when charon comes back with everything."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovs_ipsec.tools import pki_builders, pki_tool
from ovs_ipsec.tools.lab import Host, Lab, wait_for

# Both cases see IKE come up once charon has what it needs, and start a charon without openssl:
# strongSwan 5.9 (Debian 12). On 6.0 openssl is part of libstrongswan and charon does not start
# without it, and the kernel's CHILD_SA refusal takes the IKE_SA down (tests/unit covers 6.0's
# plugin packages).
pytestmark = [pytest.mark.lab, pytest.mark.keeps_ike_sa]

METRICS_PORT = 9113
LACKING = ("openssl", "gcm")
# IKE without GCM or ECP: what a charon without openssl and gcm can still negotiate.
PLAIN_IKE = "aes256-sha256-modp2048"


def add_gre(host: Host, peer: Host, **options: str) -> None:
    opts = [f"options:{k}={v}" for k, v in {"remote_ip": peer.ipv4, **options}.items()]
    host.vsctl("add-port", "br0", f"t{peer.index}", "--", "set", "interface", f"t{peer.index}",
               "type=gre", *opts)  # fmt: skip


def tunnels(host: Host) -> dict[str, Any]:
    return json.loads(host.appctl("tunnels/show", "--json"))


def ipsec_status(host: Host) -> dict[str, Any]:
    return json.loads(host.appctl("ipsec/status", "--json"))


def scrape(host: Host) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return host.scrape_metrics(METRICS_PORT)


def conns(host: Host) -> set[str]:
    with host.vici() as v:
        return {name.decode() for name in v.get_conns()["conns"]}


def initiate(host: Host, peer: Host) -> None:
    with host.vici() as v:
        try:
            for _ in v.initiate({"ike": f"ovs-{peer.ipv4}", "child": f"ovs-t{peer.index}",
                                 "timeout": 5000}):  # fmt: skip
                pass
        except Exception as exc:  # the CHILD_SA always fails on this kernel (no ESP)
            assert "failed" in str(exc), exc


def ike_established(host: Host, peer: Host) -> bool:
    name = f"ovs-{peer.ipv4}"
    with host.vici() as v:
        return any(
            entry[name]["state"] == b"ESTABLISHED" for entry in v.list_sas({"ike": name})
            if name in entry
        )  # fmt: skip


def test_charon_without_openssl_and_gcm_is_named_held_back_blocked_and_recovered(
    make_lab: Callable[..., Lab],
) -> None:
    """h1's charon runs without openssl and gcm. Its tunnel to h2 uses the default IKE
    proposal (AES-GCM): failed, with AES_GCM_16 and libstrongswan-standard-plugins named, in
    tunnels/show, ipsec/status --json and the metrics; one ERROR line however many checks;
    not loaded into charon, and its plaintext is blocked (EPERM). Its tunnel to h3 proposes
    AES-CBC/SHA-256/MODP-2048, which that charon has: configured, and IKE comes up (ESP's
    AES-GCM is the kernel's, not charon's, so it is not called missing). Once charon is
    restarted with every plugin, the tunnel to h2 is loaded and IKE comes up."""
    lab = make_lab(3, daemon=False)
    a, b, c = lab.hosts
    a.stop_charon()
    a.start_charon(without=LACKING)
    a.start_daemon(f"--metrics-address=127.0.0.1:{METRICS_PORT}")
    b.start_daemon()
    c.start_daemon()
    add_gre(a, b, psk="preflight-1")
    add_gre(b, a, psk="preflight-1")
    add_gre(a, c, psk="preflight-2", ipsec_ike=PLAIN_IKE)
    add_gre(c, a, psk="preflight-2", ipsec_ike=PLAIN_IKE)

    def failed_for_lack() -> dict[str, Any] | None:
        t2 = tunnels(a).get("t2")
        return t2 if t2 and t2["state"] == "failed" and t2["cause"] == "capability" else None

    t2 = wait_for(failed_for_lack, 15, what=f"t2 failed for a lack: {tunnels(a).get('t2')}")
    assert "AES_GCM_16" in t2["reason"] and "libstrongswan-standard-plugins" in t2["reason"]
    assert "gcm or openssl plugin" in t2["reason"]
    status = ipsec_status(a)
    assert status["t2"]["state"] == "failed" and "AES_GCM_16" in status["t2"]["reason"]
    wait_for(lambda: tunnels(a).get("t3", {}).get("state") == "configured", 15,
             what=f"t3 configured: {tunnels(a).get('t3')}")  # fmt: skip

    # Held back from charon; its plaintext meets our block policy.
    assert f"ovs-{b.ipv4}" not in conns(a) and f"ovs-{c.ipv4}" in conns(a)
    assert a.send_probe(b.ipv4, "gre") == "EPERM"

    # The tunnel charon can serve works: IKE with AES-CBC/SHA-256 comes up without openssl.
    initiate(a, c)
    wait_for(lambda: ike_established(a, c), 10, what="IKE_SA h1-h3 without openssl")

    got = scrape(a)
    assert got[("ovs_ipsec_tunnel_failures_total", (("reason", "capability"),))] >= 1
    lack = (("capability", "AES_GCM_16"), ("package", "libstrongswan-standard-plugins"))
    assert got[("ovs_ipsec_charon_lacks", lack)] == 1

    # One line per capability, not per tunnel nor per check: another tunnel that needs it and
    # two more checks say nothing new.
    a.vsctl("add-port", "br0", "v2", "--", "set", "interface", "v2", "type=vxlan",
            f"options:remote_ip={b.ipv4}", "options:psk=preflight-1")  # fmt: skip
    wait_for(lambda: tunnels(a).get("v2", {}).get("cause") == "capability", 10,
             what=f"v2 failed for a lack: {tunnels(a).get('v2')}")  # fmt: skip
    for _ in range(2):
        a.appctl("refresh")
        a.appctl("tunnels/show")
    errors = [line for line in a.daemon_log().splitlines() if "| ERR |" in line]
    lacks = [line for line in errors if "charon lacks" in line]
    assert len(lacks) == 1, errors
    assert "AES_GCM_16" in lacks[0] and "libstrongswan-standard-plugins" in lacks[0]

    # charon back with every plugin: the tunnel is loaded and negotiates.
    a.stop_charon()
    a.start_charon()
    wait_for(lambda: tunnels(a).get("t2", {}).get("state") == "configured", 20,
             what=f"t2 configured again: {tunnels(a).get('t2')}")  # fmt: skip
    initiate(a, b)
    wait_for(lambda: ike_established(a, b), 10, what="IKE_SA h1-h2 with every plugin")
    wait_for(lambda: scrape(a).get(("ovs_ipsec_charon_lacks", lack)) is None, 10,
             what="the lack gone from the metrics")  # fmt: skip


def set_pki(host: Host, key_type: str, ca: pki_builders.CertAndKey) -> None:
    cert, key = pki_builders.make_host_cert(host.name, ca, key_type=key_type)
    paths = {"certificate": ("cert.pem", cert, 0o644), "private_key": ("key.pem", key, 0o600),
             "ca_cert": ("ca.pem", ca.cert_pem, 0o644)}  # fmt: skip
    for name, data, mode in paths.values():
        pki_tool.write_atomic(Path(host.dir, name), data, mode)
    host.vsctl("set", "Open_vSwitch", ".", *(
        f"other_config:{key}={os.path.join(host.dir, name)}" for key, (name, _, _) in paths.items()
    ))  # fmt: skip


def test_certificates_whose_keys_charon_cannot_use_are_named_and_follow_a_rotation(
    make_lab: Callable[..., Lab],
) -> None:
    """h1's charon without openssl: ECDSA certificates (the pki tool's default) need it, so
    the tunnel is failed naming "ECDSA keys" and the package. Rotated to RSA certificates at the
    same paths, which charon's pkcs1 and gmp plugins handle, the tunnel is loaded and IKE
    comes up with that same charon."""
    lab = make_lab(2, daemon=False)
    a, b = lab.hosts
    a.stop_charon()
    a.start_charon(without=LACKING)
    a.start_daemon()
    b.start_daemon()
    ec_ca = pki_builders.make_ca("lab CA")
    for host, peer in ((a, b), (b, a)):
        set_pki(host, "ec", ec_ca)
        add_gre(host, peer, remote_name=peer.name, ipsec_ike=PLAIN_IKE)

    def lacking_ecdsa() -> dict[str, Any] | None:
        t2 = tunnels(a).get("t2")
        return t2 if t2 and t2["cause"] == "capability" else None

    t2 = wait_for(lacking_ecdsa, 15, what=f"t2 failed for a lack: {tunnels(a).get('t2')}")
    assert t2["state"] == "failed" and "ECDSA keys" in t2["reason"]
    assert "openssl plugin (Debian package libstrongswan-standard-plugins)" in t2["reason"]
    assert a.send_probe(b.ipv4, "gre") == "EPERM"

    rsa_ca = pki_builders.make_ca("lab CA", key_type="rsa")
    for host in (a, b):
        set_pki(host, "rsa", rsa_ca)
        host.appctl("refresh")
    wait_for(lambda: tunnels(a).get("t2", {}).get("state") == "configured", 15,
             what=f"t2 configured with RSA: {tunnels(a).get('t2')}")  # fmt: skip
    # h2 reloads its connection with the new CA (it was loaded before: the first load counts).
    wait_for(lambda: b.daemon_log().count(f"loaded connection ovs-{a.ipv4}") >= 2, 10,
             what="h2's connection reloaded with the RSA CA")  # fmt: skip
    initiate(a, b)
    wait_for(lambda: ike_established(a, b), 10, what="IKE_SA with RSA certificates")
    errors = [line for line in a.daemon_log().splitlines() if "| ERR |" in line]
    assert [line for line in errors if "charon lacks ECDSA keys" in line], errors
