# The two commands: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck bench clean redis-server chromium

setup: $(STAMP) redis-server chromium

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "circus-events needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# redis-server comes from the system packages; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "redis-server is missing: installing it with apt-get"; \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "cannot install redis-server here: install it (apt-get install redis-server) and retry"; exit 1; \
		fi; }

# Headless Chromium (Debian's package) for the live page's browser test.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "chromium is missing: installing it with apt-get"; \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "cannot install chromium here: install it (apt-get install chromium) and retry"; exit 1; \
		fi; }

demo: setup
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check circus_events tests benchmarks examples
	$(VENV)/bin/ruff format --check circus_events tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_protocol_*.py tests/test_stream_cursor.py \
		--cov=circus_events.protocol --cov=circus_events.bridge.stream_cursor \
		--cov-branch --cov-fail-under=100 --cov-report=term-missing:skip-covered
	$(PY) -m pytest -q -p no:cacheprovider tests/test_client_core.py tests/test_client_pure.py \
		--cov=circus_events._client.core --cov=circus_events._client.publishing \
		--cov=circus_events._client.batch --cov=circus_events._client.queues \
		--cov=circus_events._client.plans --cov=circus_events._client.limits \
		--cov=circus_events._client.confirms --cov=circus_events._client.credit \
		--cov-branch --cov-fail-under=100 --cov-report=term-missing:skip-covered

bench: setup
	$(VENV)/bin/circus-events bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
