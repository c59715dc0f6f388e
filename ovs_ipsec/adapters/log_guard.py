"""No secret in any log, whatever `vlog/set` asks; a log file only root (and its group) reads.

The ovs library (`ovs.vlog`) writes every message of every module (ours, and its own jsonrpc,
idl, reconnect...) through three Python loggers, one per destination: "console", "file" and
"syslog". A filter on each of those loggers sees every line on its way out and redacts secrets
(core/log_text.redact_secrets). This is the sink, not the source: per-module levels are state
any `vlog/set` rewrites (`any:any:dbg` lifts a cap set at start-up, and no hook runs after it),
and `vlog/reopen` or a syslog facility change replace the handlers, but never these loggers
nor their filters. The cost is one substring check per line that reaches a log.

The log file is created under a umask that leaves others nothing (vlog/reopen and a rotation
without `create` make a new file with it), and an existing file readable by others is
tightened at start-up.

May import: log_text, ovs.vlog, stdlib.
"""

from __future__ import annotations

import logging
import os
import stat

import ovs.vlog

from ovs_ipsec.core.log_text import redact_secrets

# Group read stays (Debian's logs are root:adm 0640); others get nothing, nobody executes.
_NOT_FOR_OTHERS = 0o027


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (and traceback) with secrets redacted; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info or record.exc_text:
            # A traceback is formatted after the filters ran: format it here, redacted.
            trace = record.exc_text or logging.Formatter().formatException(record.exc_info)
            message = f"{message}\n{trace}"
            record.exc_info = None
            record.exc_text = None
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
            record.stack_info = None
        record.msg = redact_secrets(message)
        record.args = None
        return True


def guard_logs() -> None:
    """Install the filter on every vlog destination's logger (once) and keep files the
    daemon creates from now on (its log among them) unreadable by others."""
    for destination in ovs.vlog.DESTINATIONS:
        logger = logging.getLogger(destination)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
    os.umask(os.umask(0) | _NOT_FOR_OTHERS)


def tighten_log_file(path: str | None) -> None:
    """An existing log file (left by an older version, or made by someone else's umask) loses
    what others could read; a missing one is created later under guard_logs()' umask."""
    if path is None:
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & _NOT_FOR_OTHERS:
            os.chmod(path, mode & ~_NOT_FOR_OTHERS)
    except OSError:
        pass  # no file yet, or one we cannot change: vlog reports what it cannot open


__all__ = ["RedactSecrets", "guard_logs", "tighten_log_file"]
