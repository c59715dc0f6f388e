"""Which tunnels can be loaded: a tunnel's ipsec_* options translated and its credentials at
hand (`admit`), and, among the tunnels to one peer, those that agree with the first on what
their shared IKE_SA needs (`split_conflicts`); the others become invalid, naming the OVSDB key.

May import: credentials, ike_options.translate, ike_options.settings, log_text, model, stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ovs_ipsec.core.credentials import Credentials
from ovs_ipsec.core.ike_options import settings as ike_settings
from ovs_ipsec.core.log_text import quoted
from ovs_ipsec.core.model import AuthMode, Invalid, InvalidTunnel, Tunnel


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
                    f"{quoted(tunnel.remote_name)} is not the CN of remote_cert "
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
                f"differs from tunnel {quoted(first.name)} to the same remote_ip "
                f"{first.remote_ip}; all tunnels to one peer share one IKE SA and must agree",
            )
            for key in differing
        )
        conflicts[tunnel.name] = _invalid(tunnel, errors)
    return members, conflicts
