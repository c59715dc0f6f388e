"""The e2e userland root's cache key (e2e/userland.py): what goes into the root decides the key,
so a changed package list or vici module builds a new root and a warm run reuses the old one."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "e2e"))

import userland  # noqa: E402


@pytest.fixture
def vici_dir(tmp_path: Path) -> Path:
    d = tmp_path / "vici"
    d.mkdir()
    (d / "__init__.py").write_text("from vici.session import Session\n")
    (d / "session.py").write_text("class Session: ...\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "session.cpython-311.pyc").write_bytes(b"\0compiled")
    return d


def test_same_inputs_same_key(vici_dir: Path) -> None:
    assert userland.root_key("trixie", str(vici_dir), "6.0.3") == userland.root_key(
        "trixie", str(vici_dir), "6.0.3"
    )


def test_package_list_changes_the_key(vici_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = userland.root_key("trixie", str(vici_dir), "6.0.3")
    without = tuple(p for p in userland.PACKAGES["trixie"] if p != "libstrongswan-standard-plugins")
    monkeypatch.setitem(userland.PACKAGES, "trixie", without)
    assert userland.root_key("trixie", str(vici_dir), "6.0.3") != before


def test_package_order_does_not_change_the_key(
    vici_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = userland.root_key("trixie", str(vici_dir), "6.0.3")
    monkeypatch.setitem(userland.PACKAGES, "trixie", tuple(reversed(userland.PACKAGES["trixie"])))
    assert userland.root_key("trixie", str(vici_dir), "6.0.3") == before


def test_vici_source_and_version_change_the_key(vici_dir: Path) -> None:
    before = userland.root_key("trixie", str(vici_dir), "6.0.3")
    assert userland.root_key("trixie", str(vici_dir), "6.0.4") != before
    (vici_dir / "session.py").write_text("class Session:\n    pass\n")
    assert userland.root_key("trixie", str(vici_dir), "6.0.3") != before


def test_bytecode_is_not_part_of_the_key(vici_dir: Path) -> None:
    before = userland.root_key("trixie", str(vici_dir), "6.0.3")
    (vici_dir / "__pycache__" / "session.cpython-311.pyc").write_bytes(b"\0other")
    assert userland.root_key("trixie", str(vici_dir), "6.0.3") == before


def test_install_vici_copies_sources_into_the_roots_python(vici_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib" / "python3.13").mkdir(parents=True)
    (root / "usr" / "lib" / "python3").mkdir()  # Debian's version-less dist-packages parent
    dest = Path(userland.install_vici(str(root), str(vici_dir)))
    assert dest == root / "usr/local/lib/python3.13/dist-packages/vici"
    assert sorted(p.name for p in dest.iterdir()) == ["__init__.py", "session.py"]


def test_unknown_release_is_refused() -> None:
    with pytest.raises(userland.UserlandError, match="unknown release"):
        userland.build("sid", "/nonexistent")


def test_prune_removes_only_other_roots_unused_for_a_week(tmp_path: Path) -> None:
    def root(name: str, age_days: float) -> Path:
        d = tmp_path / name
        (d / "usr").mkdir(parents=True)
        ready = tmp_path / f"{name}.ready"
        ready.write_text("{}")
        t = time.time() - age_days * 86400
        os.utime(ready, (t, t))
        return d

    stale = root("trixie-aaaaaaaaaaaa", 8)
    (tmp_path / "trixie-aaaaaaaaaaaa.log").write_text("log")
    recent = root("trixie-bbbbbbbbbbbb", 1)
    kept = root("trixie-cccccccccccc", 30)
    other_release = root("forky-dddddddddddd", 30)
    userland.prune(str(tmp_path), "trixie", keep=str(kept))
    assert not stale.exists()
    assert not (tmp_path / "trixie-aaaaaaaaaaaa.ready").exists()
    assert not (tmp_path / "trixie-aaaaaaaaaaaa.log").exists()
    assert recent.exists() and kept.exists() and other_release.exists()
