"""What may reach a log line: names and keys from OVSDB shown safely (`printable`), and every
log line, whoever wrote it, with secrets taken out (`redact_secrets`).

`printable` is the one helper for anything an OVSDB writer chose (interface names, option
keys) shown bare, `quoted` for values shown in quotes: control characters are escaped, so a
newline cannot forge a log line, and a huge value is cut so it cannot flood the log.

`redact_secrets` is the last line of defence, applied to every message on its way to a log
(adapters/log_guard.py): the ovs library logs whole OVSDB messages at debug level, and a PSK in
them is `["psk","..."]` in JSON.

May import: stdlib.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

# Interface names and option keys longer than this are cut in logs and messages.
NAME_LIMIT = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int | None = NAME_LIMIT) -> str:
    """`text` fit for one log line: control characters as \\xNN (\\uNNNN), at most `limit`
    characters of it (then "..."); None keeps its length."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(_escape, text)


def quoted(value: str, limit: int = NAME_LIMIT) -> str:
    """A value quoted for an error message (repr: escaped), cut so a huge one cannot flood
    the log."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# A PSK next to its key, as JSON (`["psk","v"]`, `"psk": "v"`), a Python repr (`'psk': 'v'`) or
# `psk="v"`, the value quoted with either quote and possibly escaped; a value cut off before its
# closing quote (a truncated message) is redacted to the end of the text.
_PSK_VALUE = re.compile(
    r"""(?P<key>(?:"psk"|'psk'|\bpsk)\s*[,:=]\s*)"""
    r"""(?P<vq>["'])(?:\\.|(?!(?P=vq)).)*(?:(?P=vq)|\Z)""",
    re.IGNORECASE | re.DOTALL,
)
# `psk=value` as ovs-vsctl spells it (options:psk=swordfish), up to whitespace, a comma, a
# bracket or a quote.
_PSK_ASSIGNED = re.compile(r"""(?P<key>\bpsk=)(?!["'])[^\s,;)\]}"']+""", re.IGNORECASE)
# PEM private keys of any kind (PKCS#8, RSA, EC, ENCRYPTED), with real or escaped newlines; a
# block without its END line (a value cut short) is redacted up to the quote that closes the
# value, or to the end of the text. PEM bodies hold no quotes.
_PRIVATE_KEY = re.compile(
    r"(?P<begin>-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)[^\"']*?"
    r"(?:(?P<end>-----END [A-Z0-9 ]*PRIVATE KEY-----)|(?=[\"'])|\Z)",
)


def redact_secrets(text: str) -> str:
    """`text` with every PSK value and PEM private key replaced by `<redacted>`."""
    lowered = text.lower()
    if "psk" in lowered:
        text = _PSK_VALUE.sub(lambda m: f"{m['key']}{m['vq']}{REDACTED}{m['vq']}", text)
        text = _PSK_ASSIGNED.sub(lambda m: f"{m['key']}{REDACTED}", text)
    if "private key" in lowered:
        text = _PRIVATE_KEY.sub(
            lambda m: f"{m['begin']}{REDACTED}{m['end'] or ''}",
            text,
        )
    return text


__all__ = ["NAME_LIMIT", "REDACTED", "printable", "quoted", "redact_secrets"]
