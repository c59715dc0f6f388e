#!/bin/bash
# Stage 2 of the pluto probe (run.sh): the pseudo file systems as e2e/guest/stage2.sh, Libreswan
# copied into the guest's /usr (a tmpfs overlay: the host is untouched), probe.py, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc; mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 run /run; mkdir -p /run/lock /run/netns
mkdir -p /tmp; chmod 1777 /tmp
ip link set lo up
arg() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
here=$(dirname "$0")
libreswan=$here/../../.e2e-cache/pluto-probe/libreswan
mkdir -p /usr/libexec
cp -a "$libreswan/usr/libexec/ipsec" /usr/libexec/
cp "$libreswan/usr/sbin/ipsec" /usr/sbin/ipsec
OVS_IPSEC_LIBRESWAN_ROOT=/ timeout -k 5 150 "$(arg e2e.python)" "$here/probe.py" \
  >/share/probe.log 2>&1
echo "probe rc=$?" >>/share/probe.log
echo 0 >/share/rc
sync
/.bb/busybox poweroff -f
