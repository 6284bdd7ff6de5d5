# p2pm developer targets. `make demo` shows p2pm working; `make test` is what CI runs;
# `make run` starts a single node to play with.
PY ?= .venv/bin/python
PIP ?= $(PY) -m pip
P2PM ?= .venv/bin/p2pm
# The demo node's home. Its ipc socket paths must stay under 107 bytes.
DEMO_HOME ?= $(CURDIR)/.p2pm-demo
# A hung test is killed after this many seconds instead of eating CI's time.
TEST_TIMEOUT ?= 300
# What `make test` runs; narrow it by hand: make test TESTS=tests/integration/test_cli.py
TESTS ?= tests/unit tests/fuzz tests/integration tests/network

.PHONY: setup setup-js test test-unit test-integration fuzz bench demo run stop clean

.venv/bin/python:
	python3 -m venv .venv

# Reinstalls only when the package definition changes.
.venv/.p2pm-installed: .venv/bin/python pyproject.toml setup.py
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

setup: .venv/.p2pm-installed

# js-libp2p, the second libp2p implementation the interop tests run against
# (tests/interop/js, versions pinned by its package-lock.json). Without Node.js those
# tests skip and say so.
JS_DIR = tests/interop/js
# A failed install (no registry) leaves no node_modules, so those tests skip and say so.
$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "make: npm not found: the js-libp2p interop tests will be skipped"; \
	elif (cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error); then \
		touch $@; \
	else rm -rf $(JS_DIR)/node_modules; \
		echo "make: npm ci failed: the js-libp2p interop tests will be skipped" >&2; fi

setup-js: $(JS_DIR)/node_modules/.installed

# pytest exits 5 when it collected nothing: for CI that is a broken setup, not a pass.
PYTEST = $(PY) -m pytest -q -p no:cacheprovider --timeout=$(TEST_TIMEOUT)
define run_pytest
	@$(PYTEST) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests in $(1)" >&2; fi; \
	exit $$rc
endef

test: setup setup-js
	$(call run_pytest,$(TESTS))

test-unit: setup
	$(call run_pytest,tests/unit)

test-integration: setup setup-js
	$(call run_pytest,tests/integration)

# The fuzz tests with thousands of examples per decoder instead of `make test`'s few.
fuzz: setup
	P2PM_FUZZ=long $(PYTEST) --timeout=3600 tests/fuzz

bench: setup
	$(PY) -m tests.bench.run

# A four-node network in a temporary folder plays a checked conversation, then stops.
# DEMO_ARGS=--keep leaves the nodes running.
demo: setup
	$(P2PM) demo $(DEMO_ARGS)

# A demo node with an unprotected identity in ./.p2pm-demo: set up, start, show.
run: setup
	@if [ ! -e "$(DEMO_HOME)/identity.key" ]; then \
		$(P2PM) --home "$(DEMO_HOME)" init --no-passphrase && \
		echo '*' > "$(DEMO_HOME)/.gitignore"; \
	fi
	$(P2PM) --home "$(DEMO_HOME)" up
	$(P2PM) --home "$(DEMO_HOME)" status

stop:
	@if [ -x "$(P2PM)" ] && [ -e "$(DEMO_HOME)" ]; then \
		$(P2PM) --home "$(DEMO_HOME)" down; \
	else echo "no demo node"; fi

clean: stop
	rm -rf .venv build *.egg-info .pytest_cache $(JS_DIR)/node_modules
