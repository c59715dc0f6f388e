# The two front-door commands: `make demo` and `make test` (each sets up what is missing first).
PY := .venv/bin/python

.PHONY: setup setup-demo test unit lint demo bench clean deb

# `make setup` installs what the tests need (scripts/setup.sh test); `make demo` only what the
# daemon and the demo need (scripts/setup.sh demo).
setup:
	@bash scripts/setup.sh test

setup-demo:
	@bash scripts/setup.sh demo

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	.venv/bin/ruff check ovs_ipsec tests bench e2e
	.venv/bin/ruff format --check ovs_ipsec tests bench e2e

demo: setup-demo
	$(PY) -m ovs_ipsec.tools.demo

# bench/README.md. Issue 14's final measurement (30-45 min, on a quiet machine):
#   make bench BENCH_ARGS="--sizes 1000 5000 --repeat 3 --vsctl-n 1000 5000 --upstream-timeout 300 --json /tmp/bench.json"
# Before and after in one run: BENCH_ARGS="--compare 6f05b94 tree --sizes 1000 5000 ..."
BENCH_ARGS ?=
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache

# dist/ovs-ipsec_<version>_all.deb (docs/debian-package.md); installs its build dependencies.
deb:
	@bash scripts/build-deb.sh

# Full-kernel end-to-end tier (e2e/README.md): boots a Debian kernel under qemu once and runs every
# scenario with real ESP on the wire. `make test` runs it too (tests/e2e). E2E_SCENARIOS=1,5 picks.
.PHONY: e2e
e2e: setup
	$(PY) e2e/run.py

# The full-kernel basics on Debian 13's userland (strongSwan 6.0, OVS 3.5, Python 3.13), from a
# cached mmdebstrap root (e2e/userland.py); `make test` runs it too.
.PHONY: e2e-trixie
e2e-trixie: setup
	$(PY) e2e/run.py --userland trixie
