#!/bin/bash
# One-off full-kernel probe, not a scenario (docs/libreswan-notes.md section 4): boots the e2e guest
# with stage2.sh instead of the scenario runner; pluto 4.10 (h1) and our charon conn (h2) set up a
# real ESP CHILD SA, and the daemon's own fail-closed blocks are put beside pluto's SA policies,
# first at pluto's default priority, then with `priority=366976`. About 2 minutes.
#   e2e/pluto_probe/run.sh        (after `scripts/setup.sh test`; output: the run directory's probe.log)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# The guest sees the checkout (not /opt): a copy of the unpacked Libreswan goes into its cache.
mkdir -p "$repo/.e2e-cache/pluto-probe"
rm -rf "$repo/.e2e-cache/pluto-probe/libreswan"
cp -a /opt/ovs-ipsec-test/libreswan "$repo/.e2e-cache/pluto-probe/libreswan"
"$repo/.venv/bin/python" "$repo/e2e/run.py" -s 0 --keep \
  --kernel-arg "e2e.stage2=$repo/e2e/pluto_probe/stage2.sh" || true  # it misses its scenario
run=$(ls -d "$repo"/.e2e-cache/runs/2*/ | tail -1)
cat "$run/probe.log"
grep -q "^PROBE DONE" "$run/probe.log"
