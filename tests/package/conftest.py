"""The Debian package under test: built once per session by `scripts/build-deb.sh` (what
`make deb` runs, about 15 s), or the file named by IPSEC_TEST_DEB (e.g. a CI artefact)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@pytest.fixture(scope="session")
def deb() -> Path:
    given = os.environ.get("IPSEC_TEST_DEB")
    if given:
        return Path(given).resolve()
    if not Path("/usr/bin/dpkg-deb").exists():
        pytest.skip("building the Debian package needs a Debian machine (dpkg-deb)")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-deb.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"make deb failed:\n{done.stdout}\n{done.stderr}"
    path = ROOT / "dist" / f"ovs-ipsec_{project_version()}_all.deb"
    assert path.is_file(), done.stdout
    return path
