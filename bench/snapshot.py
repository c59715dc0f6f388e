"""`--commit REV`: measure a commit rather than the working tree, which others may be editing.

`select(argv)` looks for `--commit REV` (or `--commit=REV`), `git archive`s that commit's
ovs_ipsec/ and bin/ into a temporary directory (removed at exit) and puts it first on sys.path
and PYTHONPATH, so the lab's daemon (the lab runs the package it was imported from), the planner
and floor.py all run that commit. It must run before anything imports ovs_ipsec.

Stdlib only.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def select(argv: list[str]) -> str | None:
    """Snapshot the commit named by --commit, if any; returns its full id (None: working tree)."""
    rev = None
    for i, arg in enumerate(argv):
        if arg == "--commit" and i + 1 < len(argv):
            rev = argv[i + 1]
        elif arg.startswith("--commit="):
            rev = arg.split("=", 1)[1]
    if rev is None:
        return None
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = tempfile.mkdtemp(prefix=f"ovs-ipsec-bench-{sha[:10]}-")
    atexit.register(shutil.rmtree, dest, True)
    archive = subprocess.run(
        ["git", "archive", sha, "ovs_ipsec", "bin"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    sys.path.insert(0, dest)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (dest, os.environ.get("PYTHONPATH", "")) if p
    )
    return sha
