"""The drop-in path with no OVS_* variables anywhere: Debian's own `ovs-ctl` starts Open vSwitch's
database and then our daemon (as `pip install .` put it, with PyPI's `ovs` library, whose own
defaults are /usr/local/...), exactly as `ovs-ctl --ike-daemon=strongswan start-ovs-ipsec` does
for upstream's monitor. `ovs-appctl -t ovs-monitor-ipsec` finds it, the log is where logrotate
looks, and `ovs-ctl stop-ovs-ipsec` stops it.

It runs in private network and mount namespaces: fresh tmpfs on /run, /var/log/openvswitch and
/etc/openvswitch, and a copy of Open vSwitch's scripts directory with our launcher at the path
ovs-ctl runs (upstream's monitor need not be installed: on Debian 13 it cannot be, beside
charon-systemd), so the host's own Open vSwitch (if any) is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
MONITOR = "/usr/share/openvswitch/scripts/ovs-monitor-ipsec"

SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/openvswitch /var/log/openvswitch /etc/openvswitch
mount -t tmpfs tmpfs /var/log/openvswitch
mount -t tmpfs tmpfs /etc/openvswitch
scripts=$(dirname "$MONITOR")
mkdir /run/scripts
cp -a "$scripts"/. /run/scripts/
printf '#!/bin/sh\nexec %s -m ovs_ipsec "$@"\n' "$PYTHON" > /run/scripts/ovs-monitor-ipsec
chmod 755 /run/scripts/ovs-monitor-ipsec
mount --bind /run/scripts "$scripts"
ip link set lo up
$OVS_CTL start --no-ovs-vswitchd --system-id=random >/dev/null
/usr/sbin/charon-systemd >/dev/null 2>&1 &
charon=$!
trap 'kill $charon 2>/dev/null; $OVS_CTL stop >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do [ -S /run/charon.vici ] && break; sleep 0.1; done
$OVS_CTL --ike-daemon=strongswan start-ovs-ipsec >/dev/null
echo "pidfile=$(cat /var/run/openvswitch/ovs-monitor-ipsec.pid)"
ovs-vsctl --no-wait add-br br0 -- add-port br0 t0 -- set interface t0 type=gre \
    options:remote_ip=192.0.2.9 options:psk=swordfish-dropin
for _ in $(seq 100); do
    swanctl --list-conns 2>/dev/null | grep -q '^ovs-192.0.2.9:' && break
    sleep 0.1
done
echo "--- tunnels/show"
ovs-appctl -t ovs-monitor-ipsec tunnels/show
echo "--- ls"
ls /var/run/openvswitch /var/log/openvswitch
echo "--- stop"
$OVS_CTL stop-ovs-ipsec
ls /var/run/openvswitch
echo "--- log"
cat /var/log/openvswitch/ovs-monitor-ipsec.log
"""


@pytest.mark.skipif(not os.path.exists(OVS_CTL), reason="needs Debian's openvswitch-switch")
def test_ovs_ctl_starts_finds_and_stops_the_daemon_with_no_variables() -> None:
    assert shutil.which("unshare")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHON": sys.executable,
        "OVS_CTL": OVS_CTL,
        "MONITOR": MONITOR,
    }
    done = subprocess.run(
        ["unshare", "--mount", "--net", "--fork", "--propagation", "private",
         "bash", "-c", SCRIPT],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    pid = out.split("pidfile=", 1)[1].split()[0]
    show = out.split("--- tunnels/show", 1)[1].split("--- ls", 1)[0]
    listing = out.split("--- ls", 1)[1].split("--- stop", 1)[0].split()
    after_stop = out.split("--- stop", 1)[1].split("--- log", 1)[0]
    log = out.split("--- log", 1)[1]
    assert "t0" in show and "192.0.2.9" in show
    assert f"ovs-monitor-ipsec.{pid}.ctl" in listing and "ovs-monitor-ipsec.pid" in listing
    assert "ovs-monitor-ipsec.log" in listing
    assert f"Exiting ovs-monitor-ipsec ({pid})" in after_stop
    assert "ovs-monitor-ipsec.pid" not in after_stop
    assert "database unix:/var/run/openvswitch/db.sock" in log and "loaded connection" in log
    assert "swordfish-dropin" not in out + done.stderr
