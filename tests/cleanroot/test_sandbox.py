"""The sandbox itself, in a real copy of a cached root: a copy leaves no trace, whatever the
script does (processes left behind, mounts, writes) and however it ends (exit code, timeout).
Needs root and a cached root (built on first use); a few seconds once the root is cached."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import roots  # noqa: E402
import sandbox  # noqa: E402

pytestmark = pytest.mark.cleanroot

# Names no other process on the machine has: what the checks look for afterwards.
TAG = f"cleanroot-leak-check-{os.getpid()}"


def _processes_with(tag: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if tag.encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def box() -> sandbox.Sandbox:
    if os.environ.get("OVS_IPSEC_SKIP_CLEANROOT") == "1":
        pytest.skip("OVS_IPSEC_SKIP_CLEANROOT=1")
    if os.geteuid() != 0:
        pytest.skip("the clean-root tier needs root")
    problem = sandbox.host_tool_problems()
    if problem:
        pytest.fail(problem, pytrace=False)
    release = os.environ.get("OVS_IPSEC_CLEANROOT_RELEASES", roots.RELEASES[0]).split(",")[0]
    try:
        root = roots.ensure_root(release.strip())
    except roots.RootError as e:
        pytest.fail(str(e), pytrace=False)
    return sandbox.Sandbox(root.path, root.spec.release, roots.cache_dir())


def test_exit_code_output_and_no_trace_in_the_root(box: sandbox.Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "given.txt"
    source.write_text("handed in\n")
    script = f"""
set -e
cat /root/given.txt
echo {TAG} > /etc/{TAG}
test -f /usr/sbin/policy-rc.d && test -s /etc/resolv.conf
echo "init: $(tr '\\0' ' ' < /proc/1/cmdline)"
exit 7
"""
    result = box.run(
        script, log_path=str(tmp_path / "log"), timeout=120, files={str(source): "/root/given.txt"}
    )
    log = result.log_text()
    assert result.returncode == 7 and not result.timed_out, log
    assert "handed in" in log
    assert "init: /bin/sh -c" in log, "the script runs in its own PID namespace, under the stage"
    assert not os.path.exists(os.path.join(box.lower, "etc", TAG)), "a write reached the root"


def test_the_download_caches_survive_a_run_without_package_lists(
    box: sandbox.Sandbox, tmp_path: Path
) -> None:
    kept = Path(box.apt_cache()) / f"{TAG}_1.0_all.deb"
    kept.write_bytes(b"not really a package")
    try:
        result = box.run(
            f"ls /var/cache/apt/archives/{TAG}_1.0_all.deb",
            log_path=str(tmp_path / "log"),
            timeout=120,
        )
        assert result.ok, result.log_text()
        assert kept.exists(), "apt's archive cache was cleaned by a copy that had no lists"
    finally:
        kept.unlink(missing_ok=True)


def test_a_timeout_kills_everything_and_unmounts(box: sandbox.Sandbox, tmp_path: Path) -> None:
    # A daemon in its own session, a background child and a mount, then a hang.
    script = f"""
setsid sh -c 'exec -a {TAG}-daemon sleep 600' &
sh -c 'exec -a {TAG}-child sleep 600' &
mkdir -p /mnt/x && mount -t tmpfs {TAG} /mnt/x
echo ready
exec -a {TAG}-main sleep 600
"""
    result = box.run(script, log_path=str(tmp_path / "log"), timeout=5)
    assert result.timed_out and result.returncode is None
    assert "timed out" in result.log_text()
    assert _processes_with(TAG) == []
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    assert TAG not in mounts and "ovs-ipsec-cleanroot." not in mounts
