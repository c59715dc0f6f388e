"""The entry point keeps OpenSSL out unless the database is reached over SSL or metrics are
served; the daemon still starts and parses its command line without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ovs_ipsec.entry import needs_openssl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        ([], False),
        (["unix:/run/openvswitch/db.sock", "--pidfile", "--detach"], False),
        (["ssl:10.0.0.1:6640"], True),
        (["pssl:6640"], True),
        (["--metrics-address=:9101"], True),
        (["--metrics-address", ":9101"], True),
    ],
)
def test_needs_openssl(argv: list[str], needed: bool) -> None:
    assert needs_openssl(argv) is needed


def test_launcher_runs_without_the_ssl_module() -> None:
    """`--help` goes through the whole import chain of the daemon (cli, daemon, ovs, vici) with
    `ssl` made unimportable."""
    code = (
        "import sys; sys.argv = ['ovs-monitor-ipsec', '--help']\n"
        "from ovs_ipsec import entry\n"
        "try:\n    entry.main()\nexcept SystemExit:\n    pass\n"
        "assert sys.modules['ssl'] is None, 'ssl was imported'\n"
        "import hashlib\n"
        "assert hashlib.sha256(b'').hexdigest().startswith('e3b0c442')\n"
        "assert 'ovs.db.idl' in sys.modules and 'ovs_ipsec.daemon.loop' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--vici" in done.stdout


def test_metrics_without_prometheus_client_says_what_to_install() -> None:
    """prometheus-client is an optional extra: asking for metrics without it exits 1 before
    anything starts, naming the extra and the Debian package."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "sys.argv = ['ovs-monitor-ipsec', '--metrics-address=127.0.0.1:9199', 'unix:/x']\n"
        "from ovs_ipsec import entry\n"
        "entry.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "pip install 'ovs-ipsec[metrics]'" in done.stderr
    assert "python3-prometheus-client" in done.stderr
