"""Failure causes: the table of charon log messages (5.9.8, 6.0) and `alert` types (6.0.3 and
later) that tell why a negotiation failed. Pure data, used by outcomes.Tracker.

strongSwan 6.0.3 and later send `alert` events that name the cause (`ALERTS`). 5.9.8 and 6.0.1
(Debian bookworm and trixie) have no `alert` event (6.0.1 refuses the registration): their
causes exist only as log messages, which the `log` event carries with the IKE_SA's name and
unique id as structured fields. `LOG_PATTERNS` lists the messages (all at log level 0 or 1, the
only levels charon's vici logger asks for, whatever the configured log levels) that tell a cause,
checked against the 5.9.8 and 6.0.1 sources (file and function in each comment) and against
recorded lab runs (tests/unit/data/charon-5.9.8-events.json and charon-6.0.1-events.json,
replayed by tests/unit/test_status.py). The first matching pattern wins; within one IKE_SA the
highest priority stands, so the most specific of several messages is what the operator reads.

strongSwan 6.0 differs from 5.9.8 where the kernel refuses the CHILD_SA negotiated in IKE_AUTH
(this lab's kernels have no ESP): the responder has authenticated the initiator and established
the IKE_SA, but child_create.c (6.0.0 to at least 6.0.6) flushes its IKE_AUTH response down to
N(NO_PROP), dropping IDr and AUTH; the initiator, lacking IDr, fails the IKE_SA and tells the
responder so, which deletes it. 5.9.8 keeps the IKE_SA. Both ends of that are only in ENC
messages (the payloads of an IKE_AUTH response), so `log_wanted` lets those few through.

Over 400 lines because it is one table: the rows of LOG_PATTERNS and ALERTS, each with the source
it was checked against, are about 350 lines that read best side by side; the code around them is a
few functions.

May import: stdlib.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass


class Cause(enum.StrEnum):
    """The kind of a reason, for scripts (the reason text is for people)."""

    CONFIG = "config"
    CHARON = "charon"
    CAPABILITY = "capability"  # charon lacks an algorithm or plugin the tunnel needs
    AUTHENTICATION = "authentication"
    CERTIFICATE = "certificate"
    PROPOSAL = "proposal"
    SELECTORS = "selectors"
    UNREACHABLE = "unreachable"
    KERNEL = "kernel"
    NEGOTIATION = "negotiation"


class Scope(enum.Enum):
    IKE = "ike"  # the IKE_SA (and so every tunnel to the peer) failed
    CHILD = "child"  # a CHILD_SA failed; the IKE_SA may live on
    AUTO = "auto"  # CHILD if the IKE_SA was already established, else IKE
    # The IKE_SA fails although this side established it (strongSwan 6's IKE_AUTH answer
    # without an identity): a failure even after an `up`, unlike IKE.
    LOST = "lost"
    CONTEXT = "context"  # no failure: a fact later reasons quote (identities, addresses)


@dataclass(frozen=True)
class LogPattern:
    """One charon log message that tells (part of) a cause. `reason` is formatted with the
    regex groups and the attempt's fields (local_id, remote_id, remote_host, and facts such as
    `netlink`); higher `priority` wins within one IKE_SA, so the most specific message stands."""

    regex: re.Pattern[str]
    scope: Scope
    cause: Cause | None = None
    priority: int = 0
    reason: str = ""
    # CONTEXT patterns: attempt attribute or fact name -> regex group
    remember: tuple[tuple[str, str], ...] = ()


# The log groups the patterns below come from; the rest (NET and ENC print every IKE packet,
# JOB, LIB, ...) is dropped before any pattern is tried, but for the ENC lines that show an
# IKE_AUTH response's payloads (one per IKE_SA).
LOG_GROUPS = frozenset({"IKE", "CFG", "KNL"})
ENC_PREFIXES = ("generating IKE_AUTH response ", "parsed IKE_AUTH response ")


def log_wanted(group: object, message: str) -> bool:
    """Whether a log message may tell a cause: cheap, before any pattern is tried."""
    return group in LOG_GROUPS or (group == "ENC" and message.startswith(ENC_PREFIXES))


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# charon 5.9.8 messages (file and function in the comment), first match wins.
LOG_PATTERNS: tuple[LogPattern, ...] = (
    # -- context ----------------------------------------------------------------------------
    LogPattern(  # ike_init.c process_i: a peer starts a negotiation with us
        _p(r"^(?P<host>\S+) is initiating an IKE_SA$"),
        Scope.CONTEXT,
        remember=(("remote_host", "host"),),
    ),
    LogPattern(  # ike_sa.c initiate
        _p(r"^initiating IKE_SA \S+\[\d+\] to (?P<host>\S+)$"),
        Scope.CONTEXT,
        remember=(("remote_host", "host"),),
    ),
    LogPattern(  # ike_auth.c select_and_load_peer_cfg (responder)
        _p(
            r"^looking for peer configs matching \S+?\[(?P<me>[^\]]*)\]\.\.\."
            r"(?P<host>[^\[\s]+)\[(?P<peer>[^\]]*)\]$"
        ),
        Scope.CONTEXT,
        remember=(("local_id", "me"), ("remote_host", "host"), ("remote_id", "peer")),
    ),  # fmt: skip
    LogPattern(  # pubkey_authenticator.c / psk_authenticator.c build
        _p(r"^authentication of '(?P<me>[^']*)' \(myself\)"),
        Scope.CONTEXT,
        remember=(("local_id", "me"),),
    ),
    LogPattern(  # ike_sa.c set_state: from here on failures are about CHILD_SAs
        _p(
            r"^IKE_SA \S+\[\d+\] established between \S+?\[(?P<me>[^\]]*)\]\.\.\."
            r"(?P<host>[^\[\s]+)\[(?P<peer>[^\]]*)\]$"
        ),
        Scope.CONTEXT,
        remember=(
            ("established", ""),
            ("local_id", "me"),
            ("remote_host", "host"),
            ("remote_id", "peer"),
        ),
    ),  # fmt: skip
    LogPattern(  # kernel_netlink_ipsec.c: the errno behind a refused SA or policy
        _p(r"^received netlink error: (?P<error>.+)$"),
        Scope.CONTEXT,
        remember=(("netlink", "error"),),
    ),
    # -- certificates ------------------------------------------------------------------------
    LogPattern(  # ike_cert_post.c / ike_cert_pre.c: the certificate the peer sent
        _p(r'^received end entity cert "(?P<subject>[^"]*)"$'),
        Scope.CONTEXT,
        remember=(("subject", "subject"),),
    ),
    LogPattern(  # credential_manager.c verify_trust_chain
        _p(r'^no issuer certificate found for "(?P<subject>[^"]*)"$'),
        Scope.IKE,
        Cause.CERTIFICATE,
        4,
        'certificate untrusted: no trusted CA (ca_cert) issued "{subject}"',
        remember=(("subject", "subject"),),
    ),
    LogPattern(  # credential_manager.c, the line right after the one above
        _p(r'^\s*issuer is "(?P<issuer>[^"]*)"$'),
        Scope.IKE,
        Cause.CERTIFICATE,
        5,
        'certificate untrusted: "{subject}" is issued by "{issuer}", which is not a trusted CA '
        "(ca_cert)",
    ),
    # -- authentication ---------------------------------------------------------------------
    LogPattern(  # psk_authenticator.c process: the peer used another key than ours
        _p(
            r"^tried \d+ shared keys? for '(?P<me>[^']*)' - '(?P<peer>[^']*)', "
            r"but MAC mismatched$"
        ),
        Scope.IKE,
        Cause.AUTHENTICATION,
        3,
        "authentication failed: peer '{peer}' did not prove our pre-shared key "
        "(psk differs between the two sides)",
    ),  # fmt: skip
    LogPattern(  # psk_authenticator.c
        _p(r"^no shared key found for '(?P<me>[^']*)' - '(?P<peer>[^']*)'$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        3,
        "authentication failed: no pre-shared key loaded for '{me}' - '{peer}'",
    ),
    LogPattern(  # pubkey_authenticator.c build
        _p(r"^no private key found for '(?P<me>[^']*)'$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        3,
        "authentication failed: no private key for our identity '{me}' (private_key)",
    ),
    LogPattern(  # ike_auth.c select_and_load_peer_cfg (responder)
        _p(r"^no matching peer config found$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        3,
        "authentication failed: peer {remote_host} presented identity '{remote_id}' and asked "
        "for '{local_id}'; no connection here accepts that (check remote_name or remote_cert "
        "here, and the peer's certificate)",
    ),
    LogPattern(  # auth_cfg.c complies
        _p(r"^constraint check failed: (?P<what>.+)$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        3,
        "authentication failed: peer '{remote_id}' does not meet the configuration: {what}",
    ),
    LogPattern(  # credential_manager.c check_lifetime
        _p(r"^(?P<which>\w+) certificate invalid \(valid from (?P<start>.+) to (?P<end>.+)\)$"),
        Scope.IKE,
        Cause.CERTIFICATE,
        5,
        'certificate expired or not yet valid: the {which} certificate for "{subject}" is '
        "valid only from {start} to {end}",
    ),
    LogPattern(  # revocation_validator.c
        _p(r"^certificate was revoked on (?P<when>.+?), reason: (?P<why>.+)$"),
        Scope.IKE,
        Cause.CERTIFICATE,
        5,
        "certificate revoked on {when} ({why})",
    ),
    LogPattern(  # pubkey_authenticator.c process: after every candidate key failed
        _p(r"^no trusted (?P<alg>\S+) public key found for '(?P<peer>[^']*)'$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        2,
        "authentication failed: no trusted {alg} public key for peer '{peer}' (its certificate "
        "is not remote_cert, or does not chain to ca_cert)",
    ),
    LogPattern(  # ike_auth.c process_i: the peer rejected our authentication
        _p(r"^received AUTHENTICATION_FAILED notify error$"),
        Scope.IKE,
        Cause.AUTHENTICATION,
        2,
        "authentication failed: peer {remote_host} rejected us as '{local_id}' "
        "(AUTHENTICATION_FAILED; check psk, or certificate and remote_name, on both sides)",
    ),
    # -- proposals and selectors ------------------------------------------------------------
    LogPattern(  # ike_init.c process_i
        _p(r"^received NO_PROPOSAL_CHOSEN notify error$"),
        Scope.AUTO,
        Cause.PROPOSAL,
        3,
        "no proposal chosen: peer {remote_host} accepts none of our {phase} proposals",
    ),
    LogPattern(  # ike_init.c process_i
        _p(r"^received proposals unacceptable$"),
        Scope.IKE,
        Cause.PROPOSAL,
        3,
        "no proposal chosen: peer {remote_host} chose an IKE proposal we did not offer",
    ),
    LogPattern(  # ike_init.c / child_create.c select_and_install (responder)
        _p(r"^no acceptable proposal found$"),
        Scope.AUTO,
        Cause.PROPOSAL,
        3,
        "no proposal chosen: none of the {phase} proposals of {remote_host} is acceptable here",
    ),
    LogPattern(  # child_create.c
        _p(r"^traffic selectors (?P<ts>.+) unacceptable$"),
        Scope.CHILD,
        Cause.SELECTORS,
        3,
        "traffic selectors unacceptable: {ts} (tunnel type or dst_port differs between the "
        "two sides)",
    ),
    LogPattern(  # child_create.c
        _p(r"^no acceptable traffic selectors found$"),
        Scope.CHILD,
        Cause.SELECTORS,
        3,
        "traffic selectors unacceptable: the peer's do not match this tunnel's",
    ),
    # -- the kernel -------------------------------------------------------------------------
    LogPattern(  # child_create.c install
        _p(r"^unable to install (?P<what>.*?)IPsec SA \(SAD\) in kernel$"),
        Scope.CHILD,
        Cause.KERNEL,
        4,
        "kernel refused the SA: unable to install {what}IPsec SA (SAD){netlink}",
    ),
    LogPattern(  # child_create.c install
        _p(r"^unable to install IPsec policies \(SPD\) in kernel$"),
        Scope.CHILD,
        Cause.KERNEL,
        4,
        "kernel refused the SA's policies: unable to install IPsec policies (SPD){netlink}",
    ),
    LogPattern(  # child_create.c process_i: the responder refused the CHILD_SA
        _p(r"^received (?P<notify>\S+) notify, no CHILD_SA built$"),
        Scope.CHILD,
        Cause.NEGOTIATION,
        2,
        "peer {remote_host} refused the CHILD_SA ({notify}): no common ESP proposal or "
        "selectors, or its kernel could not install the SA",
    ),
    # -- strongSwan 6.0: a CHILD_SA refused in IKE_AUTH takes the IKE_SA along --------------
    LogPattern(  # message.c generate (ENC), 6.0 child_create.c key_exchange_done_and_install_r:
        # the responder's IKE_AUTH answer is the CHILD_SA's error alone, without IDr and AUTH
        _p(r"^generating IKE_AUTH response \d+ \[ N\(NO_PROP\) \]$"),
        Scope.LOST,
        Cause.KERNEL,
        5,
        "the kernel refused the CHILD_SA{netlink}; strongSwan 6 then answers IKE_AUTH with "
        "NO_PROPOSAL_CHOSEN alone (no identity), so peer {remote_host}, which we had "
        "authenticated, dropped the IKE_SA",
    ),
    LogPattern(  # message.c parse (ENC): the peer's IKE_AUTH answer is an error alone
        _p(r"^parsed IKE_AUTH response \d+ \[ N\(NO_PROP\) \]$"),
        Scope.IKE,
        Cause.NEGOTIATION,
        4,
        "peer {remote_host} answered IKE_AUTH with NO_PROPOSAL_CHOSEN alone, without its "
        "identity: it refused the CHILD_SA after authenticating us (a strongSwan 6 peer does so "
        "when its kernel cannot install the SA, e.g. no ESP/AEAD support); the IKE_SA was "
        "dropped",
    ),
    LogPattern(  # ike_auth.c process_i: the peer's IKE_AUTH answer had no IDr
        _p(r"^IDr payload missing$"),
        Scope.IKE,
        Cause.NEGOTIATION,
        2,
        "peer {remote_host} answered IKE_AUTH without its identity (IDr payload missing); the "
        "IKE_SA was dropped",
    ),
    # -- reachability -----------------------------------------------------------------------
    LogPattern(  # ike_sa.c retransmit, keyingtries=0: charon starts over
        _p(r"^peer not responding, trying again \(\d+/\d+\)$"),
        Scope.IKE,
        Cause.UNREACHABLE,
        3,
        "peer {remote_host} unreachable: no answer to IKE; charon keeps trying",
    ),
    LogPattern(  # ike_sa.c retransmit
        _p(r"^establishing IKE_SA failed, peer not responding$"),
        Scope.IKE,
        Cause.UNREACHABLE,
        3,
        "peer {remote_host} unreachable: no answer to IKE",
    ),
    LogPattern(  # task_manager_v2.c retransmit (also for an established SA: DPD, rekeying)
        _p(r"^giving up after (?P<n>\d+) retransmits$"),
        Scope.IKE,
        Cause.UNREACHABLE,
        2,
        "peer {remote_host} unreachable: no answer after {n} retransmits",
    ),
    # -- generic, when nothing more specific was said ---------------------------------------
    LogPattern(  # child_create.c: the end of every failed CHILD_SA negotiation
        _p(r"^failed to establish CHILD_SA, keeping IKE_SA$"),
        Scope.CHILD,
        Cause.NEGOTIATION,
        1,
        "CHILD_SA negotiation failed (the IKE_SA is kept)",
    ),
    LogPattern(  # ike_init.c / ike_auth.c / child_create.c
        _p(r"^received (?P<notify>\S+) notify error$"),
        Scope.AUTO,
        Cause.NEGOTIATION,
        1,
        "peer {remote_host} answered the {phase} negotiation with {notify}",
    ),
)

# strongSwan 6.0 `alert` types -> (cause, scope, reason). Priority above every log pattern:
# the alert is charon's own classification.
ALERTS: Mapping[str, tuple[Cause, Scope, str]] = {
    "peer-auth-failed": (
        Cause.AUTHENTICATION,
        Scope.IKE,
        "authentication failed: peer '{remote_id}' ({remote_host}) could not be authenticated here",
    ),
    "local-auth-failed": (
        Cause.AUTHENTICATION,
        Scope.IKE,
        "authentication failed: our identity '{local_id}' was not accepted by peer {remote_host}",
    ),
    "proposal-mismatch-ike": (
        Cause.PROPOSAL,
        Scope.IKE,
        "no proposal chosen: no IKE proposal in common with {remote_host}",
    ),
    "proposal-mismatch-child": (
        Cause.PROPOSAL,
        Scope.CHILD,
        "no proposal chosen: no ESP proposal in common with {remote_host}",
    ),
    "ts-mismatch": (
        Cause.SELECTORS,
        Scope.CHILD,
        "traffic selectors unacceptable: tunnel type or dst_port differs between the two sides",
    ),
    "cert-expired": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate expired or not yet valid (peer '{remote_id}')",
    ),
    "cert-revoked": (Cause.CERTIFICATE, Scope.IKE, "certificate revoked (peer '{remote_id}')"),
    "cert-no-issuer": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate untrusted: no trusted CA (ca_cert) issued the certificate of '{remote_id}'",
    ),
    "cert-untrusted-root": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate untrusted: the chain of '{remote_id}' ends in a root that is not trusted",
    ),
    "cert-exceeded-path-len": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate untrusted: the chain of '{remote_id}' is longer than allowed",
    ),
    "cert-policy-violation": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate rejected: the certificate of '{remote_id}' violates a policy",
    ),
    "cert-validation-failed": (
        Cause.CERTIFICATE,
        Scope.IKE,
        "certificate rejected: validating the certificate of '{remote_id}' failed",
    ),
    "peer-init-unreachable": (
        Cause.UNREACHABLE,
        Scope.IKE,
        "peer {remote_host} unreachable: no answer to IKE",
    ),
    "retransmit-send-timeout": (
        Cause.UNREACHABLE,
        Scope.IKE,
        "peer {remote_host} unreachable: no answer after all retransmits",
    ),
    "half-open-timeout": (
        Cause.UNREACHABLE,
        Scope.IKE,
        "peer {remote_host} did not complete the negotiation in time",
    ),
    "peer-addr-failed": (Cause.UNREACHABLE, Scope.IKE, "the peer's address could not be used"),
    "install-child-sa-failed": (
        Cause.KERNEL,
        Scope.CHILD,
        "kernel refused the SA: installing the IPsec SA (SAD) failed",
    ),
    "install-child-policy-failed": (
        Cause.KERNEL,
        Scope.CHILD,
        "kernel refused the SA's policies: installing the IPsec policies (SPD) failed",
    ),
    "authorization-failed": (
        Cause.AUTHENTICATION,
        Scope.IKE,
        "authorization of peer '{remote_id}' failed",
    ),
    "ike-sa-expired": (
        Cause.NEGOTIATION,
        Scope.IKE,
        "the IKE_SA expired before it could be rekeyed",
    ),
}
