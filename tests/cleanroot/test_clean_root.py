"""The clean-root tier: the README and the Debian package, each proven on a machine that starts
from nothing (docs/clean-root-tier.md).

For each release (bookworm, trixie) a minimal Debian root is built once and cached (roots.py);
each test runs in a throwaway overlay copy of it (sandbox.py):

- readme: the README's install block as written (prerequisites, `git clone` of the checkout's
  HEAD, `make demo`); it must pass and print no Python warning or traceback.
- package: `make deb`'s package copied to /root beside tests/cleanroot/guest/, whose
  package_path.sh installs it the way a user does and runs the package scenario.
- replace: the same on a machine that ran Debian's openvswitch-ipsec (replace_path.sh): upstream's
  package and generated files (a PSK in clear) in place, then ours installed over it.

Knobs: OVS_IPSEC_SKIP_CLEANROOT=1 skips the tier; OVS_IPSEC_CLEANROOT_RELEASES=bookworm,trixie and
OVS_IPSEC_CLEANROOT_PATHS=readme,package,replace pick; OVS_IPSEC_CLEANROOT_CACHE moves the caches;
OVS_IPSEC_CLEANROOT_TIMEOUT bounds each run (seconds). Missing tools fail the tier, not skip it:
`make test` installs them first. A failed run keeps its log (path in the failure).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import paths  # noqa: E402
import roots  # noqa: E402
import sandbox  # noqa: E402

pytestmark = pytest.mark.cleanroot

GUEST = os.path.join(HERE, "guest")
# Package paths and the guest script each runs (tests/cleanroot/guest/): a fresh machine; and one
# that ran Debian's openvswitch-ipsec, with upstream's generated files (a PSK in clear) in place.
PACKAGE_SCENARIOS = {"package": "package_path.sh", "replace": "replace_path.sh"}
DEFAULT_TIMEOUT_S = 20 * 60


def _selected(var: str, known: tuple[str, ...]) -> list[str]:
    raw = os.environ.get(var, "")
    picked = [x.strip() for x in raw.split(",") if x.strip()] or list(known)
    unknown = [x for x in picked if x not in known]
    if unknown:
        raise pytest.UsageError(f"{var}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return picked


RELEASES = _selected("OVS_IPSEC_CLEANROOT_RELEASES", roots.RELEASES)
PATHS = _selected("OVS_IPSEC_CLEANROOT_PATHS", ("readme", *PACKAGE_SCENARIOS))


def _timeout() -> float:
    return float(os.environ.get("OVS_IPSEC_CLEANROOT_TIMEOUT", DEFAULT_TIMEOUT_S))


@pytest.fixture(scope="session")
def tier_ready() -> None:
    """Skips on purpose or without root; fails when a tool `make test`'s setup installs is
    missing, so a machine that lost one cannot pass by skipping."""
    if os.environ.get("OVS_IPSEC_SKIP_CLEANROOT") == "1":
        pytest.skip("OVS_IPSEC_SKIP_CLEANROOT=1")
    if os.geteuid() != 0:
        pytest.skip("the clean-root tier needs root (namespaces, chroot, mmdebstrap)")
    problem = sandbox.host_tool_problems()
    if problem is None:
        try:
            roots.mmdebstrap_version()
        except roots.RootError as e:
            problem = str(e)
    if problem is not None:
        pytest.fail(f"clean-root tier cannot run: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def cached_root(tier_ready: None, cleanroot_report: list[str]) -> Callable[[str], roots.Root]:
    """release -> its cached root, built (and its build time reported) on first use."""
    built: dict[str, roots.Root] = {}

    def get(release: str) -> roots.Root:
        if release not in built:
            try:
                root = roots.ensure_root(release)
            except roots.RootError as e:
                pytest.fail(f"{release} root: {e}", pytrace=False)
            how = f"built in {root.build_seconds:.0f} s" if root.fresh else "from the cache"
            cleanroot_report.append(f"{release} root: {how} ({root.path})")
            built[release] = root
        return built[release]

    return get


@pytest.fixture(scope="session")
def deb_package(
    tier_ready: None, cleanroot_report: list[str], deb_build: tuple[Path, float | None]
) -> str:
    """The package `make deb` builds now from this checkout (dist/ovs-ipsec_<version>_all.deb),
    shared with tests/package (one build per session)."""
    deb, seconds = deb_build
    took = "given" if seconds is None else f"{seconds:.0f} s"
    cleanroot_report.append(f"make deb: {took} ({deb})")
    return str(deb)


LOG_KEEP_DAYS = 14


def _log_path(release: str, path: str) -> str:
    """A new log file; failed runs' logs older than LOG_KEEP_DAYS are removed."""
    logs = os.path.join(roots.cache_dir(), "logs")
    os.makedirs(logs, exist_ok=True)
    for old in glob.glob(os.path.join(logs, "*.log")):
        if time.time() - os.path.getmtime(old) > LOG_KEEP_DAYS * 86400:
            os.unlink(old)
    return os.path.join(logs, f"{release}-{path}-{time.strftime('%Y%m%dT%H%M%S')}.log")


def _judge(result: sandbox.RunResult, what: str) -> str:
    """The run's step timings; fails the test, keeping the log, unless the run passed."""
    log = result.log_text()
    steps = paths.format_steps(paths.step_durations(log))
    if not result.ok or not paths.finished(log):
        how = "timed out" if result.timed_out else f"exited {result.returncode}"
        pytest.fail(
            f"{what} {how} after {result.seconds:.0f} s; log kept: {result.log_path}\n"
            f"steps:\n{steps}\n"
            + "".join(f"{c}\n" for c in paths.check_lines(log))
            + f"--- last lines ---\n{result.tail(80)}",
            pytrace=False,
        )
    return steps


def _head_bundle(dest: str) -> str:
    """A git bundle of HEAD: what a fresh clone of this checkout holds (uncommitted changes are
    not in it; CI tests a fresh clone anyway)."""
    bundle = os.path.join(dest, "ovs-ipsec.bundle")
    proc = subprocess.run(
        ["git", "-C", REPO, "bundle", "create", "-q", bundle, "HEAD"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"the README path clones this checkout's HEAD: {proc.stderr}", pytrace=False)
    return bundle


def _head() -> str:
    return subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("release", RELEASES)
def test_clean_root(
    release: str,
    path: str,
    cached_root: Callable[[str], roots.Root],
    request: pytest.FixtureRequest,
    cleanroot_report: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    root = cached_root(release)
    box = sandbox.Sandbox(root.path, release, roots.cache_dir())
    log_path = _log_path(release, path)
    if path == "readme":
        with open(os.path.join(REPO, "README.md")) as f:
            try:
                steps = paths.clone_from(paths.readme_steps(f.read()), "/srv/ovs-ipsec.bundle")
            except paths.ReadmeError as e:
                pytest.fail(str(e), pytrace=False)
        bundle = _head_bundle(str(tmp_path))
        result = box.run(
            paths.step_script(steps),
            log_path=log_path,
            timeout=_timeout(),
            files={bundle: "/srv/ovs-ipsec.bundle"},
        )
        what = f"README path on {release} (HEAD {_head()})"
    else:
        deb = request.getfixturevalue("deb_package")
        files = {deb: "/root/" + os.path.basename(deb), GUEST: "/root/guest"}
        script = paths.package_script(f"/root/guest/{PACKAGE_SCENARIOS[path]}")
        result = box.run(script, log_path=log_path, timeout=_timeout(), files=files)
        what = f"{path} path on {release} ({os.path.basename(deb)})"
    steps = _judge(result, what)
    log = result.log_text()
    warnings = paths.python_warnings(log)
    line = f"{what}: passed in {result.seconds:.0f} s"
    checks = "".join(f"\n  {c}" for c in paths.check_lines(log))
    cleanroot_report.append(f"{line}\n{steps}")
    with capsys.disabled():
        print(f"\n--- clean root: {line} ---\n{steps}{checks}", flush=True)
    assert not warnings, (
        f"{what}: Python warnings or tracebacks in the output (log kept: {result.log_path}):\n"
        + "\n".join(warnings)
    )
    os.unlink(result.log_path)
