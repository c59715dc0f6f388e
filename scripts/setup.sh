#!/bin/bash
# Idempotent setup of a fresh Debian 12 (bookworm) or 13 (trixie) machine, as root: the system
# packages a profile needs, and a venv (.venv) with the package installed in editable mode.
#
#   scripts/setup.sh [demo|test]     (default: test)
#
#   demo  what the daemon needs at run time, and what `make demo` needs besides (namespaces).
#   test  demo, plus what the test suite needs: capture and firewall tools, the full-kernel tier
#         (qemu, a static busybox, cpio, kmod), OVN (ovn-central, ovn-host: tests/integration/
#         test_ovn.py runs its daemons in namespaces) and, where the release can install it beside
#         charon-systemd, upstream's monitor for the comparisons (bookworm only: on trixie
#         charon-systemd conflicts with strongswan-charon, whose charon upstream's starter runs);
#         and Libreswan, unpacked into /opt/ovs-ipsec-test/libreswan (it conflicts with strongSwan
#         as a package; see below).
#
# It never starts a system service (a policy-rc.d refuses them while it installs), and the OVN
# units it installs stay disabled at boot. Quick when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-test}
case "$profile" in
  demo | test) ;;
  *)
    echo "usage: $0 [demo|test]" >&2
    exit 2
    ;;
esac

release=unknown
if [ -r /etc/os-release ]; then
  release=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
fi

# The daemon: ovsdb and its tools, charon-systemd with VICI (swanctl ships the vici plugin) and
# charon's standard plugins (bookworm: openssl, gcm; trixie: gcm, aesni; openssl is in
# libstrongswan there). The demo besides: ip netns, a venv.
DEMO_PACKAGES=(
  openvswitch-switch openvswitch-common
  charon-systemd strongswan-swanctl libstrongswan-standard-plugins
  iproute2 procps python3-venv
)
TEST_PACKAGES=(
  tcpdump nftables iputils-ping openssl systemd
  qemu-system-x86 busybox-static cpio kmod
  mmdebstrap
  ovn-central ovn-host
)
# Units that must never run on a test machine: the tests start OVN's daemons in namespaces, while
# ovn-central's would serve OVN's databases on TCP 6641/6642 and ovn-host's ovn-controller would
# take over the machine's own Open vSwitch (br-int, tunnels to every chassis it hears of).
NEVER_START=(ovn-central.service ovn-host.service)
case "$release" in
  bookworm)
    # Upstream's monitor for the comparisons (interop, bench): starter and its charon, and
    # Debian's Python ovs library for upstream's script. The extra plugins as the suite ran.
    TEST_PACKAGES+=(
      openvswitch-ipsec strongswan-starter strongswan-charon python3-openvswitch
      libcharon-extra-plugins libstrongswan-extra-plugins
    )
    ;;
  trixie)
    # Not installable: strongswan-charon (Conflicts: charon-systemd), so no upstream monitor.
    # Not wanted: libstrongswan-extra-plugins. 6.0 moved aes, sha1, sha2, hmac, kdf, gmp and
    # curve25519 there, all of which openssl (in libstrongswan) covers; and with it installed,
    # swanctl's default plugin set hangs at start-up in the full-kernel guest.
    ;;
  *)
    echo "setup: not Debian bookworm or trixie (VERSION_CODENAME=$release); trying the" \
      "bookworm-and-trixie common packages only" >&2
    ;;
esac

packages=("${DEMO_PACKAGES[@]}")
if [ "$profile" = test ]; then
  packages+=("${TEST_PACKAGES[@]}")
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "setup ($profile, $release): installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: root is needed to install Debian packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -q
  # No package may start a service (Debian's policy-rc.d protocol): a machine that has a
  # policy-rc.d keeps its own, on others one that refuses everything is in place for the install.
  guard=/usr/sbin/policy-rc.d
  if [ ! -e "$guard" ]; then
    trap 'rm -f "$guard"' EXIT
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts during its install\nexit 101\n' >"$guard"
    chmod 0755 "$guard"
  else
    guard=
  fi
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$guard" ]; then
    rm -f "$guard"
    trap - EXIT
  fi
  # Their packages enable them at boot; disabled here, only where this run installed them.
  installed_now=" ${missing[*]} "
  for unit in "${NEVER_START[@]}"; do
    if [[ $installed_now == *" ${unit%.service} "* ]] && command -v systemctl >/dev/null; then
      systemctl disable --quiet "$unit" 2>/dev/null || true
    fi
  done
fi

# Libreswan beside strongSwan (test profile). Debian's libreswan (bookworm 4.10, trixie 5.x)
# Conflicts: with strongswan-libcharon and strongswan-starter, yet the tests run pluto and charon
# side by side, in different namespaces. So the package's dependencies come from apt as usual and
# the package itself is unpacked into a private root that the lab runs pluto from
# (ovs_ipsec/tools/pluto_lab.py). Left out of its Depends: `host` and `iptables`, which only
# `ipsec` subcommands and updown options the tests do not use call. The NSS tools (certutil,
# pk12util) come with its Depends (libnss3-tools).
LIBRESWAN_ROOT=/opt/ovs-ipsec-test/libreswan
libreswan_ready() {
  [ -s "$LIBRESWAN_ROOT/.deb-version" ] &&
    "$LIBRESWAN_ROOT/usr/libexec/ipsec/pluto" --version >/dev/null 2>&1 &&
    "$LIBRESWAN_ROOT/usr/libexec/ipsec/whack" --version >/dev/null 2>&1 &&
    command -v certutil >/dev/null && command -v pk12util >/dev/null
}
install_libreswan() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: root is needed to install Libreswan into $LIBRESWAN_ROOT" >&2
    exit 1
  fi
  echo "setup ($profile, $release): unpacking libreswan into $LIBRESWAN_ROOT"
  export DEBIAN_FRONTEND=noninteractive
  local deb depends
  # Global: the EXIT trap runs after this function has returned.
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  # (apt warns that it downloads as root: _apt cannot write to a root-only directory.)
  if ! (cd "$download" && apt-get -q download libreswan >/dev/null 2>&1); then
    apt-get -o DPkg::Lock::Timeout=900 update -q
    if ! (cd "$download" && apt-get -q download libreswan); then
      if [ "$release" = unknown ]; then
        echo "setup: no libreswan package here; the pluto tests will skip" >&2
        return 0
      fi
      echo "setup: apt-get download libreswan failed" >&2
      exit 1
    fi
  fi
  deb=$(echo "$download"/libreswan_*.deb)
  depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//' |
    grep -Ev '^(host|iptables)( |$)' | paste -sd, | sed 's/,/, /g')
  apt-get -o DPkg::Lock::Timeout=900 satisfy -y -q --no-install-recommends "$depends"
  rm -rf "$LIBRESWAN_ROOT.new"
  mkdir -p "$LIBRESWAN_ROOT.new"
  dpkg-deb -x "$deb" "$LIBRESWAN_ROOT.new"
  dpkg-deb -f "$deb" Version >"$LIBRESWAN_ROOT.new/.deb-version"
  rm -rf "$LIBRESWAN_ROOT"
  mv "$LIBRESWAN_ROOT.new" "$LIBRESWAN_ROOT"
  if ! libreswan_ready; then
    echo "setup: $LIBRESWAN_ROOT/usr/libexec/ipsec/pluto does not run" >&2
    exit 1
  fi
}
if [ "$profile" = test ] && ! libreswan_ready; then
  install_libreswan
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
constraints=()
inputs=(pyproject.toml)
if [ -e constraints.txt ]; then
  constraints=(-c constraints.txt)
  inputs+=(constraints.txt)
fi
stamp=.venv/.installed-$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ] || ! .venv/bin/python -c "import ovs_ipsec, ovs, vici, cryptography" 2>/dev/null; then
  # pip and the build backend talk a lot (setuptools warns about every editable install): their
  # words go to a log, shown only if the install fails.
  log=.venv/pip-install.log
  echo "setup ($profile, $release): installing the Python packages into .venv (log: $log)"
  if ! { .venv/bin/pip install -q --upgrade pip &&
    .venv/bin/pip install -q "${constraints[@]}" -e '.[test]'; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip failed (above, and in $log)" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup ($profile, $release): ready (.venv/bin/ovs-monitor-ipsec)"
