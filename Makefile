# The two front-door commands: `make demo` and `make test` (each sets up what is missing first).
PY := .venv/bin/python

.PHONY: setup setup-demo test unit lint demo bench clean

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
	$(PY) -m ovs_ipsec.demo

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache

# Full-kernel end-to-end tier (e2e/README.md): boots a Debian kernel under qemu once and runs every
# scenario with real ESP on the wire. `make test` runs it too (tests/e2e). E2E_SCENARIOS=1,5 picks.
.PHONY: e2e
e2e: setup
	$(PY) e2e/run.py
