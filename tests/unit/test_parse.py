"""Table tests for every OVSDB key that `parse.py` reads.

Each table row changes one key of an otherwise valid tunnel (or of `other_config`), so a rejection
can be checked to name exactly that key, and an invalid tunnel to keep what did parse (its type,
remote_ip and dst_port are needed to block its plaintext).

Over 400 lines: one table row per OVSDB key and per way it can be wrong.
"""

from __future__ import annotations

import pytest

from ovs_ipsec.core.model import (
    IPPROTO_TCP,
    REMOTE_FLOW,
    AuthMode,
    GlobalConfig,
    InterfaceRow,
    InvalidTunnel,
    Secret,
    SkbMark,
    Snapshot,
    Tunnel,
    TunnelType,
)
from ovs_ipsec.core.parse import (
    MAX_OPTION_LENGTH,
    caveat,
    is_ipsec_port,
    parse_config,
    parse_global,
    parse_skb_mark,
    parse_tunnel,
    tunnel_ports,
)

PSK = {"remote_ip": "192.0.2.2", "psk": "swordfish"}
CERTS = GlobalConfig(certificate="/etc/ipsec/host.pem", private_key="/etc/ipsec/host.key")
CA = GlobalConfig(
    certificate="/etc/ipsec/host.pem", private_key="/etc/ipsec/host.key", ca_cert="/etc/ca.pem"
)


def parse(
    type_: str = "gre",
    options: dict[str, str] | None = None,
    global_config: GlobalConfig | None = None,
    name: str = "tun0",
) -> Tunnel | InvalidTunnel:
    row = InterfaceRow(name, type_, dict(PSK if options is None else options))
    return parse_tunnel(row, global_config or GlobalConfig())


def with_psk(**changes: str | None) -> dict[str, str]:
    """The valid PSK options with some keys changed (None removes a key)."""
    options = dict(PSK)
    for key, value in changes.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value
    return options


def invalid(result: Tunnel | InvalidTunnel) -> InvalidTunnel:
    assert isinstance(result, InvalidTunnel), f"expected a rejection, got {result!r}"
    assert result.errors, "a rejection must carry at least one reason"
    for error in result.errors:
        assert error.key and error.reason
    return result


def valid(result: Tunnel | InvalidTunnel) -> Tunnel:
    assert isinstance(result, Tunnel), f"expected a tunnel, got {result!r}"
    return result


def error_keys(result: Tunnel | InvalidTunnel) -> list[str]:
    return [error.key for error in invalid(result).errors]


# -------------------------------------------------------------------------------------------
# Which ports are IPsec tunnels at all


@pytest.mark.parametrize(
    "options",
    [
        {"remote_ip": "192.0.2.2"},
        {"remote_ip": "192.0.2.2", "key": "5", "ipsec_forceencaps": "yes"},
        {"remote_ip": "flow", "dst_port": "garbage"},
        {},
    ],
)
@pytest.mark.parametrize("type_", ["gre", "geneve", "vxlan", "stt", "ip6gre", "erspan", ""])
def test_ports_without_auth_keys_are_ignored(type_: str, options: dict[str, str]) -> None:
    """A port without psk, remote_cert or remote_name is not an IPsec tunnel, whatever its type
    or other options: it is neither a tunnel nor an invalid tunnel."""
    config = parse_config(Snapshot((InterfaceRow("p", type_, options),), {}))
    assert not is_ipsec_port(options)
    assert config.tunnels == {}
    assert config.invalid == {}


@pytest.mark.parametrize("key", ["psk", "remote_cert", "remote_name"])
def test_presence_of_an_auth_key_makes_an_ipsec_port_even_when_empty(key: str) -> None:
    """Upstream's rule: the key being present, even empty, asks for IPsec; an empty value then
    rejects the port (naming that key) instead of silently leaving it in plaintext."""
    options = {"remote_ip": "192.0.2.2", key: ""}
    assert is_ipsec_port(options)
    config = parse_config(Snapshot((InterfaceRow("p", "gre", options),), {}))
    assert list(config.invalid) == ["p"]
    assert key in error_keys(config.invalid["p"])


def test_parse_config_sorts_ports_into_tunnels_and_invalid_by_name() -> None:
    """Valid IPsec ports land in `tunnels`, rejected ones in `invalid`, both keyed by name."""
    rows = (
        InterfaceRow("good", "gre", PSK),
        InterfaceRow("bad", "gre", with_psk(remote_ip=None)),
        InterfaceRow("plain", "vxlan", {"remote_ip": "192.0.2.9"}),
    )
    config = parse_config(Snapshot(rows, {}))
    assert list(config.tunnels) == ["good"]
    assert config.tunnels["good"].name == "good"
    assert list(config.invalid) == ["bad"]
    assert config.invalid["bad"].name == "bad"


# -------------------------------------------------------------------------------------------
# type


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        ("gre", TunnelType.GRE),
        ("geneve", TunnelType.GENEVE),
        ("vxlan", TunnelType.VXLAN),
        ("stt", TunnelType.STT),
    ],
)
def test_supported_types(type_: str, expected: TunnelType) -> None:
    """gre, geneve, vxlan and stt carry IPsec (ip6gre too, over IPv6: below)."""
    assert valid(parse(type_)).type is expected


@pytest.mark.parametrize("auth", ["psk", "remote_cert", "remote_name"])
def test_ip6gre_carries_ipsec_over_ipv6_in_every_auth_mode(auth: str) -> None:
    """OVS's kernel datapath sends GRE over IPv6 only as ip6gre: it is GRE's IPv6 twin."""
    options = {"remote_ip": "fd00::2", "local_ip": "fd00::1"}
    options[auth] = {"psk": "swordfish", "remote_cert": "/etc/peer.pem"}.get(auth, "peer")
    pki = GlobalConfig(certificate="/c.pem", private_key="/k.pem", ca_cert="/ca.pem")
    tunnel = valid(parse("ip6gre", options, pki if auth != "psk" else None))
    assert (tunnel.type, tunnel.remote_ip, tunnel.dst_port, tunnel.family) == (
        TunnelType.IP6GRE,
        "fd00::2",
        None,
        6,
    )


@pytest.mark.parametrize("remote", ["192.0.2.2", "::ffff:192.0.2.2"])
def test_ip6gre_to_an_ipv4_remote_is_invalid_with_a_reason(remote: str) -> None:
    """An ip6gre device sends nothing to IPv4 (an IPv4-mapped address included): the reason
    says to use type=gre; the address is kept for the fail-closed blocks."""
    result = invalid(parse("ip6gre", with_psk(remote_ip=remote)))
    assert error_keys(result) == ["remote_ip"]
    assert "type=ip6gre needs an IPv6 address" in result.errors[0].reason
    assert "type=gre" in result.errors[0].reason
    assert (result.type, result.remote_ip) == (TunnelType.IP6GRE, "192.0.2.2")


@pytest.mark.parametrize("local_ip", [None, "fd00::1"])
def test_ip6gre_is_valid_with_a_caveat(local_ip: str | None) -> None:
    """Linux looks up the IPsec policy of an OVS ip6gre packet with source `::` (before it
    picks the address), with or without local_ip: loaded and protected, but it carries
    nothing, and the caveat says why."""
    tunnel = valid(parse("ip6gre", with_psk(remote_ip="fd00::2", local_ip=local_ip)))
    warning = caveat(tunnel)
    assert warning is not None and "type=ip6gre carries no traffic under IPsec" in warning
    assert caveat(valid(parse("gre"))) is None


@pytest.mark.parametrize(("dst_port", "expected"), [(None, 7471), ("7500", 7500)])
def test_stt_reads_its_tcp_port_from_dst_port(dst_port: str | None, expected: int) -> None:
    """STT is sent to a TCP port: options:dst_port, 7471 by default (OVS's STT_DST_PORT)."""
    assert valid(parse("stt", with_psk(dst_port=dst_port))).dst_port == expected


@pytest.mark.parametrize(
    "type_",
    [
        "erspan",
        "ip6erspan",
        "bareudp",
        "gtpu",
        "srv6",
        "lisp",
        "",
        "internal",
        "system",
        "GRE",
        " gre",
    ],
)
def test_unsupported_types_are_rejected_naming_type(type_: str) -> None:
    """An IPsec port on any other type is invalid with a reason on `type` that shows the type;
    its remote_ip is kept so its plaintext can still be blocked."""
    result = invalid(parse(type_))
    assert error_keys(result) == ["type"]
    assert repr(type_) in result.errors[0].reason
    assert result.type is None
    assert result.remote_ip == "192.0.2.2"


# -------------------------------------------------------------------------------------------
# remote_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.2", "192.0.2.2"),
        ("10.255.255.254", "10.255.255.254"),
        ("2001:db8::2", "2001:db8::2"),
        ("2001:DB8::2", "2001:db8::2"),
        ("2001:0db8:0000:0000:0000:0000:0000:0002", "2001:db8::2"),
        ("fe80::1", "fe80::1"),
    ],
)
def test_remote_ip_is_normalised(text: str, expected: str) -> None:
    """remote_ip is stored in canonical form, so one peer written two ways is one peer."""
    assert valid(parse(options=with_psk(remote_ip=text))).remote_ip == expected


@pytest.mark.parametrize(
    "text",
    [
        None,  # missing
        "",
        "   ",
        "flow",
        "peer.example.com",
        "192.0.2",
        "192.0.2.256",
        "192.0.2.2/32",
        "2001:db8::/64",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        # An IPv6 zone: vswitchd (inet_pton) rejects it and charon cannot use it as an address.
        "fe80::1%eth0",
    ],
)
@pytest.mark.parametrize("type_", ["gre", "vxlan"])
def test_bad_remote_ip_is_rejected_naming_remote_ip(type_: str, text: str | None) -> None:
    """Missing, empty, `flow`, non-address, unspecified and multicast remote_ip values are
    rejected with exactly one reason, on `remote_ip`; type and dst_port are kept."""
    result = invalid(parse(type_, with_psk(remote_ip=text)))
    assert error_keys(result) == ["remote_ip"]
    # `flow` is kept: OVS sends wherever a flow says, and the blocks cover every address.
    assert result.remote_ip == (REMOTE_FLOW if text == "flow" else None)
    assert result.type is TunnelType(type_)
    assert result.dst_port == (4789 if type_ == "vxlan" else None)


def test_huge_remote_ip_is_quoted_shortened_in_the_reason() -> None:
    """A huge bad value cannot flood the log: the reason quotes only a prefix of it."""
    result = invalid(parse(options=with_psk(remote_ip="x" * 100_000)))
    assert "remote_ip" in error_keys(result)
    assert all(len(error.reason) < 200 for error in result.errors)


# -------------------------------------------------------------------------------------------
# local_ip


@pytest.mark.parametrize(
    ("remote", "local", "expected"),
    [
        ("192.0.2.2", None, None),
        ("192.0.2.2", "", None),  # empty means unset, as in OVS
        ("192.0.2.2", "192.0.2.1", "192.0.2.1"),
        ("2001:db8::2", "2001:DB8:0::1", "2001:db8::1"),
    ],
)
def test_local_ip(remote: str, local: str | None, expected: str | None) -> None:
    """local_ip is optional and normalised like remote_ip."""
    tunnel = valid(parse(options=with_psk(remote_ip=remote, local_ip=local)))
    assert tunnel.local_ip == expected


@pytest.mark.parametrize(
    ("remote", "local"),
    [("192.0.2.2", "2001:db8::1"), ("2001:db8::2", "192.0.2.1")],
)
def test_local_ip_of_the_other_family_is_rejected(remote: str, local: str) -> None:
    """IKE cannot run from an IPv4 address to an IPv6 one: a family mismatch names local_ip,
    and remote_ip (which is fine) is kept."""
    result = invalid(parse(options=with_psk(remote_ip=remote, local_ip=local)))
    assert error_keys(result) == ["local_ip"]
    assert result.remote_ip == remote


@pytest.mark.parametrize("local", ["flow", "host", "0.0.0.0", "::", "224.0.0.1", "192.0.2.1/24"])
def test_bad_local_ip_is_rejected_naming_local_ip(local: str) -> None:
    """A set local_ip must be a unicast address."""
    assert error_keys(parse(options=with_psk(local_ip=local))) == ["local_ip"]


# -------------------------------------------------------------------------------------------
# dst_port


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("geneve", None, 6081),
        ("vxlan", None, 4789),
        ("geneve", "6082", 6082),
        ("vxlan", "8472", 8472),
        ("vxlan", "1", 1),
        ("vxlan", "65535", 65535),
        # vswitchd reads dst_port with atoi(), which skips leading blanks.
        ("vxlan", " 4790", 4790),
        ("vxlan", "4790 ", 4790),
        ("vxlan", " 4790 ", 4790),
    ],
)
def test_dst_port(type_: str, text: str | None, expected: int) -> None:
    """UDP tunnels use options:dst_port when set, else the IANA port of their type."""
    assert valid(parse(type_, with_psk(dst_port=text))).dst_port == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "http",
        "0",
        "65536",
        "99999999999999999999",
        "-1",
        "+4789",
        "4789abc",
        "0x12b5",
        "4789.0",
        "1e3",
        "47 89",
        # Non-ASCII digits: vswitchd's atoi() reads them as 0 (the default port), so accepting
        # one as another number would encrypt a port the tunnel does not use.
        pytest.param("٨٠٨٠", id="arabic-indic-8080"),
        pytest.param("４７８９", id="fullwidth-4789"),
        # str.isdigit() is true for these but int() cannot read them.
        pytest.param("²", id="superscript-2"),
        pytest.param("4789²", id="4789-superscript-2"),
    ],
)
@pytest.mark.parametrize("type_", ["geneve", "vxlan"])
def test_bad_dst_port_is_rejected_naming_dst_port(type_: str, text: str) -> None:
    """A dst_port that is not a port number 1-65535 is rejected (never raises), naming
    dst_port; type and remote_ip are kept."""
    result = invalid(parse(type_, with_psk(dst_port=text)))
    assert error_keys(result) == ["dst_port"]
    assert result.type is TunnelType(type_)
    assert result.remote_ip == "192.0.2.2"


@pytest.mark.parametrize("text", ["4790", "garbage", "0", "", "²"])
def test_dst_port_is_ignored_for_gre(text: str) -> None:
    """GRE has no ports: dst_port is neither used nor validated."""
    tunnel = valid(parse("gre", with_psk(dst_port=text)))
    assert tunnel.dst_port is None


# -------------------------------------------------------------------------------------------
# psk, remote_cert, remote_name


@pytest.mark.parametrize("psk", ["swordfish", " spaced ", "ünïcödé-🔑", "x" * MAX_OPTION_LENGTH])
def test_psk(psk: str) -> None:
    """A non-empty psk selects PSK authentication and is kept, verbatim, as a Secret."""
    tunnel = valid(parse(options=with_psk(psk=psk)))
    assert tunnel.auth is AuthMode.PSK
    assert tunnel.psk == Secret(psk)
    assert tunnel.remote_cert is None and tunnel.remote_name is None


@pytest.mark.parametrize("psk", ["", "x" * (MAX_OPTION_LENGTH + 1)])
def test_bad_psk_is_rejected_naming_psk_without_showing_it(psk: str) -> None:
    """An empty or oversized psk is rejected on `psk`; the reason never quotes the value."""
    result = invalid(parse("vxlan", with_psk(psk=psk, dst_port="4790")))
    assert error_keys(result) == ["psk"]
    assert psk == "" or psk not in result.reason
    assert (result.type, result.remote_ip, result.dst_port) == (TunnelType.VXLAN, "192.0.2.2", 4790)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"remote_cert": "/etc/peer.pem"}, ["remote_cert"]),
        ({"remote_name": "peer"}, ["remote_name"]),
        ({"remote_cert": "/etc/peer.pem", "remote_name": "peer"}, ["remote_cert", "remote_name"]),
        ({"remote_cert": ""}, ["remote_cert"]),
    ],
)
@pytest.mark.parametrize("global_config", [GlobalConfig(), CA])
def test_psk_with_certificate_options_is_rejected(
    extra: dict[str, str], named: list[str], global_config: GlobalConfig
) -> None:
    """psk together with remote_cert or remote_name on one tunnel is ambiguous: rejected on
    `psk`, and the reason names the other keys."""
    result = invalid(parse(options={**PSK, **extra}, global_config=global_config))
    assert error_keys(result) == ["psk"]
    for key in named:
        assert key in result.errors[0].reason
    assert "swordfish" not in result.reason


def test_remote_cert_selects_self_signed() -> None:
    """remote_cert (absolute) with a global certificate and private_key is self-signed
    authentication; ca_cert is not needed, and remote_cert wins over remote_name."""
    options = {"remote_ip": "192.0.2.2", "remote_cert": "/etc/peer.pem"}
    tunnel = valid(parse(options=options, global_config=CERTS))
    assert tunnel.auth is AuthMode.SELF_SIGNED
    assert tunnel.remote_cert == "/etc/peer.pem"
    assert tunnel.psk is None
    both = valid(parse(options={**options, "remote_name": "peer"}, global_config=CA))
    assert both.auth is AuthMode.SELF_SIGNED


def test_remote_name_selects_ca_signed() -> None:
    """remote_name with certificate, private_key and ca_cert is CA-signed authentication."""
    tunnel = valid(
        parse(options={"remote_ip": "192.0.2.2", "remote_name": "peer"}, global_config=CA)
    )
    assert tunnel.auth is AuthMode.CA_SIGNED
    assert tunnel.remote_name == "peer"


@pytest.mark.parametrize(
    ("options", "global_config", "key", "mentions"),
    [
        ({"remote_cert": ""}, CERTS, "remote_cert", "empty"),
        ({"remote_cert": "  "}, CERTS, "remote_cert", "empty"),
        ({"remote_cert": "peer.pem"}, CERTS, "remote_cert", "absolute"),
        ({"remote_cert": "./peer.pem"}, CERTS, "remote_cert", "absolute"),
        ({"remote_cert": "/etc/peer.pem"}, GlobalConfig(), "remote_cert", "certificate"),
        ({"remote_cert": "/etc/peer.pem"}, GlobalConfig(), "remote_cert", "private_key"),
        (
            {"remote_cert": "/etc/peer.pem"},
            GlobalConfig(certificate="/etc/host.pem"),
            "remote_cert",
            "private_key",
        ),
        (
            {"remote_cert": "/etc/peer.pem"},
            GlobalConfig(private_key="/etc/host.key"),
            "remote_cert",
            "certificate",
        ),
        ({"remote_name": ""}, CA, "remote_name", "empty"),
        ({"remote_name": " "}, CA, "remote_name", "empty"),
        ({"remote_name": "peer"}, CERTS, "remote_name", "ca_cert"),
        ({"remote_name": "peer"}, GlobalConfig(), "remote_name", "certificate"),
        (
            {"remote_name": "peer"},
            GlobalConfig(ca_cert="/etc/ca.pem"),
            "remote_name",
            "private_key",
        ),
    ],
)
def test_bad_certificate_options_are_rejected_naming_the_key(
    options: dict[str, str], global_config: GlobalConfig, key: str, mentions: str
) -> None:
    """Certificate modes reject empty or relative values and missing global credentials, on
    the tunnel's own key, and the reason says what is missing."""
    result = invalid(
        parse(options={"remote_ip": "192.0.2.2", **options}, global_config=global_config)
    )
    assert error_keys(result) == [key]
    assert mentions in result.errors[0].reason
    assert result.remote_ip == "192.0.2.2"


# -------------------------------------------------------------------------------------------
# ipsec_* pass-through options and sizes


def test_ipsec_options_are_collected_without_their_prefix() -> None:
    """ipsec_<key>=<value> options are kept as sorted (key, value) pairs, prefix stripped."""
    options = with_psk(ipsec_forceencaps="yes", ipsec_dpdaction="restart", key="5")
    tunnel = valid(parse(options=options))
    assert tunnel.ike_options == (("dpdaction", "restart"), ("forceencaps", "yes"))


@pytest.mark.parametrize("key", ["ipsec_ike", "key", "remote_name_typo", "csum"])
def test_oversized_option_is_rejected_naming_it(key: str) -> None:
    """Any option longer than MAX_OPTION_LENGTH rejects the tunnel, naming that option."""
    result = invalid(parse(options=with_psk(**{key: "v" * (MAX_OPTION_LENGTH + 1)})))
    assert error_keys(result) == [key]


def test_oversized_option_with_an_empty_key_still_names_it() -> None:
    """OVSDB allows an empty options key; rejecting its oversized value must still produce a
    non-empty key, or the log line cannot say what is wrong."""
    result = invalid(parse(options=with_psk(**{"": "v" * (MAX_OPTION_LENGTH + 1)})))
    assert len(result.errors) == 1


# -------------------------------------------------------------------------------------------
# Global other_config: certificate, private_key, ca_cert


@pytest.mark.parametrize("key", ["certificate", "private_key", "ca_cert"])
@pytest.mark.parametrize(
    ("value", "mentions"),
    [("", "empty"), ("   ", "empty"), ("host.pem", "absolute"), ("etc/host.pem", "absolute")],
)
def test_bad_global_paths_are_rejected_naming_the_key(key: str, value: str, mentions: str) -> None:
    """Empty or relative certificate, private_key and ca_cert become a global error on that key
    and count as unset."""
    config = parse_global({key: value})
    assert [(e.key, mentions in e.reason) for e in config.errors] == [(key, True)]
    assert getattr(config, key) is None


def test_global_paths() -> None:
    """Absolute paths are kept as they are; unset keys stay None without any error."""
    config = parse_global({"certificate": "/a.pem", "private_key": "/a.key", "ca_cert": "/ca.pem"})
    assert (config.certificate, config.private_key, config.ca_cert) == (
        "/a.pem",
        "/a.key",
        "/ca.pem",
    )
    assert config.errors == ()
    assert parse_global({}) == GlobalConfig()


def test_relative_global_certificate_rejects_certificate_tunnels() -> None:
    """A global path that failed to parse counts as unset for the tunnels that need it."""
    global_config = parse_global(
        {"certificate": "host.pem", "private_key": "/a.key", "ca_cert": "/ca.pem"}
    )
    result = invalid(
        parse(options={"remote_ip": "192.0.2.2", "remote_name": "p"}, global_config=global_config)
    )
    assert error_keys(result) == ["remote_name"]
    assert "certificate" in result.errors[0].reason


# -------------------------------------------------------------------------------------------
# ipsec_skb_mark


@pytest.mark.parametrize(
    ("text", "value", "mask"),
    [
        ("0/1", 0, 1),
        ("1/1", 1, 1),
        ("5", 5, 0xFFFFFFFF),
        ("0", 0, 0xFFFFFFFF),
        ("0x10/0xf0", 0x10, 0xF0),
        ("0X10/0XF0", 0x10, 0xF0),
        ("16/0xf0", 16, 0xF0),
        ("0xffffffff", 0xFFFFFFFF, 0xFFFFFFFF),
        ("4294967295/4294967295", 0xFFFFFFFF, 0xFFFFFFFF),
        (" 1/1 ", 1, 1),
        ("0/0", 0, 0),
    ],
)
def test_skb_mark(text: str, value: int, mask: int) -> None:
    """VALUE/MASK, or VALUE alone (mask 0xffffffff), each decimal or 0x-hex, 32 bits."""
    assert parse_skb_mark(text) == (SkbMark(value, mask), None)
    config = parse_global({"ipsec_skb_mark": text})
    assert config.skb_mark == SkbMark(value, mask)
    assert config.errors == ()


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "garbage",
        "1/",
        "/1",
        "1/1/1",
        "1//1",
        "0x",
        "0x1g",
        "1.0",
        "-1",
        "2/1",  # bits outside the mask could never match
        "0x10/0x0f",
        "1/0",
        "0x100000000",  # more than 32 bits
        "4294967296",
        "1/0x100000000",
        "99999999999999999999999/1",
        # Python's int() syntax is not the documented "decimal or 0x-hex" format.
        "1_0",
        "0x_f",
        pytest.param("٣", id="arabic-indic-3"),
    ],
)
def test_bad_skb_mark_is_rejected_naming_ipsec_skb_mark(text: str) -> None:
    """Anything else is a global error on ipsec_skb_mark and leaves no mark configured."""
    mark, error = parse_skb_mark(text)
    assert mark is None
    assert error is not None and error.key == "ipsec_skb_mark" and error.reason
    config = parse_global({"ipsec_skb_mark": text})
    assert config.skb_mark is None
    assert [e.key for e in config.errors] == ["ipsec_skb_mark"]


def test_skb_mark_unset() -> None:
    """Without ipsec_skb_mark there is no mark and no error."""
    assert parse_global({}).skb_mark is None


# -------------------------------------------------------------------------------------------
# ipsec_fail_open


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("yes", True),
        ("1", True),
        ("on", True),
        ("TRUE", True),
        (" true ", True),
        ("false", False),
        ("no", False),
        ("0", False),
        ("off", False),
        ("False", False),
    ],
)
def test_fail_open(text: str, expected: bool) -> None:
    """ipsec_fail_open reads the usual boolean spellings, case and blanks aside."""
    config = parse_global({"ipsec_fail_open": text})
    assert config.fail_open is expected
    assert config.errors == ()


@pytest.mark.parametrize("text", ["", "maybe", "2", "truee", "y"])
def test_bad_fail_open_is_rejected_and_stays_closed(text: str) -> None:
    """An unreadable ipsec_fail_open is an error on that key and fails closed (False)."""
    config = parse_global({"ipsec_fail_open": text})
    assert config.fail_open is False
    assert [e.key for e in config.errors] == ["ipsec_fail_open"]


def test_fail_open_defaults_to_closed() -> None:
    """Unset ipsec_fail_open means fail closed."""
    assert parse_global({}).fail_open is False


def test_global_errors_are_all_reported_together() -> None:
    """Several bad global keys give one error each, none hiding another."""
    config = parse_global(
        {"certificate": "", "private_key": "k", "ipsec_skb_mark": "x", "ipsec_fail_open": "?"}
    )
    assert sorted(e.key for e in config.errors) == [
        "certificate",
        "ipsec_fail_open",
        "ipsec_skb_mark",
        "private_key",
    ]


# -------------------------------------------------------------------------------------------
# tunnel_ports


def test_tunnel_ports_covers_every_udp_tunnel_ipsec_or_not() -> None:
    """tunnel_ports lists every UDP destination port any OVSDB tunnel uses, IPsec or not,
    default or custom, sorted and without duplicates; GRE and non-tunnel ports add none."""
    rows = (
        InterfaceRow("g0", "geneve", {"remote_ip": "192.0.2.2"}),  # plain, default port
        InterfaceRow("g1", "geneve", {**PSK, "dst_port": "6082"}),
        InterfaceRow("v0", "vxlan", {"remote_ip": "192.0.2.3", "dst_port": "8472"}),
        InterfaceRow("v1", "vxlan", {**PSK}),
        InterfaceRow("v2", "vxlan", {"remote_ip": "192.0.2.4", "dst_port": " 8472 "}),
        InterfaceRow("gt", "gtpu", {"remote_ip": "192.0.2.5"}),
        InterfaceRow("bu", "bareudp", {"remote_ip": "192.0.2.6", "dst_port": "6635"}),
        InterfaceRow("bx", "bareudp", {"remote_ip": "192.0.2.6"}),  # no default port
        InterfaceRow("gr", "gre", {**PSK, "dst_port": "9999"}),
        InterfaceRow("br0", "internal", {}),
        InterfaceRow("eth0", "", {"dst_port": "1234"}),
    )
    expected = (2152, 4789, 6081, 6082, 6635, 8472)
    assert tunnel_ports(rows) == expected
    assert parse_config(Snapshot(rows, {})).tunnel_ports == expected


def test_tcp_tunnel_ports_are_stt_ports_and_never_udp() -> None:
    """STT tunnels (IPsec or not) are sent to a TCP port: listed apart from the UDP ones, so
    that ipsec_skb_mark blocks TCP, not UDP, to them; ip6gre has no port."""
    rows = (
        InterfaceRow("s0", "stt", {"remote_ip": "192.0.2.2"}),  # plain, default port
        InterfaceRow("s1", "stt", {**PSK, "dst_port": "7500"}),
        InterfaceRow("g6", "ip6gre", {"remote_ip": "fd00::2", "psk": "x", "dst_port": "1"}),
        InterfaceRow("v0", "vxlan", {**PSK}),
    )
    config = parse_config(Snapshot(rows, {}))
    assert config.tunnel_ports == tunnel_ports(rows) == (4789,)
    assert config.tcp_tunnel_ports == tunnel_ports(rows, IPPROTO_TCP) == (7471, 7500)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "0",
        "65536",
        "",
        pytest.param("²", id="superscript-2"),
        pytest.param("٨٠٨٠", id="arabic-indic-8080"),
    ],
)
def test_tunnel_ports_bad_dst_port_means_default(text: str) -> None:
    """vswitchd reads dst_port with atoi() and uses the default port for 0, so an unreadable
    dst_port on a non-IPsec tunnel is counted as the default port (and never raises)."""
    rows = (InterfaceRow("v0", "vxlan", {"remote_ip": "192.0.2.3", "dst_port": text}),)
    assert tunnel_ports(rows) == (4789,)
    assert parse_config(Snapshot(rows, {})).tunnel_ports == (4789,)


# -------------------------------------------------------------------------------------------
# Several faults at once


def test_every_fault_is_reported_not_just_the_first() -> None:
    """Unlike upstream (first failure wins), each bad key gets its own reason."""
    options = {"remote_ip": "nope", "local_ip": "flow", "dst_port": "0", "psk": ""}
    result = invalid(parse("geneve", options))
    assert sorted(error_keys(result)) == ["dst_port", "local_ip", "psk", "remote_ip"]


def test_invalid_tunnel_keeps_what_parsed() -> None:
    """A tunnel rejected for its auth keeps type, normalised remote_ip and custom dst_port, so
    its plaintext can still be blocked."""
    result = invalid(
        parse("geneve", {"remote_ip": "2001:DB8::2", "dst_port": "7000", "remote_name": "x"})
    )
    assert (result.type, result.remote_ip, result.dst_port) == (
        TunnelType.GENEVE,
        "2001:db8::2",
        7000,
    )
    assert "remote_name: " in result.reason


@pytest.mark.parametrize("text", ["0/0", "0x0/0x0", " 0/0 "])
def test_skb_mark_mask_zero_is_accepted_with_a_warning(text: str) -> None:
    """A mask of 0 matches every packet: every plain tunnel of the host is blocked. It is what
    the operator wrote, so it stands, but it is not silent (issue 15, item 15)."""
    config = parse_global({"ipsec_skb_mark": text})
    assert config.skb_mark == SkbMark(0, 0) and not config.errors
    assert [w.key for w in config.warnings] == ["ipsec_skb_mark"]
    assert "every packet" in config.warnings[0].reason


@pytest.mark.parametrize("text", ["0/1", "1/1", "1"])
def test_skb_mark_with_a_mask_has_no_warning(text: str) -> None:
    assert parse_global({"ipsec_skb_mark": text}).warnings == ()
