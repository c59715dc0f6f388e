#!/bin/bash
# Idempotent setup of a fresh Debian (bookworm) machine, as root: the system packages the daemon
# and its tests need, and a venv (.venv) with the package installed in editable mode.
# It never starts or enables a system service.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  openvswitch-switch openvswitch-common openvswitch-ipsec
  charon-systemd strongswan-swanctl strongswan-charon
  libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins
  iproute2 tcpdump nftables iputils-ping openssl procps
  python3-venv python3-pip systemd
  qemu-system-x86 busybox-static cpio kmod strongswan-starter python3-openvswitch
  mmdebstrap
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: root is needed to install Debian packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -q
  # policy-rc.d keeps packages from starting services on hosts that have it; on others the
  # services the packages start (ovsdb-server, strongswan) are not used by the tests.
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ] || ! .venv/bin/python -c "import ovs_ipsec, ovs, vici, cryptography" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/ovs-monitor-ipsec)"
