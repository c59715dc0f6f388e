#!/bin/bash
# e2e guest, stage 2: runs from the host's /usr (9p + tmpfs overlay) as PID 1. Mount the usual
# pseudo file systems, run the scenario runner under a guest-side timeout with its output straight
# on the serial console (never through a pipe: daemons it starts would keep the pipe open), write
# its exit code to the run directory, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc; mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 run /run; mkdir -p /run/lock /run/netns
# /tmp stays on the root tmpfs: a tmpfs mounted over it would hide a checkout (or a CI clone)
# that stage 1 exported under /tmp at its host path.
mkdir -p /tmp; chmod 1777 /tmp
hostname e2e-guest
ip link set lo up
arg() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
TIMEOUT=$(arg e2e.timeout); TIMEOUT=${TIMEOUT:-900}
PY=$(arg e2e.python)
RUNNER=$(dirname "$0")/scenarios.py
echo "e2e-stage2: start at uptime $(cut -d' ' -f1 /proc/uptime), guest timeout ${TIMEOUT}s"
rm -f /share/rc
timeout -k 10 "$TIMEOUT" "$PY" "$RUNNER" --out /share --scenarios "$(arg e2e.scenarios)" \
  --source "$(arg e2e.source)" --libreswan "$(arg e2e.libreswan)" </dev/null 2>&1
rc=$?
[ $rc = 124 ] && echo "e2e-stage2: GUEST TIMEOUT: the scenario runner did not finish in ${TIMEOUT}s"
echo "e2e-stage2: runner rc=$rc at uptime $(cut -d' ' -f1 /proc/uptime)"
echo $rc > /share/rc
sync
/.bb/busybox poweroff -f
