"""Shared pytest set-up: preconditions of the `lab` marker, and lab fixtures.

Lab fixtures are function-scoped: every test gets fresh namespaces, databases and charons, so no
test sees another's conns, secrets or policies. That costs little. On the test machine a 2-host
lab (no daemon) is up in about 0.2 s and down in about 0.1 s while charon is idle; a charon with
IKE_SAs takes up to about 2 s to stop (all hosts stop in parallel).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from ovs_ipsec.tools.lab import CHARON, SCHEMA, Lab, LabError, charon_keeps_ike_sa_without_child

# What a lab needs besides root; sbin directories added in case PATH lacks them.
LAB_PROGRAMS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-appctl", "swanctl", CHARON)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    missing = [p for p in LAB_PROGRAMS if shutil.which(p, path=SEARCH_PATH) is None]
    if not os.path.exists(SCHEMA):
        missing.append(SCHEMA)
    if missing:
        return f"lab tests need {', '.join(missing)} (openvswitch-switch, charon-systemd, swanctl)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout sends SIGTERM, which by default kills pytest before any teardown or atexit
    # handler runs, leaving namespaces and charons behind. As an interrupt, fixtures clean up.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: `make_lab(n, **kw)` returns a started Lab (`start=False`: not started yet).

    Every lab it made is stopped at teardown, whatever the test did; a cleanup failure fails the
    test.
    """
    labs: list[Lab] = []

    def make(n_hosts: int = 2, *, start: bool = True, **kw: Any) -> Lab:
        lab = Lab(n_hosts, **kw)
        labs.append(lab)
        return lab.start() if start else lab

    yield make
    problems = []
    for lab in reversed(labs):
        try:
            lab.stop()
        except LabError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def lab2(make_lab: Callable[..., Lab]) -> Lab:
    """Two hosts with ovsdb-server and charon, no daemon."""
    return make_lab(2, daemon=False)


@functools.cache
def local_charon_version() -> tuple[int, ...]:
    """The version of this machine's charon-systemd, as its VICI `version` says (one throw-away
    host, no daemon: about 0.3 s, once per session)."""
    with Lab(1, daemon=False) as lab:
        return lab.hosts[0].charon_version()


@pytest.fixture(autouse=True)
def _charon_release_behaviour(request: pytest.FixtureRequest) -> None:
    """`keeps_ike_sa` tests assert an IKE_SA that stays up although this kernel refuses its
    CHILD_SA (strongSwan 5.9); `drops_ike_sa` tests assert what strongSwan 6 does instead
    (lab.charon_keeps_ike_sa_without_child). Each runs only where its charon does that."""
    keeps = request.node.get_closest_marker("keeps_ike_sa") is not None
    drops = request.node.get_closest_marker("drops_ike_sa") is not None
    if not (keeps or drops):
        return
    version = local_charon_version()
    release = ".".join(map(str, version))
    if keeps and not charon_keeps_ike_sa_without_child(version):
        pytest.skip(
            f"charon {release} drops the IKE_SA when the kernel refuses its CHILD_SA (no ESP "
            "here); this test asserts an IKE_SA that survives that (strongSwan 5.9)"
        )
    if drops and charon_keeps_ike_sa_without_child(version):
        pytest.skip(f"charon {release} keeps the IKE_SA when the kernel refuses its CHILD_SA")


ROOT = Path(__file__).resolve().parents[1]


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@pytest.fixture(scope="session")
def deb(deb_build: tuple[Path, float | None]) -> Path:
    return deb_build[0]


@pytest.fixture(scope="session")
def deb_build() -> tuple[Path, float | None]:
    """The Debian package under test, built once per session by `scripts/build-deb.sh` (what
    `make deb` runs) for both its own tests (tests/package) and the clean-root tier's package
    path, or the file named by IPSEC_TEST_DEB (e.g. a CI artefact); with the seconds the build
    took (None when given)."""
    given = os.environ.get("IPSEC_TEST_DEB")
    if given:
        return Path(given).resolve(), None
    if not Path("/usr/bin/dpkg-deb").exists():
        pytest.skip("building the Debian package needs a Debian machine (dpkg-deb)")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-deb.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, f"make deb failed:\n{done.stdout}\n{done.stderr}"
    path = ROOT / "dist" / f"ovs-ipsec_{project_version()}_all.deb"
    assert path.is_file(), done.stdout
    return path, time.monotonic() - started
