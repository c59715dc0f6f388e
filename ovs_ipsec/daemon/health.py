"""What the daemon's parts share: `Health` (what the control socket reports about the daemon's
own connections to charon and the kernel), the one log they write to, and how many objects a
pass names one line each before it summarises them.

May import: adapters.log_lines, ovs, stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs_ipsec.adapters.log_lines import Vlog

vlog = Vlog("ovs-monitor-ipsec")

# A pass that changes more objects than this (a start-up, a big transaction, charon's return)
# logs one summary line and the objects of each kind in one debug line: a log call per object
# would cost more than charon's or the kernel's work on it.
BULK_ACTIONS = 10


@dataclass
class Health:
    """What the control socket reports about the daemon's own connections."""

    # The IKE daemon as logs, reasons and tunnels/show name it: "charon" or "pluto" (cli.py).
    ike_daemon: str = "charon"
    charon_reachable: bool = False
    charon_error: str = ""
    charon_version: str = ""
    charon_since: str = ""
    passes: int = 0
    last_pass_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    xfrm_error: str = ""
