"""Model -> desired charon state. The only place where VICI keys are spelled.

Tunnels are grouped by peer address into one VICI connection each: charon's responder picks the
first connection whose identities match, so a second connection to the same peer (say a GRE and
a Geneve port to one host) would have its CHILD_SAs refused ("traffic selectors unacceptable").
Each tunnel becomes one CHILD_SA config (two for UDP and STT tunnels) inside its peer's connection.

What status and render show of a connection (auth, identities, each tunnel's selectors) is
kept typed beside its encoded body (`ConnSpec`), so nothing reads the VICI bytes back.

May import: admission, credentials, ike_options.settings, model, naming, vici_wire, stdlib.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovs_ipsec.core import naming, vici_wire
from ovs_ipsec.core.admission import admit, split_conflicts
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ike_options import settings as ike_settings
from ovs_ipsec.core.model import (
    IPPROTO_GRE,
    AuthMode,
    Config,
    InvalidTunnel,
    Secret,
    Tunnel,
)

# Interoperable with upstream ovs-monitor-ipsec's strongSwan defaults
# (ike=aes256gcm16-sha256-modp2048, esp=aes256gcm16-modp2048). The ESP group applies to rekeys.
IKE_PROPOSALS = ike_settings.IKE_PROPOSALS
ESP_PROPOSALS = ike_settings.ESP_PROPOSALS

VICI = dict[str, Any]
VICIOptions = tuple[tuple[str, ike_settings.VICIValue], ...]


class AuthClass(enum.StrEnum):
    """charon's `auth` of one side of a connection."""

    PSK = "psk"
    PUBKEY = "pubkey"


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """A CHILD_SA's traffic selector on one side: our (or the peer's) IKE address, one protocol
    and, if set, one port. VICI spells it `dynamic[17/6081]` (`vici`)."""

    proto: int
    port: int | None = None

    @property
    def vici(self) -> str:
        if self.port is None:
            return f"dynamic[{self.proto}]"
        return f"dynamic[{self.proto}/{self.port}]"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One CHILD_SA config of a tunnel, named `naming.child_name(tunnel, suffix)`. Equal for
    every tunnel of one type and port, so one object serves them all (`_children`)."""

    suffix: str
    local_ts: TrafficSelector
    remote_ts: TrafficSelector


@dataclass(frozen=True, slots=True)
class Pki:
    """The certificates (PEM) a pubkey connection carries: ours, and the peer's pinned one
    (self-signed) or the CAs its chain must end in (CA-signed)."""

    local_cert: str
    remote_cert: str | None = None
    cacerts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One VICI connection and the tunnels it carries, as typed values. Its `load-conn` body
    (`body`; encoded, the bytes sent to charon: `wire`) is a pure function of these fields,
    built when it is sent and not kept: at thousands of connections the encoded bodies were
    the largest part of the planner's state. So equal specs have equal bodies, and comparing
    specs tells whether charon has the one wanted. What status and render show is read from
    the fields: the identities (bare, without the `fqdn:` charon is told) and each tunnel's
    children, in the order of `tunnels` (shared tuples: tunnels of one type and port have
    equal ones)."""

    name: str
    remote_ip: str
    tunnels: tuple[str, ...]
    auth: AuthClass
    local_id: str  # "": charon uses our IKE address
    remote_id: str
    children: tuple[tuple[ChildSpec, ...], ...]
    local_ip: str | None = None  # None: %any
    pki: Pki | None = None  # None for PSK
    # ipsec_* options as VICI keys (ike_options): the connection's, and per tunnel those of
    # its children (empty when no tunnel has any, as for most connections).
    conn_options: VICIOptions = ()
    child_options: tuple[VICIOptions, ...] = ()
    default_crypto: bool = False  # --use-default-crypto: no proposals unless options set them

    def children_of(self, tunnel: str) -> tuple[ChildSpec, ...]:
        """The CHILD_SA configs of one of `tunnels` (none for any other name)."""
        for name, children in zip(self.tunnels, self.children, strict=True):
            if name == tunnel:
                return children
        return ()

    @property
    def wire(self) -> bytes:
        return vici_wire.encode_message(self.body)

    @property
    def body(self) -> VICI:
        ike_default, esp_default = ike_settings.default_proposals(self.default_crypto)
        local, remote = self._auth_sections()
        children: VICI = {}
        for i, (tunnel, specs) in enumerate(zip(self.tunnels, self.children, strict=True)):
            extra = ike_settings.vici_values(self.child_options[i]) if self.child_options else {}
            for spec in specs:
                children[naming.child_name(tunnel, spec.suffix)] = _child(spec, extra, esp_default)
        body: VICI = {
            "version": "2",
            "local_addrs": [self.local_ip or "%any"],
            "remote_addrs": [self.remote_ip],
            # Retry for ever, like upstream's keyingtries=%forever.
            "keyingtries": "0",
            # Hosts do not move; without this IKE floats to port 4500 from the second exchange.
            "mobike": "no",
            "local": local,
            "remote": remote,
            "children": children,
        }
        if ike_default:
            body["proposals"] = list(ike_default)
        # The same for every member (split_conflicts); explicit options win over defaults.
        body.update(ike_settings.vici_values(self.conn_options))
        return body

    def _auth_sections(self) -> tuple[VICI, VICI]:
        """The `local` and `remote` sections."""
        auth = self.auth.value
        if self.auth is AuthClass.PSK:
            local: VICI = {"auth": auth, "id": self.local_id} if self.local_id else {"auth": auth}
            return local, {"auth": auth, "id": self.remote_id}
        assert self.pki is not None
        # strongSwan 6 defaults the identity to the subject DN when a certificate is present;
        # the OVS contract is the CN, so it is always explicit.
        local = {"auth": auth, "id": fqdn(self.local_id), "certs": [self.pki.local_cert]}
        remote: VICI = {"auth": auth, "id": fqdn(self.remote_id)}
        if self.pki.remote_cert is not None:
            # A certificate in the remote section is a constraint: the peer must authenticate
            # with exactly this one.
            remote["certs"] = [self.pki.remote_cert]
        else:
            # cacerts constrains the chain to these CAs (all of them during a rollover); the id
            # pins the peer's CN.
            remote["cacerts"] = list(self.pki.cacerts)
        return local, remote


@dataclass(frozen=True, slots=True)
class SharedSpec:
    """One `load-shared` secret."""

    id: str
    secret: Secret
    owners: tuple[str, ...]
    conn: str


@dataclass(frozen=True)
class KeySpec:
    """One `load-key` private key, known by the digest of its content (charon names keys by
    their public key, so they cannot carry our prefix)."""

    digest: str
    secret: Secret


@dataclass(frozen=True)
class Desired:
    conns: Mapping[str, ConnSpec] = field(default_factory=dict)
    shared: Mapping[str, SharedSpec] = field(default_factory=dict)
    keys: Mapping[str, KeySpec] = field(default_factory=dict)
    # Tunnels that cannot be loaded: parse errors plus conflicts found while grouping.
    invalid: Mapping[str, InvalidTunnel] = field(default_factory=dict)


def plan(
    config: Config, credentials: Credentials | None = None, *, use_default_crypto: bool = False
) -> Desired:
    credentials = credentials or Credentials()
    invalid: dict[str, InvalidTunnel] = dict(config.invalid)
    settings: dict[str, ike_settings.IkeSettings] = {}
    by_peer: dict[str, list[Tunnel]] = {}
    for tunnel in sorted(config.tunnels.values(), key=lambda t: t.name):
        translated, rejected = admit(tunnel, credentials, use_default_crypto)
        if rejected is not None:
            invalid[tunnel.name] = rejected
            continue
        assert translated is not None
        settings[tunnel.name] = translated
        by_peer.setdefault(tunnel.remote_ip, []).append(tunnel)

    conns: dict[str, ConnSpec] = {}
    shared: dict[str, SharedSpec] = {}
    for remote_ip, group in by_peer.items():
        conn, secret, conflicts = plan_peer(
            remote_ip, group, settings, credentials, use_default_crypto
        )
        invalid.update(conflicts)
        conns[conn.name] = conn
        if secret is not None:
            shared[secret.id] = secret
    uses_key = any(t.psk is None for g in by_peer.values() for t in g)
    return Desired(
        conns=conns, shared=shared, keys=plan_keys(credentials, uses_key), invalid=invalid
    )


def plan_peer(
    remote_ip: str,
    group: list[Tunnel],
    settings: Mapping[str, ike_settings.IkeSettings],
    credentials: Credentials,
    use_default_crypto: bool,
) -> tuple[ConnSpec, SharedSpec | None, dict[str, InvalidTunnel]]:
    """The connection (and PSK) of one peer from its admitted tunnels, sorted by name."""
    members, conflicts = split_conflicts(group, settings)
    conn = plan_conn(remote_ip, members, credentials, settings, use_default_crypto)
    return conn, plan_shared(conn, members[0]), conflicts


def plan_keys(credentials: Credentials, uses_key: bool) -> dict[str, KeySpec]:
    local = credentials.local
    if local is None or not uses_key:
        return {}
    return {local.key_digest: KeySpec(local.key_digest, local.key.pem)}


def plan_conn(
    remote_ip: str,
    members: list[Tunnel],
    credentials: Credentials,
    settings: Mapping[str, ike_settings.IkeSettings] | None = None,
    use_default_crypto: bool = False,
) -> ConnSpec:
    first = members[0]
    settings = settings or {}
    auth, local_id, remote_id = plan_identities(first, credentials)
    child_options = tuple(settings[t.name].child if t.name in settings else () for t in members)
    conn = ConnSpec(
        name=naming.conn_name(remote_ip),
        remote_ip=remote_ip,
        tunnels=tuple(t.name for t in members),
        auth=auth,
        local_id=local_id,
        remote_id=remote_id,
        children=_shared(tuple(tunnel_children(t.type.protocol, t.dst_port) for t in members)),
        local_ip=first.local_ip,
        pki=_pki(first, credentials, auth),
        conn_options=settings[first.name].conn if first.name in settings else (),
        child_options=child_options if any(child_options) else (),
        default_crypto=use_default_crypto,
    )
    # Encoded here once, and dropped, so that a body charon could not take makes its tunnels
    # invalid now, with the reason (TooLarge for a value VICI cannot carry).
    vici_wire.check_request("load-conn", vici_wire.section_size(conn.name, conn.wire))
    return conn


def fqdn(name: str) -> str:
    """A CN as charon's FQDN identity: the explicit type keeps a CN that looks like an address
    from being taken for an IP identity, and matches the SAN DNS entry OVS requires."""
    return f"fqdn:{name}"


def plan_identities(tunnel: Tunnel, credentials: Credentials) -> tuple[AuthClass, str, str]:
    """(auth, local id, remote id) of a peer's connection, bare (charon gets CNs as `fqdn()`)."""
    if tunnel.auth is AuthMode.PSK:
        # Without local_ip charon uses the address IKE runs from, which is what the peer (ours or
        # upstream's, whose default rightid is our address) expects.
        return AuthClass.PSK, tunnel.local_ip or "", tunnel.remote_ip
    local = credentials.local
    assert local is not None  # credential_errors() keeps such tunnels out
    if tunnel.auth is AuthMode.SELF_SIGNED:
        assert tunnel.remote_cert is not None
        pinned = credentials.remote_certs[tunnel.remote_cert]
        assert pinned.cn is not None
        return AuthClass.PUBKEY, local.identity, pinned.cn
    assert tunnel.remote_name is not None
    return AuthClass.PUBKEY, local.identity, tunnel.remote_name


def _pki(tunnel: Tunnel, credentials: Credentials, auth: AuthClass) -> Pki | None:
    if auth is AuthClass.PSK:
        return None
    assert credentials.local is not None
    if tunnel.auth is AuthMode.SELF_SIGNED:
        assert tunnel.remote_cert is not None
        pinned = credentials.remote_certs[tunnel.remote_cert]
        return Pki(credentials.local.cert.pem, remote_cert=pinned.pem)
    return Pki(credentials.local.cert.pem, cacerts=tuple(ca.pem for ca in credentials.cas))


def plan_shared(conn: ConnSpec, tunnel: Tunnel) -> SharedSpec | None:
    if tunnel.psk is None:
        return None
    return SharedSpec(
        id=naming.shared_id(tunnel.remote_ip),
        secret=tunnel.psk,
        owners=(tunnel.remote_ip,),
        conn=conn.name,
    )


@functools.lru_cache(maxsize=1024)
def tunnel_children(protocol: int, dst_port: int | None) -> tuple[ChildSpec, ...]:
    """CHILD_SA configs: GRE and ip6gre (no port) are one protocol both ways; a UDP tunnel (or
    STT, over TCP) sends from a hashed source port to the fixed destination port, so it needs
    one child per direction of the flow. Cached: every tunnel of one type and port shares one
    tuple."""
    if protocol == IPPROTO_GRE or dst_port is None:
        gre = TrafficSelector(IPPROTO_GRE)
        return (ChildSpec("", gre, gre),)
    port_ts = TrafficSelector(protocol, dst_port)
    any_ts = TrafficSelector(protocol)
    return (ChildSpec("-in", port_ts, any_ts), ChildSpec("-out", any_ts, port_ts))


@functools.lru_cache(maxsize=256)
def _shared(per_tunnel: tuple[tuple[ChildSpec, ...], ...]) -> tuple[tuple[ChildSpec, ...], ...]:
    # Equal values are one object: thousands of one-tunnel peers hold a handful of tuples.
    return per_tunnel


def _child(
    spec: ChildSpec, extra: Mapping[str, Any], esp_default: tuple[str, ...] = ESP_PROPOSALS
) -> VICI:
    # Built afresh for every body: bodies are built to be encoded and dropped.
    child: VICI = {
        "mode": "transport",
        "local_ts": [spec.local_ts.vici],
        "remote_ts": [spec.remote_ts.vici],
        # Trap policies from the moment the connection is loaded: no SA, no plaintext.
        "start_action": "trap",
    }
    if esp_default:
        child["esp_proposals"] = list(esp_default)
    # ike_options never emits mode, selectors or start_action, so this cannot weaken them.
    child.update(extra)
    return child
