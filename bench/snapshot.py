"""What the benchmark runs: a copy of the code, installed the way `pip install .` leaves it.

`select(argv)` copies `ovs_ipsec/` and `bin/` into a temporary directory (removed at exit): the
working tree's, or with `--commit REV` (or `--commit=REV`) that commit's, by `git archive`. So a
run measures one fixed version even while others edit the tree. It must run before anything
imports ovs_ipsec: the copy goes first on sys.path and PYTHONPATH, so the lab's daemon (the lab
runs the package it was imported from), the planner and floor.py all run it.

The copy is run as an installed package is, which is not how a development checkout runs:

- **compiled**: pip (and Debian's packaging) byte-compile a package when installing it. This
  machine's environment sets PYTHONDONTWRITEBYTECODE=1, so a checkout's modules are compiled
  from source by every process that imports them: for the daemon, about 1.4 MiB of resident
  memory that an installed daemon never spends, and tens of milliseconds of its cold start.
- **no editable-install hook**: the development venv holds the package as an editable install,
  whose `.pth` hook runs at every interpreter start-up and imports pathlib, urllib and
  importlib.util (about 0.8 MiB) in processes that do not use them. The copy runs under an
  interpreter of its own (a venv without pip) that finds the dependencies through a plain path
  entry to the development venv's site-packages, as a venv made for `pip install .` would
  have them.

Stdlib only.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Installed:
    root: str  # holds ovs_ipsec/ and bin/
    python: str  # the interpreter that runs the daemon and the floor
    commit: str | None  # None: a copy of the working tree


def _commit_argument(argv: list[str]) -> str | None:
    rev = None
    for i, arg in enumerate(argv):
        if arg == "--commit" and i + 1 < len(argv):
            rev = argv[i + 1]
        elif arg.startswith("--commit="):
            rev = arg.split("=", 1)[1]
    return rev


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True)


def _interpreter(dest: str) -> str:
    """A venv without pip whose only site entry is the development venv's site-packages."""
    home = os.path.join(dest, "python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", home], check=True)
    python = os.path.join(home, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "ovs-ipsec-bench-deps.pth"), "w") as f:
        f.write("".join(f"{path}\n" for path in sorted(ours)))
    return python


def select(argv: list[str]) -> Installed:
    """Copy and install the code to measure (the commit named by --commit, else the tree)."""
    rev = _commit_argument(argv)
    sha = None
    if rev is not None:
        sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").stdout.decode().strip()
    dest = tempfile.mkdtemp(prefix=f"ovs-ipsec-bench-{sha[:10] if sha else 'tree'}-")
    atexit.register(shutil.rmtree, dest, True)
    if sha:
        archive = _git("archive", sha, "ovs_ipsec", "bin").stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    else:
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for part in ("ovs_ipsec", "bin"):
            shutil.copytree(os.path.join(REPO, part), os.path.join(dest, part), ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", os.path.join(dest, "ovs_ipsec")], check=True
    )
    python = _interpreter(dest)
    sys.path.insert(0, dest)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (dest, os.environ.get("PYTHONPATH", "")) if p
    )
    return Installed(root=dest, python=python, commit=sha)
