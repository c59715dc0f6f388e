"""Per-tunnel `options:ipsec_*` -> swanctl (VICI) connection and CHILD_SA keys, checked.

`translate()` looks each option up in the table (`options`), combines the ones that work
together (proposals and pfs, DPD, ipsec.conf's relative lifetimes and volumes), and refuses,
with a reason naming the OVSDB key, values that conflict or that charon would renew at once.

How the planner uses it: `translate()` for each tunnel that has ipsec_* options (errors make the
tunnel invalid). The result type (`IkeSettings`), the default proposals and `conn_differences()`
are in ike_options.settings, which the planner needs for every tunnel: this module and the
table, about 0.9 MiB of the daemon's memory once loaded, are loaded only when some tunnel has
ipsec_* options.

May import: ike_options.options, ike_options.proposals, ike_options.settings, ike_options.values,
model, parse, stdlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core.ike_options.options import PREFIX, clean, lookup
from ovs_ipsec.core.ike_options.proposals import has_ke, ke_groups, without_ke
from ovs_ipsec.core.ike_options.settings import (
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    NO_SETTINGS,
    IkeSettings,
    Level,
    VICIValue,
)
from ovs_ipsec.core.ike_options.values import Refused, as_seconds, human
from ovs_ipsec.core.model import Invalid
from ovs_ipsec.core.parse import quoted

# ipsec.conf defaults that its lifetime keys are relative to (strongSwan starter/confread.c).
IPSEC_CONF_IKELIFETIME = 3 * 3600
IPSEC_CONF_LIFETIME = 3600
IPSEC_CONF_MARGIN = 9 * 60
IPSEC_CONF_FUZZ = 100
IPSEC_CONF_DPDDELAY = 30


@dataclass(frozen=True)
class _Value:
    level: Level
    key: str
    value: VICIValue
    sources: tuple[str, ...]


Inputs = dict[str, list[tuple[str, Any]]]  # slot -> [(OVSDB key, parsed value)]


def translate(
    options: Iterable[tuple[str, str]], *, use_default_crypto: bool = False
) -> tuple[IkeSettings | None, tuple[Invalid, ...]]:
    """A tunnel's ipsec_* options (prefix stripped, as in `Tunnel.ike_options`) -> settings.

    Returns (settings, ()) or (None, reasons); each reason names the OVSDB key as written
    (`ipsec_<key>`). `use_default_crypto` matters only for the pfs checks and for Libreswan
    ESP proposals that need the IKE groups. Never raises.
    """
    try:
        return _translate(tuple(options), use_default_crypto)
    except Exception as exc:  # a bug must cost one tunnel, not the daemon
        reason = f"internal error while translating ({type(exc).__name__}); please report"
        return None, (Invalid(f"{PREFIX}*", reason),)


def _translate(
    options: tuple[tuple[str, str], ...], use_default_crypto: bool
) -> tuple[IkeSettings | None, tuple[Invalid, ...]]:
    errors: list[Invalid] = []
    values: list[_Value] = []
    inputs: Inputs = {}
    seen: dict[str, str] = {}
    for key, raw in options:
        name = f"{PREFIX}{key}"
        if name in seen:
            if seen[name] != raw:
                errors.append(Invalid(name, "given twice with different values"))
            continue
        seen[name] = raw
        try:
            option = lookup(key)
            parsed = option.parse(clean(raw))
        except Refused as refused:
            errors.append(Invalid(name, refused.reason))
            continue
        if option.slot is None:
            values.extend(_Value(level, k, v, (name,)) for level, k, v in parsed)
        else:
            inputs.setdefault(option.slot, []).append((name, parsed))

    _proposal_values(inputs, use_default_crypto, values, errors)
    _dpd_values(inputs, values)
    _lifetime_values(inputs, values, errors)
    merged = _merge(values, errors)
    if not errors:
        _cross_check(merged, errors)
    if errors:
        return None, tuple(_dedupe(errors))
    if not merged:
        return NO_SETTINGS, ()  # one object for the thousands of tunnels without options
    conn = tuple(sorted((k, v.value) for (level, k), v in merged.items() if level == "conn"))
    child = tuple(sorted((k, v.value) for (level, k), v in merged.items() if level == "child"))
    sources = tuple(sorted((f"{level}.{k}", v.sources) for (level, k), v in merged.items()))
    return IkeSettings(conn=conn, child=child, sources=sources), ()


def _dedupe(errors: list[Invalid]) -> list[Invalid]:
    return list(dict.fromkeys(errors))


def _single(inputs: Inputs, slot: str, errors: list[Invalid]) -> tuple[Any, tuple[str, ...]]:
    """The one value a slot was given (None if absent); spellings that disagree are errors."""
    given = inputs.get(slot, [])
    if not given:
        return None, ()
    keys = tuple(name for name, _ in given)
    if len({repr(v) for _, v in given}) > 1:
        for name, _ in given:
            others = ", ".join(k for k in keys if k != name)
            errors.append(Invalid(name, f"conflicts with {others}"))
    return given[0][1], keys


_NO_IKE_GROUP = (
    "Libreswan rekeys ESP with the IKE SA's DH group when esp= names none, but the IKE "
    "proposals in force (charon's defaults) name none explicitly: add one "
    "(e.g. aes_gcm256;dh19) or set ipsec_pfs=no"
)


def _proposal_values(
    inputs: Inputs, use_default_crypto: bool, values: list[_Value], errors: list[Invalid]
) -> None:
    ike = inputs.get("ike", [])
    for name, parsed in ike:
        values.append(_Value("conn", "proposals", parsed.items, (name,)))

    pfs, pfs_keys = _single(inputs, "pfs", errors)
    # Libreswan's pfs=yes (its default) rekeys ESP with the IKE SA's group when esp= names none;
    # the nearest strongSwan equivalent offers the groups of the IKE proposals in force.
    if ike:
        ike_groups = ke_groups(ike[0][1].items)
    else:
        ike_groups = () if use_default_crypto else ke_groups(IKE_PROPOSALS)
    esp_lists: list[tuple[str, tuple[str, ...]]] = []
    for name, parsed in inputs.get("esp", []):
        items = list(parsed.items)
        if parsed.libreswan and pfs is not False:
            missing = [i for i, item in enumerate(items) if item != "default" and not has_ke(item)]
            if missing and not ike_groups:
                errors.append(Invalid(name, _NO_IKE_GROUP))
                continue
            for i in missing:
                items[i] = "-".join([items[i], *ike_groups])
        esp_lists.append((name, tuple(items)))
        values.append(_Value("child", "esp_proposals", tuple(items), (name,)))

    if pfs is None:
        return
    pfs_name = pfs_keys[0]
    if esp_lists:
        esp_name, effective = esp_lists[0]
        reason = ""
        bare = [i for i in effective if i != "default" and not has_ke(i)]
        if pfs and "default" in effective:
            reason = (
                "pfs=yes but the ESP list is not strict: charon's default ESP proposals carry "
                "no DH group (end the list with ! or drop 'default')"
            )
        elif pfs and bare:
            reason = f"pfs=yes but ESP proposal {quoted(bare[0])} has no DH group"
        elif not pfs and any(has_ke(i) for i in effective):
            reason = "pfs=no but an ESP proposal names a DH group (which means PFS)"
        if reason:
            errors.append(Invalid(pfs_name, f"conflicts with {esp_name}: {reason}"))
            errors.append(Invalid(esp_name, f"conflicts with {pfs_name}: {reason}"))
    elif use_default_crypto:
        if pfs:
            errors.append(
                Invalid(
                    pfs_name,
                    (
                        "charon's default ESP proposals (--use-default-crypto) carry no DH group; "
                        "name ESP proposals with one in ipsec_esp"
                    ),
                )
            )
    elif not pfs:
        stripped = tuple(dict.fromkeys(without_ke(i) for i in ESP_PROPOSALS))
        values.append(_Value("child", "esp_proposals", stripped, pfs_keys))


def _dpd_values(inputs: Inputs, values: list[_Value]) -> None:
    delays = inputs.get("dpd_delay", [])
    for name, delay in delays:
        values.append(_Value("conn", "dpd_delay", delay, (name,)))
    for name, action in inputs.get("dpdaction", []):
        if action == "none":  # ipsec.conf: dpdaction=none turns DPD off altogether
            values.append(_Value("conn", "dpd_delay", "0s", (name,)))
            values.append(_Value("child", "dpd_action", "clear", (name,)))
            continue
        values.append(_Value("child", "dpd_action", action, (name,)))
        if not delays:
            values.append(_Value("conn", "dpd_delay", as_seconds(IPSEC_CONF_DPDDELAY), (name,)))


def _lifetime_values(inputs: Inputs, values: list[_Value], errors: list[Invalid]) -> None:
    ikelife, ikelife_keys = _single(inputs, "ikelifetime", errors)
    life, life_keys = _single(inputs, "lifetime", errors)
    margin, margin_keys = _single(inputs, "margin", errors)
    fuzz, fuzz_keys = _single(inputs, "fuzz", errors)
    reauth, reauth_keys = _single(inputs, "reauth", errors)
    rekey, rekey_keys = _single(inputs, "rekey", errors)
    if rekey is False:
        errors.append(
            Invalid(
                rekey_keys[0],
                (
                    "rekey=no would keep SAs until the peer renews them (and ESP without ESN stops "
                    "after 2^32 packets); set longer lifetimes (ipsec_lifetime, ipsec_ikelifetime) "
                    "instead"
                ),
            )
        )
        return
    m = IPSEC_CONF_MARGIN if margin is None else margin
    f = IPSEC_CONF_FUZZ if fuzz is None else fuzz
    jitter = m * f // 100
    shared = margin_keys + fuzz_keys

    if reauth is False:
        values.append(_Value("conn", "reauth_time", "0s", reauth_keys))
    if ikelife is not None or margin is not None or fuzz is not None or reauth:
        total = IPSEC_CONF_IKELIFETIME if ikelife is None else ikelife
        keys = ikelife_keys + shared + (reauth_keys if reauth else ())
        if _fits(total, m, jitter, "ikelifetime", ikelife is not None, keys, errors):
            renew, other = ("reauth_time", "rekey_time") if reauth else ("rekey_time", None)
            values.append(_Value("conn", renew, as_seconds(total - m), keys))
            if other:
                values.append(_Value("conn", other, "0s", keys))
            values.append(_Value("conn", "over_time", as_seconds(m), keys))
            values.append(_Value("conn", "rand_time", as_seconds(jitter), keys))
    if life is not None or margin is not None or fuzz is not None:
        total = IPSEC_CONF_LIFETIME if life is None else life
        keys = life_keys + shared
        if _fits(total, m, jitter, "lifetime", life is not None, keys, errors):
            values.append(_Value("child", "life_time", as_seconds(total), keys))
            values.append(_Value("child", "rekey_time", as_seconds(total - m), keys))
            values.append(_Value("child", "rand_time", as_seconds(jitter), keys))

    _volume_values(inputs, f, fuzz_keys, values, errors)


def _fits(
    total: int,
    margin: int,
    jitter: int,
    what: str,
    given: bool,
    keys: tuple[str, ...],
    errors: list[Invalid],
) -> bool:
    if margin + jitter < total:
        return True
    default = "" if given else f" (ipsec.conf's default {what})"
    for name in keys:
        reason = (
            f"{what} {human(total)}{default} must exceed rekeymargin plus its rekeyfuzz "
            f"share ({human(margin)} + {human(jitter)}), or the SA would be renewed at once"
        )
        errors.append(Invalid(name, reason))
    return False


def _volume_values(
    inputs: Inputs,
    fuzz: int,
    fuzz_keys: tuple[str, ...],
    values: list[_Value],
    errors: list[Invalid],
) -> None:
    for unit in ("bytes", "packets"):
        life = [(n, v) for n, v in inputs.get("life_volume", []) if n.endswith(unit)]
        margin = [(n, v) for n, v in inputs.get("margin_volume", []) if n.endswith(unit)]
        life_v, life_keys = _single({"x": life}, "x", errors)
        margin_v, margin_keys = _single({"x": margin}, "x", errors)
        if life_v is None:
            for name in margin_keys:
                errors.append(Invalid(name, f"needs ipsec_life{unit} (it is a margin below it)"))
            continue
        m = margin_v or 0
        keys = life_keys + margin_keys + (fuzz_keys if margin_keys else ())
        if life_v and m >= life_v:
            for name in keys:
                errors.append(Invalid(name, f"margin{unit} must be below life{unit}"))
            continue
        values.append(_Value("child", f"life_{unit}", str(life_v), keys))
        values.append(_Value("child", f"rekey_{unit}", str(life_v - m), keys))
        values.append(_Value("child", f"rand_{unit}", str(m * fuzz // 100), keys))


def _merge(values: list[_Value], errors: list[Invalid]) -> dict[tuple[Level, str], _Value]:
    """One value per (level, key); spellings that set it differently are all named."""
    by_target: dict[tuple[Level, str], list[_Value]] = {}
    for value in values:
        by_target.setdefault((value.level, value.key), []).append(value)
    merged: dict[tuple[Level, str], _Value] = {}
    for (level, key), given in by_target.items():
        sources = tuple(sorted({s for v in given for s in v.sources}))
        distinct = {v.value for v in given}
        if len(distinct) > 1:
            shown = " vs ".join(sorted(_shown_value(v) for v in distinct))
            for name in sources:
                others = [s for s in sources if s != name]
                with_whom = f"conflicts with {', '.join(others)}" if others else "conflicts"
                errors.append(Invalid(name, f"{with_whom}: they set {level} {key} to {shown}"))
            continue
        merged[(level, key)] = _Value(level, key, given[0].value, sources)
    return merged


def _shown_value(value: VICIValue) -> str:
    return quoted(",".join(value) if isinstance(value, tuple) else value)


def _cross_check(merged: dict[tuple[Level, str], _Value], errors: list[Invalid]) -> None:
    def seconds(level: Level, key: str) -> int | None:
        value = merged.get((level, key))
        if value is None or not isinstance(value.value, str):
            return None
        return int(value.value[:-1])

    def complain(keys: Sequence[tuple[Level, str]], reason: str) -> None:
        names = dict.fromkeys(s for k in keys for s in merged[k].sources)
        for name in names:
            errors.append(Invalid(name, reason))

    rekey, life = seconds("child", "rekey_time"), seconds("child", "life_time")
    if rekey and life and rekey >= life:
        complain(
            [("child", "rekey_time"), ("child", "life_time")],
            f"CHILD_SA rekey_time {human(rekey)} must be below life_time {human(life)}",
        )
    for level in ("conn", "child"):
        rekey, spread = seconds(level, "rekey_time"), seconds(level, "rand_time")
        if rekey and spread is not None and spread >= rekey:
            complain(
                [(level, "rekey_time"), (level, "rand_time")],
                f"{'IKE_SA' if level == 'conn' else 'CHILD_SA'} rand_time "
                f"{human(spread)} must be below rekey_time {human(rekey)}",
            )
