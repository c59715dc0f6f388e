"""Full-kernel end-to-end tier: one qemu boot runs every scenario of e2e/guest/scenarios.py
(ESP really flows through OVS kernel-datapath tunnels under our daemon) and each must pass.
A second boot runs the basics (negative control, a PSK and a CA-signed tunnel) on Debian 13's
userland (strongSwan 6.0, OVS 3.5, Python 3.13) from a cached mmdebstrap root (e2e/userland.py).

Skipped, with the reason, when the machine cannot run it: not root, no qemu, no static busybox,
the guest kernel package cannot be had, or (trixie) no mmdebstrap. `OVS_IPSEC_SKIP_E2E=1` skips
both on purpose, `OVS_IPSEC_SKIP_E2E_TRIXIE=1` only the trixie one; `E2E_SCENARIOS=1,5` runs a
subset of the host one. The results table is printed whatever the outcome; a failed run keeps its
console log, captures and node logs under .e2e-cache/runs/ (path in the output).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E2E = os.path.join(REPO, "e2e")
sys.path.insert(0, E2E)

import prepare  # noqa: E402

pytestmark = pytest.mark.e2e


def skip_reason() -> str | None:
    if os.environ.get("OVS_IPSEC_SKIP_E2E") == "1":
        return "OVS_IPSEC_SKIP_E2E=1"
    if os.geteuid() != 0:
        return "the e2e tier needs root (namespaces and 9p exports in the guest)"
    for prog, pkg in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("tcpdump", "tcpdump"),
    ):
        if shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"{prog} not found (install {pkg}; `make setup` does)"
    if not os.path.exists(prepare.BUSYBOX) or prepare.has_interpreter(prepare.BUSYBOX):
        return "no static busybox (install busybox-static; `make setup` does)"
    try:
        prepare.prepare(
            os.environ.get("E2E_CACHE", prepare.DEFAULT_CACHE), os.environ.get("E2E_KERNEL_PACKAGE")
        )
    except prepare.PrepareError as e:
        return f"the guest kernel cannot be built here: {e}"
    return None


def test_full_kernel_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    run_tier(["--userland", "host"], "full kernel under qemu, host userland", capsys)


def test_full_kernel_trixie_basics(capsys: pytest.CaptureFixture[str]) -> None:
    """IKE plus ESP with trixie's userland: strongSwan 6.0's charon-systemd, OVS 3.5's kernel
    datapath and our daemon under Python 3.13 with Debian's `ovs` and cryptography."""
    reason = skip_reason()
    if os.environ.get("OVS_IPSEC_SKIP_E2E_TRIXIE") == "1":
        reason = "OVS_IPSEC_SKIP_E2E_TRIXIE=1"
    elif reason is None and shutil.which("mmdebstrap") is None:
        reason = "mmdebstrap not found (install mmdebstrap; `make setup` does)"
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "E2E_SCENARIOS"}
    run_tier(["--userland", "trixie"], "full kernel under qemu, trixie userland", capsys, env)


def run_tier(
    args: list[str],
    title: str,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str] | None = None,
) -> None:
    argv = [sys.executable, os.path.join(E2E, "run.py"), *args]
    t0 = time.monotonic()
    # Its own process group (run.py keeps qemu in it): on a timeout or an interrupt the whole
    # group goes, qemu included. run.py's own host timeout (20 min at most) fires first.
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=1800)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    with capsys.disabled():
        # The table belongs in `make test`'s output, pass or fail.
        print(
            f"\n--- e2e ({title}) ---\n{out}e2e: {time.monotonic() - t0:.0f}s in all\n",
            flush=True,
        )
    assert proc.returncode == 0, (
        f"e2e/run.py exited {proc.returncode}\n{out}\n--- progress ---\n"
        + "\n".join(err.splitlines()[-60:])
    )
