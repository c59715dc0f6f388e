#!/usr/bin/env python3
"""Build (or reuse from the cache) a Debian userland root for the e2e guest, so that the tier can
run on another release's strongSwan, Open vSwitch and Python than the host's.

    e2e/userland.py [--cache DIR] [RELEASE]        # RELEASE: trixie (default)

The root is made with mmdebstrap (variant `essential` plus exactly the packages the guest uses)
into a directory under the cache, default /var/cache/ovs-ipsec-e2e (`E2E_USERLAND_CACHE`
overrides), outside the checkout:

    <cache>/<release>-<key>/          the root: usr/, etc/ (merged /usr)
    <cache>/<release>-<key>.ready     written last: the root is complete

<key> is a hash of everything that goes into the root (release, mirror, package list, dpkg and
mmdebstrap options, the vici module's files), so a change to any of them builds a new root and a
warm run reuses the old one. A run touches its root's .ready; roots of the same release that no
run has used for a week are removed when a new one is built (another checkout on this machine may
still boot an older key).

The guest mounts the root's /usr and /etc instead of the host's; our daemon runs under the root's
python3 with the root's `ovs` library and cryptography. Debian has no `vici` module (not in
bookworm, not in trixie), so the pure-Python module the host venv was set up with (PyPI `vici`,
the version the suite passes with) is copied into the root's /usr/local/lib/python3.X/
dist-packages, as the Debian package ships it inside itself.

Stdlib only. Needs root and mmdebstrap (apt-get install mmdebstrap).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CACHE = "/var/cache/ovs-ipsec-e2e"
MIRROR = "http://deb.debian.org/debian"
FORMAT = 1  # bump when the way the root is made changes
UNUSED_FOR = 7 * 86400  # seconds after which another key's root is removed

# What the guest runs, and nothing else: the kernel-datapath switch and its Python library,
# charon-systemd with swanctl and the standard plugins (openssl, gcm, ...), the daemon's Python
# dependencies that Debian has, and the tools the scenarios call (ip, tcpdump, modprobe, ping,
# free). The essential set brings bash, coreutils, util-linux (nsenter, unshare) and hostname.
PACKAGES: dict[str, tuple[str, ...]] = {
    "trixie": (
        "openvswitch-switch",
        "openvswitch-common",
        "python3-openvswitch",
        "charon-systemd",
        "strongswan-swanctl",
        "libstrongswan-standard-plugins",
        "python3-cryptography",
        "iproute2",
        "tcpdump",
        "kmod",
        "iputils-ping",
        "procps",
    ),
}
# Docs, man pages and translations are never read in the guest; leaving them out makes the root
# smaller and its build faster.
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


class UserlandError(RuntimeError):
    """The root cannot be built here (no mmdebstrap, not root, no mirror)."""


def log(msg: str) -> None:
    print(f"e2e/userland: {msg}", file=sys.stderr, flush=True)


def host_vici() -> tuple[str, str]:
    """(directory of the vici package, version) of the venv the suite runs with."""
    python = os.path.join(REPO, ".venv", "bin", "python")
    if not os.path.exists(python):
        python = sys.executable
    code = (
        "import os, vici; from importlib.metadata import version;"
        "print(os.path.dirname(vici.__file__)); print(version('vici'))"
    )
    p = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        raise UserlandError(f"no vici module in {python} (make setup): {p.stderr.strip()[-300:]}")
    path, version = p.stdout.split()
    return path, version


def vici_files(path: str) -> list[str]:
    return sorted(
        os.path.relpath(f, path)
        for f in glob.glob(os.path.join(path, "**", "*.py"), recursive=True)
    )


def root_key(release: str, vici_path: str, vici_version: str) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT,
                "release": release,
                "mirror": MIRROR,
                "variant": "essential",
                "packages": sorted(PACKAGES[release]),
                "dpkg": DPKG_OPTS,
                "vici": vici_version,
            },
            sort_keys=True,
        ).encode()
    )
    for rel in vici_files(vici_path):
        h.update(rel.encode())
        with open(os.path.join(vici_path, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def install_vici(root: str, vici_path: str) -> str:
    pythons = sorted(glob.glob(os.path.join(root, "usr", "lib", "python3.[0-9]*")))
    pythons = [p for p in pythons if os.path.basename(p).replace("python3.", "").isdigit()]
    if not pythons:
        raise UserlandError(f"{root}: no usr/lib/python3.X (python3 not installed?)")
    dest = os.path.join(
        root, "usr", "local", "lib", os.path.basename(pythons[-1]), "dist-packages", "vici"
    )
    os.makedirs(dest)
    for rel in vici_files(vici_path):
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(vici_path, rel), os.path.join(dest, rel))
    return dest


def mmdebstrap(release: str, target: str, logfile: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserlandError("mmdebstrap not found (apt-get install mmdebstrap; `make setup` does)")
    argv = [
        "mmdebstrap",
        "--variant=essential",
        "--mode=root",
        "--include=" + ",".join(PACKAGES[release]),
        *[f"--dpkgopt={o}" for o in DPKG_OPTS],
        release,
        target,
        MIRROR,
    ]
    with open(logfile, "w") as out:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(logfile, errors="replace") as f:
            last = f.read()[-2000:]
        raise UserlandError(f"mmdebstrap {release} failed (exit {p.returncode}):\n{last}")


def build(release: str = "trixie", cache: str = DEFAULT_CACHE) -> str:
    """The root directory for `release`: reused when its key is cached, else built."""
    if release not in PACKAGES:
        raise UserlandError(f"unknown release {release!r}; known: {', '.join(PACKAGES)}")
    vici_path, vici_version = host_vici()
    key = root_key(release, vici_path, vici_version)
    root = os.path.join(cache, f"{release}-{key}")
    ready = root + ".ready"
    if os.path.exists(ready):
        os.utime(ready)  # in use: keeps prune() away from it
        return root
    if os.geteuid() != 0:
        raise UserlandError("building the userland root needs root (mmdebstrap --mode=root)")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f".{release}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same root
        if os.path.exists(ready):
            return root
        t = time.monotonic()
        log(f"building the {release} root {root} (mmdebstrap; about a minute)")
        staging = root + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        logfile = root + ".log"
        mmdebstrap(release, staging, logfile)
        install_vici(staging, vici_path)
        os.rename(staging, root)
        with open(ready, "w") as f:
            json.dump({"built": time.strftime("%F %T"), "seconds": time.monotonic() - t}, f)
        log(f"{release} root built in {time.monotonic() - t:.0f}s")
        prune(cache, release, keep=root)
    return root


def prune(cache: str, release: str, keep: str) -> None:
    """Remove the roots of `release` (with their .ready, .log, .tmp) unused for UNUSED_FOR."""
    now = time.time()
    for ready in glob.glob(os.path.join(cache, f"{release}-*.ready")):
        old = ready[: -len(".ready")]
        if old == keep or now - os.path.getmtime(ready) < UNUSED_FOR:
            continue
        log(f"removing {old}: unused for {(now - os.path.getmtime(ready)) / 86400:.0f} days")
        with contextlib.suppress(OSError):
            os.unlink(ready)  # first: a half-removed root must never look ready
        for path in (old, old + ".tmp", old + ".log"):
            with contextlib.suppress(OSError):
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)


def versions(root: str) -> dict[str, str]:
    """Versions of what matters in the root, from its dpkg status (for the run's banner)."""
    want = {"charon-systemd", "openvswitch-switch", "python3", "python3-cryptography"}
    found: dict[str, str] = {}
    pkg = ""
    with open(os.path.join(root, "var", "lib", "dpkg", "status")) as f:
        for line in f:
            if line.startswith("Package: "):
                pkg = line.split()[1]
            elif line.startswith("Version: ") and pkg in want:
                found[pkg] = line.split()[1]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("release", nargs="?", default="trixie")
    ap.add_argument("--cache", default=os.environ.get("E2E_USERLAND_CACHE", DEFAULT_CACHE))
    args = ap.parse_args()
    t = time.monotonic()
    try:
        root = build(args.release, args.cache)
    except UserlandError as e:
        log(f"ERROR: {e}")
        return 2
    print(root)
    log(f"ready in {time.monotonic() - t:.1f}s: {versions(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
