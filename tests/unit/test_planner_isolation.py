"""One tunnel's trouble stays its own (issue 15 item 5): what VICI cannot carry is refused with a
reason before anything is sent, and an unexpected exception while planning one tunnel makes that
tunnel invalid ("internal error", fail closed) while every other tunnel is planned as before.
Pure: a real 80 KiB certificate (tools/pki_builders.py) goes through the real planner; the
exceptions are injected. The real charon is tests/integration/test_vici_robustness.py's."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping

import pytest
from fakes import unread_row

from ovs_ipsec.core import desired, vici_wire
from ovs_ipsec.core.desired import Planner
from ovs_ipsec.core.model import InterfaceRow
from ovs_ipsec.tools import pki_builders

NOW = dt.datetime.now(dt.UTC)
PSK_ROW = InterfaceRow("ok", "gre", {"remote_ip": "10.0.0.9", "psk": "fine"})


@functools.cache
def many_sans() -> pki_builders.CertAndKey:
    """A self-signed host certificate of about 80 KiB as PEM: 2,000 DNS names."""
    names = ["peer"] + [f"host-{i:05d}.a-rather-long-subdomain.example" for i in range(2000)]
    return pki_builders.make_self_signed("peer", san=names, now=NOW)


def files(contents: Mapping[str, bytes]) -> desired.ReadFiles:
    def read(paths: Iterable[str]) -> Mapping[str, bytes | str]:
        return {p: contents.get(p, f"cannot read {p}: No such file or directory") for p in paths}

    return read


def cert_planner() -> tuple[Planner, dict[str, str]]:
    local = pki_builders.make_self_signed("local", now=NOW)
    planner = Planner(files({"/c.pem": local.cert_pem, "/k.pem": local.key_pem,
                             "/big.pem": many_sans().cert_pem}), unread_row)  # fmt: skip
    return planner, {"certificate": "/c.pem", "private_key": "/k.pem"}


# -- VICI's limits ----------------------------------------------------------------------------


def test_vici_values_names_and_requests_have_limits_said_before_sending() -> None:
    """The encoder wrote a 2-byte length with to_bytes(2): OverflowError, uncaught, for 64 KiB."""
    assert len(vici_wire.encode_message({"v": "x" * vici_wire.MAX_VALUE})) == 5 + 65535
    with pytest.raises(vici_wire.TooLarge, match=r"remote\.certs: a value of 65536 bytes"):
        vici_wire.encode_message({"remote": {"certs": ["x" * 65536]}})
    with pytest.raises(vici_wire.TooLarge, match="a name of 256 bytes"):
        vici_wire.encode_message({"n" * 256: "v"})
    big = vici_wire.encode_message({f"k{i}": "x" * 60000 for i in range(9)})  # 540 KB
    with pytest.raises(vici_wire.TooLarge, match="charon takes at most 524288"):
        vici_wire.request_packet("load-conn", big)
    vici_wire.request_packet("load-conn", big[: vici_wire.MAX_PACKET - 11])  # exactly the limit


# -- too large for charon: that tunnel invalid, with the reason ------------------------------


def test_an_80_kib_remote_cert_makes_its_tunnel_invalid_and_the_rest_is_planned() -> None:
    assert len(many_sans().cert_pem) > 80 * 1024
    planner, other_config = cert_planner()
    big = InterfaceRow("big", "gre", {"remote_ip": "10.0.0.2", "remote_cert": "/big.pem"})
    delta = planner.update({"u1": big, "u2": PSK_ROW}, other_config, NOW)
    invalid = planner.desired.invalid["big"]
    assert invalid.reason.startswith("remote_cert: a certificate of ")
    assert "charon takes at most 65535 in one VICI value" in invalid.reason
    assert set(planner.desired.conns) == {"ovs-10.0.0.9"}
    assert any(spec.dst.startswith("10.0.0.2/") for spec in planner.policies)  # still blocked
    assert delta.internal_errors == []


def test_an_80_kib_local_certificate_makes_every_certificate_tunnel_invalid() -> None:
    big, peer = many_sans(), pki_builders.make_self_signed("p", now=NOW)
    planner = Planner(files({"/c.pem": big.cert_pem, "/k.pem": big.key_pem,
                             "/peer.pem": peer.cert_pem}), unread_row)  # fmt: skip
    row = InterfaceRow("t", "gre", {"remote_ip": "10.0.0.2", "remote_cert": "/peer.pem"})
    planner.update({"u1": row, "u2": PSK_ROW},
                   {"certificate": "/c.pem", "private_key": "/k.pem"}, NOW)  # fmt: skip
    assert "certificate: a certificate of " in planner.desired.invalid["t"].reason
    assert set(planner.desired.conns) == {"ovs-10.0.0.9"}


def test_a_connection_longer_than_charon_takes_is_refused_for_its_tunnels() -> None:
    """Values each within limits, the load-conn message beyond 512 KiB: many UDP tunnels to
    one peer, each on its own port and so with children of its own, with long names."""
    rows = {
        f"u{i}": InterfaceRow(f"t{i:04d}" + "n" * 200, "vxlan",
                              {"remote_ip": "10.0.0.2", "psk": "s", "dst_port": str(5000 + i)})
        for i in range(1500)
    }  # fmt: skip
    planner = Planner(files({}), unread_row)
    delta = planner.update({**rows, "ok": PSK_ROW}, {}, NOW)
    invalid = planner.desired.invalid
    assert len(invalid) == 1500
    reason = "cannot be given to charon: a load-conn request of"
    assert all(reason in entry.reason for entry in invalid.values())
    assert set(planner.desired.conns) == {"ovs-10.0.0.9"}
    assert delta.internal_errors == []
    # Fewer tunnels fit again: the connection comes back.
    planner.update({f"u{i}": None for i in range(1000)}, None, NOW)
    assert "ovs-10.0.0.2" in planner.desired.conns and not planner.desired.invalid


# -- an unexpected exception: that tunnel invalid, "internal error" ---------------------------


def boom_for(name: str, original):  # type: ignore[no-untyped-def]
    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        if any(getattr(a, "name", None) == name for a in args) or any(
            isinstance(a, list) and any(getattr(t, "name", None) == name for t in a) for a in args
        ):
            raise ZeroDivisionError("a bug")
        return original(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("step", ["parse_tunnel", "admit", "plan_peer"])
def test_an_exception_planning_one_tunnel_makes_it_invalid_and_spares_the_others(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(desired, step, boom_for("bad", getattr(desired, step)))
    planner = Planner(files({}), unread_row)
    bad = InterfaceRow("bad", "vxlan", {"remote_ip": "10.0.0.2", "psk": "s"})
    delta = planner.update({"u1": bad, "u2": PSK_ROW}, {}, NOW)
    assert planner.desired.invalid["bad"].reason.startswith("ipsec: internal error")
    assert set(planner.desired.conns) == {"ovs-10.0.0.9"}
    ((what, exc),) = delta.internal_errors
    assert what in ("bad", "peer 10.0.0.2") and isinstance(exc, ZeroDivisionError)
    # Fail closed: its plaintext stays blocked (as an unknown type when it did not parse).
    assert any(spec.dst.startswith("10.0.0.2/") for spec in planner.policies)
    # The bug gone, the next change plans it.
    monkeypatch.undo()
    planner.update({"u1": InterfaceRow("bad", "vxlan", {"remote_ip": "10.0.0.2", "psk": "t"})},
                   None, NOW)  # fmt: skip
    assert "bad" not in planner.desired.invalid and "ovs-10.0.0.2" in planner.desired.conns


def test_an_exception_resolving_credentials_refuses_certificate_tunnels_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(desired, "resolve", broken)
    planner, other_config = cert_planner()
    row = InterfaceRow("t", "gre", {"remote_ip": "10.0.0.2", "remote_cert": "/big.pem"})
    delta = planner.update({"u1": row, "u2": PSK_ROW}, other_config, NOW)
    assert "internal error" in planner.desired.invalid["t"].reason
    assert set(planner.desired.conns) == {"ovs-10.0.0.9"}
    assert [what for what, _ in delta.internal_errors] == ["credentials"]
