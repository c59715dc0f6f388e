"""Model -> desired charon state. The only place where VICI keys are spelled.

Tunnels are grouped by peer address into one VICI connection each: charon's responder picks the
first connection whose identities match, so a second connection to the same peer (say a GRE and
a Geneve port to one host) would have its CHILD_SAs refused ("traffic selectors unacceptable").
Each tunnel becomes one CHILD_SA config (two for UDP tunnels) inside its peer's connection.

May import: credentials, ike_options.translate, ike_options.settings, model, naming, vicidata,
stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovs_ipsec.core import naming, vicidata
from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ike_options import settings as ike_settings
from ovs_ipsec.core.model import (
    IPPROTO_GRE,
    IPPROTO_UDP,
    AuthMode,
    Config,
    Invalid,
    InvalidTunnel,
    Secret,
    Tunnel,
)

# Interoperable with upstream ovs-monitor-ipsec's strongSwan defaults
# (ike=aes256gcm16-sha256-modp2048, esp=aes256gcm16-modp2048). The ESP group applies to rekeys.
IKE_PROPOSALS = ike_settings.IKE_PROPOSALS
ESP_PROPOSALS = ike_settings.ESP_PROPOSALS

VICI = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One VICI connection and the tunnels it carries. The `load-conn` body is kept encoded
    (`wire`, the bytes sent to charon, compared to tell whether charon has it): at thousands
    of connections, four dicts and a list each would be a fifth of the daemon's state. `body`
    decodes it for the few that read it (status commands, tests)."""

    name: str
    remote_ip: str
    tunnels: tuple[str, ...]
    wire: bytes

    @classmethod
    def of(
        cls, name: str, remote_ip: str, tunnels: tuple[str, ...], body: Mapping[str, Any]
    ) -> ConnSpec:
        return cls(name, remote_ip, tunnels, vicidata.encode(body))

    @property
    def body(self) -> dict[str, Any]:
        return vicidata.parse(self.wire)


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


def admit(
    tunnel: Tunnel, credentials: Credentials, use_default_crypto: bool
) -> tuple[ike_settings.IkeSettings | None, InvalidTunnel | None]:
    """A tunnel's translated ipsec_* options, or why it cannot be loaded (options or
    credentials)."""
    translated: ike_settings.IkeSettings | None = ike_settings.NO_SETTINGS
    option_errors: tuple[Invalid, ...] = ()
    if tunnel.ike_options:
        # The option table: loaded when first needed.
        from ovs_ipsec.core.ike_options.translate import translate

        translated, option_errors = translate(
            tunnel.ike_options, use_default_crypto=use_default_crypto
        )
    errors = option_errors + credential_errors(tunnel, credentials)
    if errors or translated is None:
        return None, _invalid(tunnel, errors)
    return translated, None


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


def credential_errors(tunnel: Tunnel, credentials: Credentials) -> tuple[Invalid, ...]:
    """Why a certificate tunnel cannot be loaded with the credentials at hand."""
    if tunnel.auth is AuthMode.PSK:
        return ()
    errors: list[Invalid] = []
    if credentials.local is None:
        errors.extend(credentials.local_errors or (Invalid("certificate", "not readable"),))
    if tunnel.auth is AuthMode.CA_SIGNED and not credentials.cas:
        errors.extend(credentials.ca_errors or (Invalid("ca_cert", "no usable CA"),))
    if tunnel.auth is AuthMode.SELF_SIGNED:
        assert tunnel.remote_cert is not None
        remote = credentials.remote_certs.get(tunnel.remote_cert)
        if remote is None:
            errors.append(
                credentials.remote_errors.get(tunnel.remote_cert)
                or Invalid("remote_cert", "not readable")
            )
        elif tunnel.remote_name and remote.cn != tunnel.remote_name:
            errors.append(
                Invalid(
                    "remote_name",
                    f"{tunnel.remote_name!r} is not the CN of remote_cert "
                    f"({remote.cn!r}); remove remote_name or make them agree",
                )
            )
    return tuple(errors)


def _invalid(tunnel: Tunnel, errors: tuple[Invalid, ...]) -> InvalidTunnel:
    return InvalidTunnel(
        name=tunnel.name,
        errors=errors,
        type=tunnel.type,
        remote_ip=tunnel.remote_ip,
        dst_port=tunnel.dst_port,
    )


def peer_settings(tunnel: Tunnel) -> tuple[tuple[str, Any], ...]:
    """What every tunnel to one peer must agree on, since they share one IKE_SA."""
    return (
        ("local_ip", tunnel.local_ip),
        ("auth", tunnel.auth),
        ("psk", tunnel.psk),
        ("remote_cert", tunnel.remote_cert),
        ("remote_name", tunnel.remote_name),
    )


def split_conflicts(
    group: list[Tunnel], settings: Mapping[str, ike_settings.IkeSettings] | None = None
) -> tuple[list[Tunnel], dict[str, InvalidTunnel]]:
    """Keep the tunnels that agree with the first (by name); the others are invalid."""
    first = group[0]
    reference = dict(peer_settings(first))
    members = [first]
    conflicts: dict[str, InvalidTunnel] = {}
    for tunnel in group[1:]:
        differing = [k for k, v in peer_settings(tunnel) if reference[k] != v]
        if settings is not None:
            # Connection-level ipsec_* options live on the one IKE_SA the peer's tunnels share.
            differing += ike_settings.conn_differences(
                settings.get(first.name, ike_settings.NO_SETTINGS),
                settings.get(tunnel.name, ike_settings.NO_SETTINGS),
            )
        if not differing:
            members.append(tunnel)
            continue
        errors = tuple(
            Invalid(
                key,
                f"differs from tunnel {first.name!r} to the same remote_ip {first.remote_ip}; "
                "all tunnels to one peer share one IKE SA and must agree",
            )
            for key in differing
        )
        conflicts[tunnel.name] = _invalid(tunnel, errors)
    return members, conflicts


def plan_conn(
    remote_ip: str,
    members: list[Tunnel],
    credentials: Credentials,
    settings: Mapping[str, ike_settings.IkeSettings] | None = None,
    use_default_crypto: bool = False,
) -> ConnSpec:
    first = members[0]
    settings = settings or {}
    ike_default, esp_default = ike_settings.default_proposals(use_default_crypto)
    children: VICI = {}
    for tunnel in members:
        children.update(plan_children(tunnel, settings.get(tunnel.name), esp_default))
    body: VICI = {
        "version": "2",
        "local_addrs": [first.local_ip or "%any"],
        "remote_addrs": [remote_ip],
        # Retry for ever, like upstream's keyingtries=%forever.
        "keyingtries": "0",
        # Hosts do not move; without this IKE floats to port 4500 from the second exchange.
        "mobike": "no",
        "local": plan_local_auth(first, credentials),
        "remote": plan_remote_auth(first, credentials),
        "children": children,
    }
    if ike_default:
        body["proposals"] = list(ike_default)
    if first.name in settings:
        # The same for every member (split_conflicts); explicit options win over defaults.
        body.update(settings[first.name].conn_vici())
    return ConnSpec.of(
        name=naming.conn_name(remote_ip),
        remote_ip=remote_ip,
        tunnels=tuple(t.name for t in members),
        body=body,
    )


def fqdn(name: str) -> str:
    """A CN as charon's FQDN identity: the explicit type keeps a CN that looks like an address
    from being taken for an IP identity, and matches the SAN DNS entry OVS requires."""
    return f"fqdn:{name}"


def plan_local_auth(tunnel: Tunnel, credentials: Credentials) -> VICI:
    if tunnel.auth is AuthMode.PSK:
        # Without local_ip charon uses the address IKE runs from, which is what the peer (ours or
        # upstream's, whose default rightid is our address) expects.
        if tunnel.local_ip:
            return {"auth": "psk", "id": tunnel.local_ip}
        return {"auth": "psk"}
    local = credentials.local
    assert local is not None  # credential_errors() keeps such tunnels out
    # strongSwan 6 defaults the identity to the subject DN when a certificate is present; the
    # OVS contract is the CN, so it is always explicit.
    return {"auth": "pubkey", "id": fqdn(local.identity), "certs": [local.cert.pem]}


def plan_remote_auth(tunnel: Tunnel, credentials: Credentials) -> VICI:
    if tunnel.auth is AuthMode.PSK:
        return {"auth": "psk", "id": tunnel.remote_ip}
    if tunnel.auth is AuthMode.SELF_SIGNED:
        assert tunnel.remote_cert is not None
        pinned = credentials.remote_certs[tunnel.remote_cert]
        assert pinned.cn is not None
        # A certificate in the remote section is a constraint: the peer must authenticate with
        # exactly this one.
        return {"auth": "pubkey", "id": fqdn(pinned.cn), "certs": [pinned.pem]}
    assert tunnel.remote_name is not None
    # cacerts constrains the chain to these CAs (all of them during a rollover); the id pins
    # the peer's CN.
    return {
        "auth": "pubkey",
        "id": fqdn(tunnel.remote_name),
        "cacerts": [ca.pem for ca in credentials.cas],
    }


def plan_shared(conn: ConnSpec, tunnel: Tunnel) -> SharedSpec | None:
    if tunnel.psk is None:
        return None
    return SharedSpec(
        id=naming.shared_id(tunnel.remote_ip),
        secret=tunnel.psk,
        owners=(tunnel.remote_ip,),
        conn=conn.name,
    )


def plan_children(
    tunnel: Tunnel,
    settings: ike_settings.IkeSettings | None = None,
    esp_default: tuple[str, ...] = ESP_PROPOSALS,
) -> VICI:
    """CHILD_SA configs: GRE is one protocol both ways; a UDP tunnel sends from a hashed source
    port to the fixed destination port, so it needs one child per direction of the flow."""
    extra = settings.child_vici() if settings is not None else {}
    if tunnel.dst_port is None:
        gre = f"dynamic[{IPPROTO_GRE}]"
        return {naming.child_name(tunnel.name): _child(gre, gre, extra, esp_default)}
    port_ts = f"dynamic[{IPPROTO_UDP}/{tunnel.dst_port}]"
    any_ts = f"dynamic[{IPPROTO_UDP}]"
    return {
        naming.child_name(tunnel.name, "-in"): _child(port_ts, any_ts, extra, esp_default),
        naming.child_name(tunnel.name, "-out"): _child(any_ts, port_ts, extra, esp_default),
    }


def _child(
    local_ts: str,
    remote_ts: str,
    extra: Mapping[str, Any],
    esp_default: tuple[str, ...] = ESP_PROPOSALS,
) -> VICI:
    # Built afresh for every connection: a body is encoded (ConnSpec.wire) as soon as it is
    # planned, so sharing its parts between connections would save no memory.
    child: VICI = {
        "mode": "transport",
        "local_ts": [local_ts],
        "remote_ts": [remote_ts],
        # Trap policies from the moment the connection is loaded: no SA, no plaintext.
        "start_action": "trap",
    }
    if esp_default:
        child["esp_proposals"] = list(esp_default)
    # ike_options never emits mode, selectors or start_action, so this cannot weaken them.
    child.update(extra)
    return child
