#!/bin/bash
# What the clean-root guest scripts share (sourced, never run): a clean environment, PASS/FAIL
# bookkeeping, finding the package, and readying a fresh root for apt. The sourcing script sets
# `name` (its log prefix) and `work` (its scratch directory) first.

for var in $(compgen -e); do
  case $var in OVS_*) unset "$var" ;; esac
done
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
failures=0

log() { printf '%s\n' "$name: $*"; }
pass() { printf 'PASS %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*"
  failures=$((failures + 1))
}
check() { # check "what" command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
since() { # since START: seconds elapsed, one decimal (no bc in a minimal root)
  python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"
}

find_deb() { # find_deb [DEB]: sets deb to the one ovs-ipsec_*_all.deb given or found
  local found=() f
  if [ -n "${1:-}" ]; then
    found=("$1")
  else
    shopt -s nullglob
    for f in /ovs-ipsec_*_all.deb /root/ovs-ipsec_*_all.deb /tmp/ovs-ipsec_*_all.deb \
      "$here"/ovs-ipsec_*_all.deb; do
      f=$(realpath "$f")
      [[ " ${found[*]} " == *" $f "* ]] || found+=("$f")
    done
    shopt -u nullglob
  fi
  if [ ${#found[@]} -ne 1 ] || [ ! -f "${found[0]}" ]; then
    echo "$name: expected exactly one ovs-ipsec_*_all.deb, found: ${found[*]:-none}" >&2
    exit 2
  fi
  deb=$(cd "$(dirname "${found[0]}")" && pwd)/$(basename "${found[0]}")
}

ready_fresh_root() { # refuse a root that has the package; package lists; no service starts
  if dpkg-query -W -f='${Status}' ovs-ipsec 2>/dev/null | grep -q installed; then
    echo "$name: ovs-ipsec is installed already: this needs a fresh root" >&2
    exit 2
  fi
  rm -rf "$work"
  mkdir -p "$work"
  # mmdebstrap leaves no package lists behind.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' > /dev/null; then
    apt-get -o DPkg::Lock::Timeout=900 update -q > "$work/apt-update.log" 2>&1 ||
      { cat "$work/apt-update.log"; echo "FAIL apt-get update"; exit 1; }
  fi
  # No package may start a service in this root (policy-rc.d is the Debian way to say so).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
}
