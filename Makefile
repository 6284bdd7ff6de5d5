# p2pm developer targets. `make test` is what CI runs.
PY ?= .venv/bin/python
PIP ?= $(PY) -m pip

.PHONY: setup test test-unit bench demo clean

.venv/bin/python:
	python3 -m venv .venv

setup: .venv/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(PY) -m tests.bench.run

clean:
	rm -rf .venv build *.egg-info .pytest_cache
