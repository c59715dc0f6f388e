#!/bin/bash
# The clean-root tier's package path (issue #13): runs INSIDE a fresh Debian root (bookworm or
# trixie) into which ovs-ipsec_<version>_all.deb has been copied, as root, with /proc, /sys and /dev
# bound and /run, /tmp private.
#
#   package_path.sh [DEB]        DEB defaults to the only ovs-ipsec_*_all.deb in /, /root, /tmp
#                                or beside this script
#   PACKAGE_PATH_LOGS=DIR        also copy each host's logs there (charon, daemon, ovsdb-server)
#
# 1. `apt-get install -y ./ovs-ipsec_*.deb`: apt pulls the Depends, nothing else is installed.
# 2. Two hosts: each a network namespace AND a mount namespace with its own /run (= /var/run),
#    /var/log and /etc/openvswitch, so every daemon uses its DEFAULT paths; joined by a veth.
#    In each: Open vSwitch's database the Debian way (ovs-ctl start --no-ovs-vswitchd), a plain
#    charon-systemd (Debian's configuration, VICI socket at its default path), and our daemon
#    exactly as `ovs-ctl --ike-daemon=strongswan start-ovs-ipsec` runs it. No OVS_* variable is set
#    anywhere.
# 3. A PSK GRE tunnel and a CA-signed Geneve tunnel (remote_name; CA and certificates made with the
#    package's ovs-ipsec-pki), configured with ovs-vsctl only; negotiation started with
#    `swanctl --initiate`; the IKE outcome checked per strongSwan release (this kernel has no ESP,
#    so every CHILD_SA is refused by the kernel):
#      5.9 (bookworm): both IKE_SAs ESTABLISHED on both hosts;
#      6.x (trixie):   the responder refuses the CHILD_SA with N(NO_PROP) and no IDr, so the
#                      initiator deletes the IKE_SA; what is checked is what can be seen: each
#                      responder authenticated its peer (charon's log), and each initiator got
#                      as far as the responder's answer to IKE_AUTH.
# 4. `ovs-appctl -t ovs-monitor-ipsec tunnels/show` answers from the default paths and lists both
#    tunnels; `ovs-ctl stop-ovs-ipsec` stops our daemon.
#
# Prints one PASS/FAIL line per check and exits non-zero if any failed. Cleans up its processes
# and namespaces whatever happens. Every secret stays in files and OVSDB, never on the output.
set -uo pipefail

name=package-path

work=/tmp/package-path
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
t_start=$(date +%s.%N)

# ---- hosts -------------------------------------------------------------------------------------

declare -A HOLDER # host -> PID of the process that holds its namespaces
declare -A CHARON # host -> charon-systemd's PID
HOSTS=(a b)
declare -A ADDR_PSK=([a]=10.77.0.1 [b]=10.77.0.2)
declare -A ADDR_CERT=([a]=10.77.1.1 [b]=10.77.1.2)
declare -A PEER=([a]=b [b]=a)

in_host() { # in_host HOST command...: run in HOST's network and mount namespaces, inside the root
  nsenter --target "${HOLDER[$1]}" --net --mount --root --wd -- "${@:2}"
}

start_host() { # start_host HOST: namespaces with a private /run, /var/log and /etc/openvswitch
  local h=$1
  mkdir -p "$work/$h/etc-openvswitch"
  # The holder mounts, then signals readiness through the shared /tmp and sleeps forever.
  # `--propagation unchanged`: in a chroot, / is no mount point that could be made private; the
  # harness's mount namespace is private already (checked: its /run must not be shared).
  unshare --net --mount --propagation unchanged -- bash -c '
    set -e
    if grep " /run " /proc/self/mountinfo | grep -q "shared:"; then
      echo "package-path: /run is a shared mount: run this in a private mount namespace" >&2
      exit 1
    fi
    mount -t tmpfs -o mode=755 tmpfs /run
    mount -t tmpfs -o mode=755 tmpfs /var/log
    mount --bind "$1" /etc/openvswitch
    mkdir -p /run/openvswitch /run/lock /var/log/openvswitch
    ip link set lo up
    : > "$2"
    exec sleep infinity
  ' _ "$work/$h/etc-openvswitch" "$work/$h/ready" &
  HOLDER[$h]=$!
  wait_for "host $h namespaces" 10 test -e "$work/$h/ready"
}

wait_for() { # wait_for WHAT SECONDS command...: poll until command succeeds
  local what=$1 seconds=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

join_hosts() {
  ip link add eth0 netns "${HOLDER[a]}" type veth peer name eth0 netns "${HOLDER[b]}"
  local h
  for h in "${HOSTS[@]}"; do
    in_host "$h" ip addr add "${ADDR_PSK[$h]}/24" dev eth0
    in_host "$h" ip addr add "${ADDR_CERT[$h]}/24" dev eth0
    in_host "$h" ip link set eth0 up
  done
}

start_charon() { # charon-systemd as a plain process, Debian's configuration plus a file log
  local h=$1
  in_host "$h" env STRONGSWAN_CONF="$work/strongswan.conf" /usr/sbin/charon-systemd \
    > "$work/$h/charon.out" 2>&1 &
  CHARON[$h]=$!
  wait_for "host $h charon's VICI socket" 20 in_host "$h" test -S /var/run/charon.vici
}

# ---- cleanup -----------------------------------------------------------------------------------

keep_logs() { # with PACKAGE_PATH_LOGS=DIR, each host's logs (never keys, PSKs or conf.db) go there
  local h f
  [ -n "${PACKAGE_PATH_LOGS:-}" ] || return 0
  for h in "${HOSTS[@]}"; do
    [ -n "${HOLDER[$h]:-}" ] && kill -0 "${HOLDER[$h]}" 2>/dev/null || continue
    mkdir -p "$PACKAGE_PATH_LOGS/$h"
    for f in /var/log/charon.log /var/log/openvswitch/ovs-monitor-ipsec.log \
      /var/log/openvswitch/ovsdb-server.log; do
      in_host "$h" cat "$f" > "$PACKAGE_PATH_LOGS/$h/$(basename "$f")" 2>/dev/null
    done
    cp "$work/$h"/*.log "$PACKAGE_PATH_LOGS/$h/" 2>/dev/null
  done
  cp "$work/apt.log" "$PACKAGE_PATH_LOGS/" 2>/dev/null
}

cleanup() {
  local h pid ns
  set +e
  keep_logs
  for h in "${HOSTS[@]}"; do
    [ -n "${HOLDER[$h]:-}" ] || continue
    kill -0 "${HOLDER[$h]}" 2>/dev/null || continue
    in_host "$h" /usr/share/openvswitch/scripts/ovs-ctl stop-ovs-ipsec >/dev/null 2>&1
    in_host "$h" /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1
    [ -n "${CHARON[$h]:-}" ] && kill "${CHARON[$h]}" 2>/dev/null
  done
  for h in "${HOSTS[@]}"; do
    [ -n "${CHARON[$h]:-}" ] || continue
    for _ in $(seq 50); do kill -0 "${CHARON[$h]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${CHARON[$h]}" 2>/dev/null
  done
  # Anything else still inside a host's network namespace was started by this script.
  for h in "${HOSTS[@]}"; do
    [ -n "${HOLDER[$h]:-}" ] || continue
    ns=$(readlink "/proc/${HOLDER[$h]}/ns/net" 2>/dev/null) || continue
    for pid in /proc/[0-9]*; do
      pid=${pid#/proc/}
      [ "$pid" = "${HOLDER[$h]}" ] && continue
      [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$ns" ] && kill -9 "$pid" 2>/dev/null
    done
    kill "${HOLDER[$h]}" 2>/dev/null
    wait "${HOLDER[$h]}" 2>/dev/null
  done
}

dump_logs() {
  local h f
  for h in "${HOSTS[@]}"; do
    [ -n "${HOLDER[$h]:-}" ] && kill -0 "${HOLDER[$h]}" 2>/dev/null || continue
    for f in /var/log/openvswitch/ovs-monitor-ipsec.log /var/log/charon.log; do
      echo "---- host $h: $f (last 40 lines)"
      in_host "$h" tail -n 40 "$f" 2>/dev/null
    done
    echo "---- host $h: charon stdout"
    tail -n 20 "$work/$h/charon.out" 2>/dev/null
  done
}

trap cleanup EXIT

# ---- 1. the package ----------------------------------------------------------------------------

find_deb "${1:-}"
ready_fresh_root

# What upstream's monitor leaves behind (its marker first), and an operator's own file beside it:
# the package's postinst must remove the former and keep the latter.
marker='# Generated by ovs-monitor-ipsec...do not modify by hand!'
mkdir -p /etc/strongswan.d
printf '%s\n\n%s\n' "$marker" 'charon {
  plugins {
    kernel-netlink {
      set_proto_port_transport_sa = yes
      xfrm_ack_expires = 10
    }
  }
  load_modular = yes
}' > /etc/strongswan.d/ovs.conf
printf '%s\n\n%s\n' "$marker" '%any 192.0.2.9 : PSK "leftover-placeholder"' > /etc/ipsec.secrets
chmod 644 /etc/strongswan.d/ovs.conf /etc/ipsec.secrets
printf '%s\n' '# the operator'"'"'s own ipsec.conf' 'config setup' > /etc/ipsec.conf
operator_conf_sum=$(sha256sum /etc/ipsec.conf)

log "installing $(basename "$deb") in $(. /etc/os-release && echo "$PRETTY_NAME")"
t0=$(date +%s.%N)
(cd "$(dirname "$deb")" &&
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "./$(basename "$deb")") \
  > "$work/apt.log" 2>&1
rc=$?
t_apt=$(since "$t0")
if [ $rc -ne 0 ]; then
  tail -n 30 "$work/apt.log"
  fail "apt-get install ./$(basename "$deb") (exit $rc)"
  exit 1
fi
pass "apt-get install ./$(basename "$deb") pulled its dependencies (${t_apt}s)"

check "postinst removed upstream's generated /etc/ipsec.secrets (PSKs in clear)" \
  test ! -e /etc/ipsec.secrets
check "postinst removed upstream's generated /etc/strongswan.d/ovs.conf" \
  test ! -e /etc/strongswan.d/ovs.conf
check "postinst kept the operator's own /etc/ipsec.conf" \
  sh -c "[ \"\$(sha256sum /etc/ipsec.conf)\" = '$operator_conf_sum' ]"

unit_link() { [ "$(basename "$(readlink "$1")")" = ovs-monitor-ipsec.service ]; }
check "the unit is enabled the Debian way (multi-user.target.wants)" \
  unit_link /etc/systemd/system/multi-user.target.wants/ovs-monitor-ipsec.service
check "openvswitch-ipsec.service is an alias of ovs-monitor-ipsec.service" \
  unit_link /etc/systemd/system/openvswitch-ipsec.service

sw_version=$(dpkg-query -W -f='${Version}' charon-systemd)
ovs_version=$(dpkg-query -W -f='${Version}' openvswitch-switch)
py_version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log "strongSwan $sw_version, Open vSwitch $ovs_version, Python $py_version"

check "ovs-monitor-ipsec --help" sh -c '/usr/bin/ovs-monitor-ipsec --help > /dev/null'
check "ovs-ctl's path runs our daemon (--help)" sh -c \
  '/usr/share/openvswitch/scripts/ovs-monitor-ipsec --help | grep -q -- --vici'
check "the vendored vici module imports" python3 -c 'import vici, vici.protocol'

# ---- 2. two hosts ------------------------------------------------------------------------------

cat > "$work/strongswan.conf" <<EOF
# Debian's configuration (plugins from strongswan.d), plus a file log per host (no journald here).
include /etc/strongswan.conf
charon {
  filelog {
    package-path {
      path = /var/log/charon.log
      time_format = %T
      default = 1
      ike = 2
      cfg = 2
      knl = 2
      flush_line = yes
    }
  }
}
charon-systemd {
  journal {
    default = -1
  }
}
EOF

t_scenario=$(date +%s.%N)
for h in "${HOSTS[@]}"; do start_host "$h" || { fail "host $h namespaces"; exit 1; }; done
join_hosts || { fail "veth between the hosts"; exit 1; }

for h in "${HOSTS[@]}"; do
  if in_host "$h" /usr/share/openvswitch/scripts/ovs-ctl start --no-ovs-vswitchd \
    --system-id=random > "$work/$h/ovs-ctl-start.log" 2>&1; then
    pass "host $h: ovs-ctl start --no-ovs-vswitchd"
  else
    cat "$work/$h/ovs-ctl-start.log"
    fail "host $h: ovs-ctl start --no-ovs-vswitchd"
  fi
  if start_charon "$h"; then pass "host $h: charon-systemd up (VICI at /var/run/charon.vici)"; else
    cat "$work/$h/charon.out"
    fail "host $h: charon-systemd"
  fi
  if in_host "$h" env | grep -q '^OVS_'; then fail "host $h: an OVS_* variable is set"; fi
  if in_host "$h" /usr/share/openvswitch/scripts/ovs-ctl --ike-daemon=strongswan start-ovs-ipsec \
    > "$work/$h/start-ovs-ipsec.log" 2>&1; then
    pass "host $h: ovs-ctl --ike-daemon=strongswan start-ovs-ipsec"
  else
    cat "$work/$h/start-ovs-ipsec.log"
    fail "host $h: ovs-ctl --ike-daemon=strongswan start-ovs-ipsec"
  fi
done
if [ $failures -ne 0 ]; then
  dump_logs
  echo "FAIL package path: $failures check(s) failed before the tunnels"
  exit 1
fi

# ---- 3. tunnels --------------------------------------------------------------------------------

pki=$work/pki
mkdir -p "$pki"
check "ovs-ipsec-pki: a CA and two host certificates" sh -c "
  ovs-ipsec-pki --dir '$pki' init > /dev/null &&
  ovs-ipsec-pki --dir '$pki' host host-a > /dev/null &&
  ovs-ipsec-pki --dir '$pki' host host-b > /dev/null"
umask 077
psk=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
umask 022
for h in "${HOSTS[@]}"; do
  p=${PEER[$h]}
  install -m 644 "$pki/cacert.pem" "$pki/host-$h-cert.pem" "$work/$h/etc-openvswitch/"
  install -m 600 "$pki/host-$h-privkey.pem" "$work/$h/etc-openvswitch/"
  # --no-wait: no ovs-vswitchd here to acknowledge the configuration.
  if in_host "$h" ovs-vsctl --no-wait add-br br0 \
    -- set Open_vSwitch . "other_config:certificate=/etc/openvswitch/host-$h-cert.pem" \
    "other_config:private_key=/etc/openvswitch/host-$h-privkey.pem" \
    other_config:ca_cert=/etc/openvswitch/cacert.pem \
    -- add-port br0 gre0 -- set interface gre0 type=gre \
    options:local_ip="${ADDR_PSK[$h]}" options:remote_ip="${ADDR_PSK[$p]}" options:psk="$psk" \
    -- add-port br0 gnv0 -- set interface gnv0 type=geneve \
    options:local_ip="${ADDR_CERT[$h]}" options:remote_ip="${ADDR_CERT[$p]}" \
    options:remote_name="host-$p" > "$work/$h/ovs-vsctl.log" 2>&1; then
    pass "host $h: PSK GRE and CA-signed Geneve tunnels configured with ovs-vsctl"
  else
    fail "host $h: ovs-vsctl (see $work/$h/ovs-vsctl.log)"
  fi
done

tunnels_loaded() { # both tunnels listed by our daemon, through ovs-appctl's default paths
  local out
  out=$(in_host "$1" ovs-appctl -t ovs-monitor-ipsec tunnels/show 2>&1) || return 1
  grep -q gre0 <<< "$out" && grep -q gnv0 <<< "$out"
}
for h in "${HOSTS[@]}"; do
  if wait_for "host $h: both tunnels in tunnels/show" 30 tunnels_loaded "$h"; then
    pass "host $h: ovs-appctl -t ovs-monitor-ipsec tunnels/show lists gre0 and gnv0"
  else
    in_host "$h" ovs-appctl -t ovs-monitor-ipsec tunnels/show
    fail "host $h: tunnels/show"
  fi
done

# Host a initiates the PSK tunnel, host b the certificate one: each side plays both roles.
in_host a swanctl --initiate --ike "ovs-${ADDR_PSK[b]}" --child ovs-gre0 --timeout 20 \
  > "$work/a/initiate.log" 2>&1
in_host b swanctl --initiate --ike "ovs-${ADDR_CERT[a]}" --child ovs-gnv0-out --timeout 20 \
  > "$work/b/initiate.log" 2>&1

ike_established() { # ike_established HOST CONN
  in_host "$1" swanctl --list-sas --ike "$2" 2>/dev/null | grep -q "ESTABLISHED"
}
responder_authenticated() { # responder_authenticated HOST PEER-ID: charon's log says so
  in_host "$1" grep -q "authentication of '$2' with .* successful" /var/log/charon.log
}

case $sw_version in
  5.*)
    # strongSwan 5.9 (bookworm): the IKE_SA stays up although the kernel refuses the CHILD_SA.
    for h in "${HOSTS[@]}"; do
      p=${PEER[$h]}
      check "host $h: PSK IKE_SA ovs-${ADDR_PSK[$p]} ESTABLISHED" \
        wait_for "PSK IKE_SA on $h" 20 ike_established "$h" "ovs-${ADDR_PSK[$p]}"
      check "host $h: CA-signed IKE_SA ovs-${ADDR_CERT[$p]} ESTABLISHED" \
        wait_for "CA IKE_SA on $h" 20 ike_established "$h" "ovs-${ADDR_CERT[$p]}"
    done
    ;;
  *)
    # strongSwan 6 (trixie): the responder authenticates the initiator, then answers IKE_AUTH
    # with N(NO_PROP) and no IDr as the kernel refuses the CHILD_SA, and the initiator deletes
    # the IKE_SA. Checked: each responder's successful authentication of its peer, and that
    # each initiator received the answer to its IKE_AUTH (not a timeout).
    check "host b (responder): authenticated host a's PSK (${ADDR_PSK[a]})" \
      wait_for "b authenticates a" 20 responder_authenticated b "${ADDR_PSK[a]}"
    check "host a (responder): authenticated host b's certificate (host-b)" \
      wait_for "a authenticates b" 20 responder_authenticated a "host-b"
    for h in "${HOSTS[@]}"; do
      check "host $h (initiator): IKE_AUTH answered" \
        in_host "$h" grep -q "parsed IKE_AUTH response" /var/log/charon.log
      if in_host "$h" grep -q "IDr payload missing" /var/log/charon.log; then
        log "host $h (initiator): 'IDr payload missing' (strongSwan 6 on a kernel without ESP)"
      fi
    done
    ;;
esac

# ---- 4. stop -----------------------------------------------------------------------------------

for h in "${HOSTS[@]}"; do
  pid=$(in_host "$h" cat /var/run/openvswitch/ovs-monitor-ipsec.pid 2>/dev/null)
  if [ -z "$pid" ]; then
    fail "host $h: no pidfile at /var/run/openvswitch/ovs-monitor-ipsec.pid"
    continue
  fi
  in_host "$h" /usr/share/openvswitch/scripts/ovs-ctl stop-ovs-ipsec > "$work/$h/stop.log" 2>&1
  # The pidfile names the PID inside the host, which shares the root's PID namespace.
  check "host $h: ovs-ctl stop-ovs-ipsec stopped our daemon (pid $pid)" \
    wait_for "pid $pid to exit" 15 sh -c "! kill -0 $pid"
done

[ $failures -eq 0 ] || dump_logs
log "apt install ${t_apt}s, scenario $(since "$t_scenario")s, total $(since "$t_start")s"
if [ $failures -eq 0 ]; then
  echo "PASS package path ($(. /etc/os-release && echo "$VERSION_CODENAME"), strongSwan $sw_version)"
  exit 0
fi
echo "FAIL package path: $failures check(s) failed"
exit 1
