"""What may reach a log line (core/log_text.py) and the filter on every vlog destination
(adapters/log_guard.py): secrets redacted in every form the ovs library and our messages take,
names and keys escaped and cut."""

from __future__ import annotations

import logging
import os
import sys

import ovs.vlog
import pytest

from ovs_ipsec.adapters.log_guard import RedactSecrets, guard_logs
from ovs_ipsec.core.log_text import NAME_LIMIT, printable, redact_secrets

SECRET = "sw0rdf1sh"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqG\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "text",
    [
        # ovs.jsonrpc at dbg: an update2 notification (insert and diff alike).
        f'received notification, method="update2", params=["x",{{"Interface":{{"u":'
        f'{{"modify":{{"options":["map",[["psk","{SECRET}"],["remote_ip","1.2.3.4"]]]}}}}}}}}]',
        f'["map",[["PSK" , "{SECRET}"]]]',
        f'["psk","a\\"{SECRET}\\"b"]',  # escaped quotes inside the value
        f'["psk","{SECRET}',  # a message cut inside the value
        f"{{'psk': '{SECRET}'}}",  # a Python repr of the options
        f"options:psk={SECRET} remote_ip=1.2.3.4",
        f'psk="{SECRET}"',
    ],
)
def test_psk_values_are_redacted(text: str) -> None:
    redacted = redact_secrets(text)
    assert SECRET not in redacted
    assert "<redacted>" in redacted


@pytest.mark.parametrize(
    "text",
    [
        KEY,
        repr(KEY),  # escaped newlines, as quoted() and JSON show it
        f"got {repr(KEY[:40])}...",  # cut before its END line
        KEY.replace("PRIVATE KEY", "EC PRIVATE KEY"),
        KEY.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"),
    ],
)
def test_private_keys_are_redacted(text: str) -> None:
    assert "MIGHAgEAMBMG" not in redact_secrets(text)


def test_what_is_not_secret_is_left_alone() -> None:
    text = '["map",[["remote_ip","1.2.3.4"],["remote_cert","/etc/peer.pem"]]] -----BEGIN CERT'
    assert redact_secrets(text) == text
    assert redact_secrets("pskless notes, 'psk_hint' stays") == "pskless notes, 'psk_hint' stays"


def test_printable_escapes_control_characters_and_cuts() -> None:
    assert printable("p0\n2026-12-07|ERR|forged") == "p0\\x0a2026-12-07|ERR|forged"
    assert printable("a\x1b[31m\x7f\u2028") == "a\\x1b[31m\\x7f\\u2028"
    assert printable("x" * 1000) == "x" * NAME_LIMIT + "..."
    assert printable("x" * 1000, limit=None) == "x" * 1000
    assert printable("geneve0") == "geneve0"


def test_filter_redacts_message_and_traceback() -> None:
    try:
        raise ValueError(f'["psk","{SECRET}"]')
    except ValueError:
        record = logging.LogRecord(
            "file", logging.ERROR, __file__, 1, "failed: %s", (f"psk={SECRET}",), sys.exc_info()
        )
    assert RedactSecrets().filter(record)
    formatted = logging.Formatter().format(record)
    assert SECRET not in formatted
    assert "ValueError" in formatted and "failed: psk=<redacted>" in formatted


def test_every_vlog_destination_is_guarded() -> None:
    before = os.umask(0o022)
    try:
        guard_logs()
        guard_logs()  # once only
        assert os.umask(0o022) == 0o027
    finally:
        os.umask(before)
    for destination in ovs.vlog.DESTINATIONS:
        filters = logging.getLogger(destination).filters
        assert sum(isinstance(f, RedactSecrets) for f in filters) == 1
