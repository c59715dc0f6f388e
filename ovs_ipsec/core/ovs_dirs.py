"""Which run, log and database directories the daemon uses when nothing says otherwise.

The `ovs` Python library bakes in the directories of the Open vSwitch build it came from. Debian's
python3-openvswitch says `/var/run/openvswitch`; the PyPI package, which `pip install` brings,
says `/usr/local/var/run/openvswitch`, where no packaged Open vSwitch keeps its sockets. A
drop-in must find the same places as the system's `ovs-ctl`, `ovs-appctl` and logrotate, so:

- `OVS_RUNDIR`, `OVS_LOGDIR`, `OVS_DBDIR`/`OVS_SYSCONFDIR` still win, as in every OVS program;
- a library built for the system (not under /usr/local) is trusted as it is;
- a /usr/local library is trusted only if an Open vSwitch built with that prefix is on this
  machine (its run directory exists); otherwise the distribution's directories apply.

May import: stdlib.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

SOURCE_PREFIX = "/usr/local/"


@dataclass(frozen=True)
class OvsDirs:
    rundir: str
    logdir: str
    dbdir: str


SYSTEM = OvsDirs("/var/run/openvswitch", "/var/log/openvswitch", "/etc/openvswitch")


def effective_dirs(
    library: OvsDirs, environ: Mapping[str, str], isdir: Callable[[str], bool]
) -> OvsDirs:
    """The directories to use, given the library's defaults (already including any OVS_*
    variables, as the library reads them at import), the environment and the file system."""
    from_source = library.rundir.startswith(SOURCE_PREFIX) and isdir(library.rundir)
    fallback = library if from_source else SYSTEM

    def pick(value: str, *variables: str, default: str) -> str:
        if any(environ.get(v) for v in variables) or not value.startswith(SOURCE_PREFIX):
            return value
        return default

    return OvsDirs(
        rundir=pick(library.rundir, "OVS_RUNDIR", default=fallback.rundir),
        logdir=pick(library.logdir, "OVS_LOGDIR", default=fallback.logdir),
        dbdir=pick(library.dbdir, "OVS_DBDIR", "OVS_SYSCONFDIR", default=fallback.dbdir),
    )
