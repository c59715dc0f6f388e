"""Minimal Debian roots for the clean-root tier: what a user's fresh machine starts from.

A root is Debian's `minbase` variant made by mmdebstrap: the Essential packages and apt, nothing
else (no python3, no git, no iproute2, no systemd). That is stricter than a fresh install from
the installer or a cloud image (those add the `important`/`standard` priorities), so whatever the
README, `scripts/setup.sh` or the .deb's Depends leave out shows up here rather than being hidden
by a package that happened to be there. The README's own first step (installing git and make)
runs in the test, not in the root, so that step is proven too.

Roots are cached outside the checkout, one directory per release, named by a key over everything
that goes into it (release, variant, extra packages, mirror, mmdebstrap's version and this file's
text), so a change to any of them builds a new root and the old one is pruned. The directory is
used read-only, as the lower layer of an overlay (sandbox.py); it is rebuilt after MAX_AGE_DAYS so
it does not drift far behind the point releases a user installs from.

As a CLI (root only): `python3 tests/cleanroot/roots.py build [bookworm|trixie ...]`, `path
RELEASE`, `prune`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

RELEASES = ("bookworm", "trixie")
VARIANT = "minbase"
# Nothing beyond minbase: the README path installs its prerequisites itself, as a user does.
INCLUDE: tuple[str, ...] = ()
DEFAULT_CACHE = "/var/cache/ovs-ipsec-cleanroot"
MAX_AGE_DAYS = 30
BUILD_TIMEOUT_S = 20 * 60


class RootError(Exception):
    """A root could not be built or found; the message says why and where the log is."""


@dataclass(frozen=True)
class RootSpec:
    """Everything that goes into a root; its hash names the cached directory."""

    release: str
    variant: str
    include: tuple[str, ...]
    mmdebstrap: str
    builder_sha256: str

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.release}-{self.key}"


@dataclass(frozen=True)
class Root:
    """A built root: its directory and how it came to be."""

    path: str
    spec: RootSpec
    built_at: float
    build_seconds: float
    fresh: bool  # built by this call (a cold start) rather than taken from the cache


def cache_dir() -> str:
    return os.environ.get("OVS_IPSEC_CLEANROOT_CACHE", DEFAULT_CACHE)


def mmdebstrap_version() -> str:
    """`mmdebstrap 1.3.5` -> `1.3.5`; RootError when the tool is missing."""
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise RootError("mmdebstrap not found (install mmdebstrap; `make setup` does)")
    out = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return out.split()[-1]


def builder_sha256() -> str:
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def spec_for(release: str) -> RootSpec:
    if release not in RELEASES:
        raise RootError(f"unknown release {release!r} (known: {', '.join(RELEASES)})")
    return RootSpec(release, VARIANT, INCLUDE, mmdebstrap_version(), builder_sha256())


def mmdebstrap_argv(spec: RootSpec, target: str) -> list[str]:
    """The build command. Mirror and suites are mmdebstrap's defaults for the release, which are
    what a user gets: deb.debian.org, the release, its -updates and its security suite."""
    argv = ["mmdebstrap", "--mode=root", f"--variant={spec.variant}", "--format=directory"]
    if spec.include:
        argv.append("--include=" + ",".join(spec.include))
    return [*argv, spec.release, target]


@contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive lock held for the block: two runs never build or prune the same release."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _roots_dir() -> str:
    path = os.path.join(cache_dir(), "roots")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _read_meta(meta_path: str) -> dict[str, object] | None:
    try:
        with open(meta_path) as f:
            meta: dict[str, object] = json.load(f)
            return meta
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _entry_name(entry: str) -> str:
    """`bookworm-<key>`, its `.json`, its `.build.log` and its `.build-` directory -> its name."""
    name = entry.removeprefix(".build-")
    for suffix in (".json", ".build.log"):
        name = name.removesuffix(suffix)
    return name


def prune(release: str, keep: str | None) -> list[str]:
    """Removes every cached root of `release` except `keep` (a RootSpec.name), with unfinished
    builds; returns what went. Callers hold the release's lock."""
    roots = _roots_dir()
    gone = []
    for entry in sorted(os.listdir(roots)):
        name = _entry_name(entry)
        if entry.endswith(".lock") or name.partition("-")[0] != release:
            continue
        if name != keep or entry.startswith(".build-"):
            _remove(os.path.join(roots, entry))
            gone.append(entry)
    return gone


def ensure_root(release: str, *, max_age_days: float = MAX_AGE_DAYS) -> Root:
    """The cached root for `release`, built first if missing, stale or made from other inputs."""
    if os.geteuid() != 0:
        raise RootError("building a root needs root (mmdebstrap --mode=root)")
    spec = spec_for(release)
    roots = _roots_dir()
    path = os.path.join(roots, spec.name)
    meta_path = path + ".json"
    with locked(os.path.join(roots, f"{release}.lock")):
        meta = _read_meta(meta_path)
        if meta is not None and os.path.isdir(path):
            built_at = float(meta.get("built_at", 0))  # type: ignore[arg-type]
            if time.time() - built_at < max_age_days * 86400:
                seconds = float(meta.get("build_seconds", 0))  # type: ignore[arg-type]
                return Root(path, spec, built_at, seconds, fresh=False)
        prune(release, keep=None)
        return _build(spec, path, meta_path)


def _build(spec: RootSpec, path: str, meta_path: str) -> Root:
    roots = os.path.dirname(path)
    tmp = os.path.join(roots, f".build-{spec.name}")
    log_path = path + ".build.log"
    argv = mmdebstrap_argv(spec, tmp)
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as e:
            _remove(tmp)
            raise RootError(
                f"mmdebstrap {spec.release} timed out after {BUILD_TIMEOUT_S} s; log: {log_path}"
            ) from e
    if proc.returncode != 0:
        _remove(tmp)
        raise RootError(f"mmdebstrap {spec.release} exited {proc.returncode}; log: {log_path}")
    seconds = time.monotonic() - start
    os.rename(tmp, path)
    built_at = time.time()
    with open(meta_path + ".tmp", "w") as f:
        json.dump(
            {**asdict(spec), "key": spec.key, "built_at": built_at, "build_seconds": seconds},
            f,
            indent=2,
        )
    os.rename(meta_path + ".tmp", meta_path)
    os.unlink(log_path)
    return Root(path, spec, built_at, seconds, fresh=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build (or find) the cached root of each release")
    build.add_argument("releases", nargs="*", default=list(RELEASES))
    path = sub.add_parser("path", help="print the cached root's directory (building it first)")
    path.add_argument("release")
    sub.add_parser("prune", help="remove every cached root not made from the current inputs")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            for release in args.releases:
                root = ensure_root(release)
                how = f"built in {root.build_seconds:.0f} s" if root.fresh else "cached"
                print(f"{release}: {root.path} ({how})")
        elif args.cmd == "path":
            print(ensure_root(args.release).path)
        else:
            for release in RELEASES:
                keep = spec_for(release).name
                with locked(os.path.join(_roots_dir(), f"{release}.lock")):
                    for entry in prune(release, keep=keep):
                        print(f"removed {entry}")
    except RootError as e:
        print(f"roots: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
