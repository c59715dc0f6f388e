"""Run, log and database directories without OVS_* variables: the system's Open vSwitch places,
whichever `ovs` library is installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ovs_ipsec.core.ovs_dirs import SYSTEM, OvsDirs, effective_dirs

PYPI = OvsDirs(
    "/usr/local/var/run/openvswitch", "/usr/local/var/log/openvswitch", "/usr/local/etc/openvswitch"
)
DEBIAN = OvsDirs("/var/run/openvswitch", "/var/log/openvswitch", "/etc/openvswitch")


def nothing_exists(path: str) -> bool:
    return False


def test_pypi_library_on_a_distribution_machine_uses_the_system_directories() -> None:
    assert effective_dirs(PYPI, {}, nothing_exists) == SYSTEM


def test_distribution_library_is_trusted_as_it_is() -> None:
    rhel_like = OvsDirs("/run/openvswitch", "/var/log/openvswitch", "/etc/openvswitch")
    assert effective_dirs(DEBIAN, {}, nothing_exists) == DEBIAN
    assert effective_dirs(rhel_like, {}, nothing_exists) == rhel_like


def test_pypi_library_beside_an_open_vswitch_built_from_source_keeps_usr_local() -> None:
    assert effective_dirs(PYPI, {}, lambda path: path == PYPI.rundir) == PYPI


@pytest.mark.parametrize("variable", ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"])
def test_variables_win(variable: str) -> None:
    """The library already read the variable; a value under /usr/local that it set stays."""
    got = effective_dirs(PYPI, {variable: "/usr/local/x"}, nothing_exists)
    kept = {
        "OVS_RUNDIR": ("rundir",),
        "OVS_LOGDIR": ("logdir",),
        "OVS_DBDIR": ("dbdir",),
        "OVS_SYSCONFDIR": ("dbdir",),
    }[variable]
    for field in ("rundir", "logdir", "dbdir"):
        want = getattr(PYPI if field in kept else SYSTEM, field)
        assert getattr(got, field) == want, field


def test_help_shows_the_system_defaults_with_no_variables_set() -> None:
    """`--help` of the installed library (PyPI's, in the venv) names the system's places, and
    the database once as a URL."""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "ovs_ipsec", "--help"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(default: unix:/var/run/openvswitch/db.sock)" in text
    assert "unix:unix:" not in text and "/usr/local/var" not in text
    assert "(default /var/run/openvswitch/ovs-monitor-ipsec.pid)" in text.replace("ovs- ", "ovs-")
