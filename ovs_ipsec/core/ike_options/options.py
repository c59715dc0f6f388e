"""The option table: every accepted `options:ipsec_*` spelling (`OPTIONS`) with how its value
becomes VICI keys, and every refused one with the reason (`REJECTED`).

Upstream ovs-monitor-ipsec pasted every `options:ipsec_<key>=<value>` verbatim into ipsec.conf.
Over VICI there is no file to paste into, so the table names the spellings seen in the wild
(strongSwan ipsec.conf names, the Libreswan names OVN deployments send, the native swanctl
names) and refuses, with a reason, anything the daemon cannot honour or that would break its
guarantees (trap policies from load time, exact transport-mode selectors, identities from
OVSDB, the daemon's own drop policies). `translate` combines the rows for one tunnel; `docs`
renders the table for docs/ipsec-options.md.

Over 400 lines because it is one table: about 500 lines are the rows of `OPTIONS` and the
refused groups, data that reads best in one place; the code around them is short.

May import: ike_options.proposals, ike_options.settings, ike_options.values, stdlib.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ovs_ipsec.core.ike_options.proposals import parse_proposals
from ovs_ipsec.core.ike_options.settings import Level, VICIValue
from ovs_ipsec.core.ike_options.values import (
    DAY,
    Refused,
    as_seconds,
    boolean,
    choice,
    duration,
    integer,
    percent,
    volume,
    yes_no,
)

PREFIX = "ipsec_"

MAX_VALUE_LENGTH = 1024
MAX_LIFETIME = 30 * DAY  # rekey/reauth/life/over/rand times
MAX_DPD = DAY
MIN_LIFETIME = 10  # a non-zero rekey/reauth/life time below this would rekey continuously
MAX_REPLAY_WINDOW = 4096  # Linux: XFRMA_REPLAY_ESN_MAX bitmap = 128 x 32 packets
MAX_KEYINGTRIES = 1000

Out = tuple[tuple[Level, str, VICIValue], ...]

SS = "strongSwan ipsec.conf"
LS = "Libreswan"
SWANCTL = "swanctl"


@dataclass(frozen=True)
class Option:
    """One accepted OVSDB spelling family and how its value becomes VICI keys.

    Rows without `slot` translate on their own (`parse` returns (level, key, value) triples);
    rows with a `slot` feed a handler that needs several options together (`parse` returns the
    parsed value).
    """

    spellings: tuple[str, ...]
    origin: str
    target: str
    values: str
    notes: str
    parse: Callable[[str], Any]
    slot: str | None = None


def _simple(level: Level, key: str, convert: Callable[[str], VICIValue]) -> Callable[[str], Out]:
    def parse(value: str) -> Out:
        return ((level, key, convert(value)),)

    return parse


def _noop(accepted: dict[str, str | None], what: str) -> Callable[[str], Out]:
    def parse(value: str) -> Out:
        choice(value, accepted, what)
        return ()

    return parse


def _time(maximum: int, minimum: int = 1) -> Callable[[str], str]:
    return lambda value: as_seconds(duration(value, maximum=maximum, minimum=minimum))


_LIFE = _time(MAX_LIFETIME, MIN_LIFETIME)
_SPREAD = _time(MAX_LIFETIME, 0)
_DPD = _time(MAX_DPD)


def _keyingtries(value: str) -> str:
    if value.lower() == "%forever":
        return "0"
    return str(integer(value, 0, MAX_KEYINGTRIES))


_ACTION_SS = {"none": "none", "clear": "clear", "hold": "trap", "restart": "restart"}
_DPD_ACTION = {"clear": "clear", "none": "clear", "trap": "trap", "route": "trap",
               "restart": "restart", "start": "restart"}  # fmt: skip
_CLOSE_SS = {"none": "none", "clear": "none", "hold": "trap", "restart": "start"}
_CLOSE = {"none": "none", "clear": "none", "trap": "trap", "route": "trap", "start": "start",
          "restart": "start"}  # fmt: skip
_IKEV1 = "IKEv1 is not supported (deprecated by RFC 9395); this daemon always speaks IKEv2"

OPTIONS: tuple[Option, ...] = (
    # --- NAT-T / UDP encapsulation --------------------------------------------------------
    Option(
        ("forceencaps",),
        SS,
        "conn `encap`",
        "`yes`/`no` → `yes`/`no`",
        "OVN copies `ipsec_forceencaps=yes` (its strongSwan spelling) onto every tunnel: "
        "charon fakes NAT detection so ESP travels in UDP/4500 where clouds drop ESP.",
        _simple("conn", "encap", yes_no),
    ),
    Option(
        ("encapsulation",),
        LS,
        "conn `encap`",
        "`yes` → `yes`; `no`, `auto` → `no`",
        "OVN's Libreswan spelling (it only ever sends `yes`). charon always encapsulates "
        "when it detects a NAT, so Libreswan's `no` (never encapsulate) acts like `auto` "
        "behind a NAT.",
        _simple(
            "conn",
            "encap",
            lambda v: choice(
                v, {"yes": "yes", "true": "yes", "no": "no", "false": "no", "auto": "no"}, ""
            ),
        ),
    ),
    Option(("encap",), SWANCTL, "conn `encap`", "`yes`/`no`", "", _simple("conn", "encap", yes_no)),
    # --- Proposals --------------------------------------------------------------------------
    Option(
        ("ike",),
        f"{SS} / {LS}",
        "conn `proposals`",
        "comma-separated list; strongSwan syntax kept, a trailing `!` makes it strict, "
        "otherwise `default` is appended (as ipsec.conf does); Libreswan syntax translated",
        "See *Proposals* below. Every proposal is checked as charon would; null/GMAC-only "
        "encryption and `modpnull` are refused.",
        lambda v: parse_proposals(v, "IKE", legacy=True),
        slot="ike",
    ),
    Option(
        ("proposals",),
        SWANCTL,
        "conn `proposals`",
        "comma-separated strongSwan proposals (and `default`), always strict",
        "",
        lambda v: parse_proposals(v, "IKE", legacy=False),
        slot="ike",
    ),
    Option(
        ("esp", "phase2alg"),
        f"{SS} / {LS}",
        "child `esp_proposals`",
        "as `ike`; a Libreswan proposal without a DH group gets the IKE proposals' groups "
        "(Libreswan's pfs=yes rekeys with the IKE group) unless `pfs=no`",
        "The daemon's default is `aes256gcm16-modp2048` (upstream's).",
        lambda v: parse_proposals(v, "ESP", legacy=True),
        slot="esp",
    ),
    Option(
        ("esp_proposals",),
        SWANCTL,
        "child `esp_proposals`",
        "comma-separated strongSwan proposals (and `default`), always strict",
        "",
        lambda v: parse_proposals(v, "ESP", legacy=False),
        slot="esp",
    ),
    Option(
        ("pfs",),
        LS,
        "child `esp_proposals` (checked or derived)",
        "`yes`: every ESP proposal must carry a DH group; `no`: none may (the daemon's "
        "default ESP proposal loses its group)",
        "strongSwan has no PFS switch: a DH group in an ESP proposal is PFS for rekeys.",
        boolean,
        slot="pfs",
    ),
    Option(
        ("phase2",),
        LS,
        "—",
        "`esp` accepted (no-op)",
        "`ah` is refused: AH authenticates but does not encrypt.",
        _noop({"esp": "esp", "ah": None}, "AH authenticates but does not encrypt"),
    ),
    # --- IKE version, mode, start ------------------------------------------------------------
    Option(
        ("keyexchange",),
        f"{SS} / {LS}",
        "conn `version`",
        "`ikev2` accepted (no-op); `ike`, `ikev1` refused",
        "The daemon always uses IKEv2.",
        _noop({"ikev2": "2", "ike": None, "ikev1": None}, "{value} would let IKEv1 in; " + _IKEV1),
    ),
    Option(
        ("ikev2",),
        LS,
        "conn `version`",
        "`yes`, `insist`, `propose` accepted (no-op); `no`, `never`, `permit` refused",
        "Libreswan maps yes/propose/insist to IKEv2, no/permit to IKEv1.",
        _noop(
            {"yes": "2", "insist": "2", "propose": "2", "no": None, "never": None, "permit": None},
            _IKEV1,
        ),
    ),
    Option(
        ("version",),
        SWANCTL,
        "conn `version`",
        "`2` accepted (no-op); `0`, `1` refused",
        "",
        _noop({"2": "2", "0": None, "1": None}, _IKEV1),
    ),
    Option(
        ("type", "mode"),
        f"{SS} / {SWANCTL}",
        "child `mode`",
        "`transport` accepted (no-op); anything else refused",
        "OVS tunnels are host-to-host transport mode.",
        _noop(
            {
                "transport": "transport",
                "tunnel": None,
                "beet": None,
                "pass": None,
                "passthrough": None,
                "drop": None,
                "reject": None,
                "transport_proxy": None,
            },
            "OVS tunnels are host-to-host transport mode; {value} would change what is "
            "encrypted (drop/pass policies are the daemon's own)",
        ),
    ),
    Option(
        ("auto", "start_action"),
        f"{SS} / {SWANCTL}",
        "child `start_action`",
        "`route` / `trap` accepted (no-op); anything else refused",
        "Trap policies from load time are what keep plaintext from leaving before the SA is up.",
        _noop(
            {
                "route": "trap",
                "trap": "trap",
                "add": None,
                "start": None,
                "ignore": None,
                "none": None,
                "trap|start": None,
                "start|trap": None,
            },
            "the daemon installs trap policies when a tunnel is loaded so that no packet "
            "leaves in plaintext before the SA is up; {value} would change that",
        ),
    ),
    # --- Dead peer detection ----------------------------------------------------------------
    Option(
        ("dpddelay", "dpd-delay"),
        f"{SS} / {LS} / OVN",
        "conn `dpd_delay`",
        "duration → seconds (`30s`, `1m`, `30`); `0` turns DPD off",
        "",
        _DPD,
        slot="dpd_delay",
    ),
    Option(
        ("dpd_delay",),
        SWANCTL,
        "conn `dpd_delay`",
        "duration → seconds",
        "",
        _DPD,
        slot="dpd_delay",
    ),
    Option(
        ("dpdtimeout", "dpd-timeout", "ikev1-dpdtimeout", "dpd_timeout"),
        f"{SS} / {LS} / OVN / {SWANCTL}",
        "conn `dpd_timeout`",
        "duration → seconds",
        "Passed to charon, which (like Libreswan) uses it for IKEv1 only: under IKEv2 a "
        "peer is declared dead when the DPD exchange's retransmissions run out "
        "(charon's retransmit_* settings, daemon-wide). Upstream behaved the same; OVN's "
        "documented example sets `ipsec_dpd-timeout=120s` on every tunnel.",
        _simple("conn", "dpd_timeout", _DPD),
    ),
    Option(
        ("dpdaction",),
        f"{SS} / {LS}",
        "child `dpd_action` (and conn `dpd_delay`)",
        "`none` → conn `dpd_delay=0s` + `clear`; `clear` → `clear`; `hold` → `trap`; "
        "`restart` → `restart`",
        "As in ipsec.conf, an action other than `none` with no DPD delay option set "
        "enables DPD every 30s.",
        lambda v: choice(v, _ACTION_SS, ""),
        slot="dpdaction",
    ),
    Option(
        ("dpd_action",),
        SWANCTL,
        "child `dpd_action`",
        "`clear`/`none` → `clear`; `trap`/`route` → `trap`; `restart`/`start` → `restart`",
        "",
        _simple("child", "dpd_action", lambda v: choice(v, _DPD_ACTION, "")),
    ),
    Option(
        ("closeaction",),
        SS,
        "child `close_action`",
        "`none`/`clear` → `none`; `hold` → `trap`; `restart` → `start`",
        "The trap policies stay installed whatever the close action.",
        _simple("child", "close_action", lambda v: choice(v, _CLOSE_SS, "")),
    ),
    Option(
        ("close_action",),
        SWANCTL,
        "child `close_action`",
        "`none`/`clear` → `none`; `trap`/`route` → `trap`; `start`/`restart` → `start`",
        "",
        _simple("child", "close_action", lambda v: choice(v, _CLOSE, "")),
    ),
    # --- ipsec.conf lifetimes (derived together, as strongSwan's stroke did) ----------------
    Option(
        ("ikelifetime",),
        f"{SS} / {LS}",
        "conn `rekey_time` (`reauth_time` with `reauth=yes`), `over_time`, `rand_time`",
        "rekey_time = ikelifetime − margin, over_time = margin, rand_time = margin × fuzz",
        "See *Lifetimes* below. Rekeys without reauthentication unless `reauth=yes`.",
        lambda v: duration(v, maximum=MAX_LIFETIME, minimum=MIN_LIFETIME),
        slot="ikelifetime",
    ),
    Option(
        ("lifetime", "keylife", "salifetime", "ipsec-lifetime"),
        f"{SS} / {LS} / OVN",
        "child `life_time`, `rekey_time`, `rand_time`",
        "life_time = lifetime, rekey_time = lifetime − margin, rand_time = margin × fuzz",
        "",
        lambda v: duration(v, maximum=MAX_LIFETIME, minimum=MIN_LIFETIME),
        slot="lifetime",
    ),
    Option(
        ("rekeymargin", "margintime"),
        f"{SS} / {LS}",
        "(lifetimes, IKE and CHILD)",
        "duration; default 9m",
        "",
        lambda v: duration(v, maximum=MAX_LIFETIME, minimum=0),
        slot="margin",
    ),
    Option(
        ("rekeyfuzz",),
        f"{SS} / {LS}",
        "(lifetimes, IKE and CHILD)",
        "percentage (`100%`); default 100%",
        "",
        percent,
        slot="fuzz",
    ),
    Option(
        ("reauth",),
        f"{SS} / {LS}",
        "conn `reauth_time`",
        "`yes`: ikelifetime drives `reauth_time` (and `rekey_time=0s`); `no` → `reauth_time=0s`",
        "Unlike ipsec.conf (default yes) the daemon does not reauthenticate unless asked: "
        "strongSwan 5.9 reauthenticates break-before-make.",
        boolean,
        slot="reauth",
    ),
    Option(
        ("rekey",),
        f"{SS} / {LS}",
        "—",
        "`yes` accepted (no-op); `no` refused",
        "With rekey=no charon would keep SAs until the peer renews them; set longer "
        "lifetimes instead.",
        boolean,
        slot="rekey",
    ),
    Option(
        ("lifebytes", "lifepackets"),
        SS,
        "child `life_bytes`/`rekey_bytes`/`rand_bytes` (`…_packets`)",
        "as lifetime: life, life − margin, margin × fuzz",
        "",
        volume,
        slot="life_volume",
    ),
    Option(
        ("marginbytes", "marginpackets"),
        SS,
        "(volume lifetimes)",
        "number; needs the matching lifebytes/lifepackets",
        "",
        volume,
        slot="margin_volume",
    ),
    # --- swanctl lifetimes ------------------------------------------------------------------
    Option(
        ("rekey_time",),
        SWANCTL,
        "conn `rekey_time`",
        "duration → seconds",
        "The IKE_SA's (swanctl's connection-level key); for CHILD_SAs use `child_rekey_time`.",
        _simple("conn", "rekey_time", _LIFE),
    ),
    Option(
        ("reauth_time",),
        SWANCTL,
        "conn `reauth_time`",
        "duration → seconds",
        "",
        _simple("conn", "reauth_time", _LIFE),
    ),
    Option(
        ("over_time",),
        SWANCTL,
        "conn `over_time`",
        "duration → seconds",
        "",
        _simple("conn", "over_time", _SPREAD),
    ),
    Option(
        ("rand_time",),
        SWANCTL,
        "conn `rand_time`",
        "duration → seconds",
        "IKE-level; for CHILD_SAs use `child_rand_time`.",
        _simple("conn", "rand_time", _SPREAD),
    ),
    Option(
        ("child_rekey_time",),
        "ovs-ipsec",
        "child `rekey_time`",
        "duration → seconds",
        "swanctl uses `rekey_time`/`rand_time` at both levels; the `child_` names select "
        "the CHILD_SA's.",
        _simple("child", "rekey_time", _LIFE),
    ),
    Option(
        ("life_time",),
        SWANCTL,
        "child `life_time`",
        "duration → seconds",
        "",
        _simple("child", "life_time", _LIFE),
    ),
    Option(
        ("child_rand_time",),
        "ovs-ipsec",
        "child `rand_time`",
        "duration → seconds",
        "",
        _simple("child", "rand_time", _SPREAD),
    ),
    *(
        Option(
            (key,),
            SWANCTL,
            f"child `{key}`",
            "number (k/m/g = 1024-based) → number",
            "",
            _simple("child", key, lambda v: str(volume(v))),
        )
        for key in (
            "rekey_bytes",
            "life_bytes",
            "rand_bytes",
            "rekey_packets",
            "life_packets",
            "rand_packets",
        )
    ),
    # --- Everything else --------------------------------------------------------------------
    Option(
        ("replay_window", "replay-window"),
        f"{SS} / {LS} / OVN / {SWANCTL}",
        "child `replay_window`",
        f"0–{MAX_REPLAY_WINDOW} packets",
        "0 turns replay protection off. The Linux replay bitmap holds at most "
        f"{MAX_REPLAY_WINDOW} packets.",
        _simple("child", "replay_window", lambda v: str(integer(v, 0, MAX_REPLAY_WINDOW))),
    ),
    Option(
        ("keyingtries",),
        f"{SS} / {SWANCTL}",
        "conn `keyingtries`",
        f"`%forever` → `0`; 0–{MAX_KEYINGTRIES}",
        "The daemon's default is 0 (for ever); traffic re-triggers the trap regardless.",
        _simple("conn", "keyingtries", _keyingtries),
    ),
    Option(
        ("mobike",),
        f"{SS} / {LS} / {SWANCTL}",
        "conn `mobike`",
        "`yes`/`no`",
        "The daemon's default is `no` (hosts do not move).",
        _simple("conn", "mobike", yes_no),
    ),
    Option(
        ("fragmentation",),
        f"{SS} / {LS} / {SWANCTL}",
        "conn `fragmentation`",
        "`yes`, `no`, `accept`, `force`",
        "",
        _simple(
            "conn",
            "fragmentation",
            lambda v: choice(
                v, {"yes": "yes", "no": "no", "accept": "accept", "force": "force"}, ""
            ),
        ),
    ),
    Option(
        ("hw_offload",),
        SWANCTL,
        "child `hw_offload`",
        "`yes`, `no`, `auto`",
        "`yes` fails the SA if the NIC cannot offload.",
        _simple(
            "child",
            "hw_offload",
            lambda v: choice(v, {"yes": "yes", "no": "no", "auto": "auto"}, ""),
        ),
    ),
    Option(
        ("nic-offload",),
        LS,
        "child `hw_offload`",
        "`yes`, `crypto` → `yes`; `no` → `no`; `auto` → `auto`; `packet` refused",
        "strongSwan 5.9 offers crypto offload only.",
        _simple(
            "child",
            "hw_offload",
            lambda v: choice(
                v,
                {"yes": "yes", "crypto": "yes", "no": "no", "auto": "auto", "packet": None},
                "packet offload needs strongSwan 6; 5.9 offers crypto offload only (yes)",
            ),
        ),
    ),
    Option(
        ("sha256_96", "sha2-truncbug"),
        f"{SS} / {LS} / {SWANCTL}",
        "child `sha256_96`",
        "`yes`/`no`",
        "Only for peers with the old 96-bit HMAC-SHA256 truncation.",
        _simple("child", "sha256_96", yes_no),
    ),
)


# Keys refused outright, grouped by reason. Any key starting with left/right is refused too.
LEFT_RIGHT_REASON = (
    "per-side ipsec.conf settings (left*/right*) come from the tunnel itself (local_ip, "
    "remote_ip, psk, remote_cert, remote_name and the global PKI) and cannot be overridden"
)
REJECTED_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("traffic selectors are derived from the tunnel type and dst_port; other selectors would "
     "leave tunnel traffic in plaintext or capture unrelated traffic",
     ("local_ts", "remote_ts", "subnet", "subnets", "protoport", "narrowing", "hostaccess")),
    ("the IKE endpoints are options:local_ip and options:remote_ip",
     ("local_addrs", "remote_addrs", "host", "hostaddrfamily", "clientaddrfamily")),
    ("IKE runs on ports 500/4500 on both sides so peers interoperate",
     ("local_port", "remote_port", "ikeport", "enable-tcp", "tcp-remoteport")),
    ("authentication comes from options:psk / remote_cert / remote_name and the global PKI "
     "(Open_vSwitch other_config)",
     ("auth", "authby", "id", "certs", "cert", "cacerts", "ca", "pubkeys", "pubkey",
      "rsasigkey", "ecdsakey", "eddsakey", "ckaid", "eap_id", "aaa_id", "xauth_id", "xauth",
      "xauthby", "ca_id", "cert_policy", "revocation", "groups", "psk", "secret", "ppk",
      "ppk_id", "ppk_required", "ppk-ids", "send_cert", "send_certreq", "sendcert", "sendca",
      "local", "remote")),
    ("an updown script would run an arbitrary command as root on every SA event",
     ("updown", "updown-config", "firewall")),
    ("XFRM interface IDs (and VTI/ipsec interfaces) would make the policies stop matching the "
     "tunnel's ordinary routed traffic, which would then leave in plaintext",
     ("if_id_in", "if_id_out", "ipsec-interface", "vti-interface", "vti-routing", "vti-shared",
      "interface", "interface-ip")),
    ("marks belong to the daemon's drop policies (Open_vSwitch other_config:ipsec_skb_mark); "
     "a mark on the tunnel's policies or SAs would stop them matching its traffic",
     ("mark", "mark_in", "mark_out", "mark_in_sa", "set_mark_in", "set_mark_out", "mark-in",
      "mark-out")),
    ("policy priorities are fixed so the daemon's drop policies stay below the IPsec and trap "
     "policies", ("priority",)),
    ("charon must assign reqids: a shared reqid would mix the SAs of different tunnels",
     ("reqid",)),
    ("without IPsec policies nothing would be encrypted",
     ("policies", "installpolicy", "policies_fwd_out")),
    ("AH authenticates but does not encrypt", ("ah", "ah_proposals")),
    ("IKEv1 is not supported (deprecated by RFC 9395); this daemon always speaks IKEv2",
     ("aggressive", "aggrmode")),
    ("fixed by the daemon so that a rebooted peer's INITIAL_CONTACT replaces its stale SAs",
     ("unique", "uniqueids")),
    ("a charon-wide setting (the daemon's strongswan.d snippet), not a per-connection one",
     ("retransmit-timeout", "retransmit-interval", "retransmit_tries", "retransmit_timeout",
      "retransmit_base", "make_before_break", "xfrm_acq_expires", "charondebug")),
    ("strongSwan negotiates ESN through the ESP proposals: add esn or noesn to "
     "ipsec_esp_proposals (e.g. aes256gcm16-modp2048-esn)", ("esn",)),
    ("Libreswan derives its soft limit itself; set ipsec_life_bytes/ipsec_rekey_bytes "
     "(or _packets) explicitly", ("ipsec-max-bytes", "ipsec-max-packets")),
    ("a VICI section is built by the daemon, not an option", ("children",)),
    ("a global setting: set it in Open_vSwitch other_config, not on the interface",
     ("skb_mark", "fail_open")),
)  # fmt: skip
REJECTED: dict[str, str] = {name: reason for reason, names in REJECTED_GROUPS for name in names}

_BY_SPELLING: dict[str, Option] = {s: option for option in OPTIONS for s in option.spellings}


def lookup(key: str) -> Option:
    name = key.lower()
    if name in _BY_SPELLING:
        return _BY_SPELLING[name]
    if name in REJECTED:
        raise Refused(REJECTED[name])
    if name.startswith(("left", "right")):
        raise Refused(LEFT_RIGHT_REASON)
    if not name:
        raise Refused("empty option name after the ipsec_ prefix")
    guess = difflib.get_close_matches(name, _BY_SPELLING, n=1, cutoff=0.8)
    hint = f" (did you mean {PREFIX}{guess[0]}?)" if guess else ""
    raise Refused(f"not an option this daemon knows{hint}; see docs/ipsec-options.md")


def clean(value: object) -> str:
    if not isinstance(value, str):
        raise Refused("value is not a string")
    if len(value) > MAX_VALUE_LENGTH:
        raise Refused(f"value is longer than {MAX_VALUE_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise Refused("value contains control characters (newline, tab, ...)")
    if not value.isascii():
        raise Refused("value must be plain ASCII")
    value = value.strip()
    if not value:
        raise Refused("empty value")
    return value
