"""The clean-root tier's pure parts: reading the README's block, building the scripts, judging
the logs. Fast; no root needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import paths  # noqa: E402
import roots  # noqa: E402

README = """\
# x

<!-- clean-root tier: runs the next block -->
```sh
apt-get update && apt-get install -y git make ca-certificates
# a comment
git clone <this repository's URL> ovs-ipsec
cd ovs-ipsec && make demo
```
"""


def test_readme_steps_are_the_marked_block() -> None:
    assert paths.readme_steps(README) == [
        "apt-get update && apt-get install -y git make ca-certificates",
        "git clone <this repository's URL> ovs-ipsec",
        "cd ovs-ipsec && make demo",
    ]


def test_the_real_readme_has_a_block_with_one_clone() -> None:
    with open(os.path.join(os.path.dirname(os.path.dirname(HERE)), "README.md")) as f:
        steps = paths.clone_from(paths.readme_steps(f.read()), "/srv/x.bundle")
    assert any("git clone /srv/x.bundle" in s for s in steps)
    assert any("make demo" in s for s in steps)


def test_clone_points_at_the_checkout() -> None:
    steps = paths.clone_from(paths.readme_steps(README), "/srv/ovs-ipsec.bundle")
    assert steps[1] == "git clone /srv/ovs-ipsec.bundle ovs-ipsec"
    url = ["git clone https://example.org/ovs-ipsec.git && cd ovs-ipsec"]
    assert paths.clone_from(url, "/b") == ["git clone /b && cd ovs-ipsec"]


def test_readme_without_marker_or_clone_is_refused() -> None:
    for text, steps in (("no marker", None), (README, ["make demo"])):
        try:
            paths.clone_from(steps or paths.readme_steps(text), "/b")
        except paths.ReadmeError:
            continue
        raise AssertionError(f"accepted {text!r} {steps!r}")


def test_step_script_marks_each_step_and_stops_at_the_first_failure() -> None:
    script = paths.step_script(["cd /", "echo one", "false", "echo never"], workdir="/tmp")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "one" in proc.stdout and "never" not in proc.stdout
    labels = [s.label for s in paths.step_durations(proc.stdout)]
    assert labels == ["cd /", "echo one", "false"]  # the failed step timed up to the exit mark
    assert proc.stdout.splitlines()[-1].endswith(" exit 1")
    assert not paths.finished(proc.stdout)
    ok = subprocess.run(
        ["bash", "-c", paths.step_script(["cd /tmp", "pwd"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "\n/tmp\n" in ok.stdout and paths.finished(ok.stdout)
    assert [s.label for s in paths.step_durations(ok.stdout)] == ["cd /tmp", "pwd"]


def test_python_warnings_and_tracebacks_are_found() -> None:
    log = (
        "Setting up python3 ...\n"
        "/root/ovs-ipsec/.venv/lib/python3.11/site-packages/x.py:12: "
        "CryptographyDeprecationWarning: DSA is deprecated\n"
        "  /tmp/pip-build-env-1/setuptools/editable_wheel.py:354: BuildBackendWarning: Editable\n"
        "W: apt says something\n"
        "Traceback (most recent call last):\n"
    )
    found = paths.python_warnings(log)
    assert len(found) == 3
    assert "CryptographyDeprecationWarning" in found[0]
    assert paths.python_warnings("WARNING: pip says\nE: apt failed\n") == []


def test_root_key_changes_with_its_inputs() -> None:
    base = roots.RootSpec("bookworm", "minbase", (), "1.3.5", "abc")
    assert base.key == roots.RootSpec("bookworm", "minbase", (), "1.3.5", "abc").key
    for other in (
        roots.RootSpec("trixie", "minbase", (), "1.3.5", "abc"),
        roots.RootSpec("bookworm", "important", (), "1.3.5", "abc"),
        roots.RootSpec("bookworm", "minbase", ("git",), "1.3.5", "abc"),
        roots.RootSpec("bookworm", "minbase", (), "1.5.0", "abc"),
        roots.RootSpec("bookworm", "minbase", (), "1.3.5", "abd"),
    ):
        assert other.key != base.key
    assert base.name == f"bookworm-{base.key}"
    argv = roots.mmdebstrap_argv(base, "/t")
    assert argv[-2:] == ["bookworm", "/t"] and "--variant=minbase" in argv


def test_a_missing_mmdebstrap_is_an_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(roots.RootError, match="install mmdebstrap"):
        roots.mmdebstrap_version()
