"""Record upstream's own `tunnels/show` output for test_render's golden layout test.

Runs Open vSwitch's ovs-monitor-ipsec code itself (Debian 12's openvswitch-ipsec, 3.1.0; its
`IPsecTunnel.show` and templates are the same through 3.7 / main d6a632a9b): its `XFRM` and
`StrongSwanHelper` parse the kernel and `ipsec status` listings in this directory (through a
fake `ip` and `ipsec` under a root prefix, as upstream's --root-prefix allows), and its
`IPsecTunnel` renders the tunnel `gre1` (type gre, remote_ip 10.0.0.2, psk, ipsec_forceencaps=yes,
ofport 1, CFM off). No daemon, OVSDB or charon runs; the result is upstream's text for them.

    cd tests/unit/data/upstream_show && /usr/bin/python3 record.py > tunnels_show.txt
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import stat
import sys
import tempfile
import types
from pathlib import Path

UPSTREAM = "/usr/share/openvswitch/scripts/ovs-monitor-ipsec"
HERE = Path(__file__).resolve().parent
PSK = "swordfish"


def fake_command(path: Path, listing: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec cat {listing}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def main() -> None:
    loader = importlib.machinery.SourceFileLoader("upstream_monitor", UPSTREAM)
    spec = importlib.util.spec_from_loader("upstream_monitor", loader)
    assert spec is not None
    upstream = importlib.util.module_from_spec(spec)
    loader.exec_module(upstream)
    with tempfile.TemporaryDirectory() as root:
        fake_command(Path(root, "usr/sbin/ipsec"), HERE / "ipsec_status.txt")
        # One `ip` for both listings: the word after `xfrm` picks the file.
        Path(root, "sbin").mkdir()
        Path(root, "sbin/ip").write_text(
            "#!/bin/sh\n"
            f'[ "$2" = policy ] && exec cat {HERE / "ip_xfrm_policy.txt"}\n'
            f"exec cat {HERE / 'ip_xfrm_state.txt'}\n"
        )
        os.chmod(Path(root, "sbin/ip"), 0o755)
        xfrm = upstream.XFRM(root)
        helper = upstream.StrongSwanHelper(root)
        upstream.monitor = types.SimpleNamespace(
            conf={
                "skb_mark": None,
                "pki": {"certificate": None, "private_key": None, "ca_cert": None,
                        "local_name": None},
            },
            _get_cn_from_cert=lambda path: None,
        )  # fmt: skip
        row = types.SimpleNamespace(
            type="gre",
            options={"remote_ip": "10.0.0.2", "psk": PSK, "ipsec_forceencaps": "yes"},
            cfm_fault=[],
            ofport=[1],
        )
        tunnel = upstream.IPsecTunnel("gre1", row)
        text = tunnel.show(xfrm.get_policies(), xfrm.get_securities(), helper.get_active_conns())
    # The PSK is upstream's to print in clear; the golden file keeps it (it is a test value).
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
