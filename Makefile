# Helios — `make run` starts the product on the embedded default; `make test`
# runs the test suite. Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_KEY ?= test-key

.PHONY: run test test-fast bench bench-growth protos lint typecheck format security-scan check-pins demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m helios.tools.check_pins
	touch $(STAMP)

run: $(STAMP)
	@echo "Helios on http://127.0.0.1:8080 (gRPC on :9080, metrics on :2112) with the demo API key '$(DEMO_KEY)'."
	@echo "Try: curl 'http://127.0.0.1:8080/allow?tenant=acme&resource=demo&cost=1&api_key=$(DEMO_KEY)'"
	HELIOS_ALLOWED_API_KEYS=$(DEMO_KEY) $(BIN)/helios --role all

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/grpc_bench.py
	$(BIN)/python bench/redis_client.py
	$(BIN)/python bench/core.py

# About 80 s: fills the table with a million live buckets over HTTP first.
bench-growth: $(STAMP)
	$(BIN)/python bench/growth.py

lint: $(STAMP)
	$(BIN)/ruff check helios tests bench loadtest
	$(BIN)/ruff format --check helios tests bench loadtest

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format helios tests bench loadtest
	$(BIN)/ruff check --fix helios tests bench loadtest

protos: $(STAMP)
	$(BIN)/python -m helios.tools.generate_protos

check-pins: $(STAMP)
	$(BIN)/python -m helios.tools.check_pins

# Bandit's rules, as ruff runs them (pyproject.toml says which are waived and why).
security-scan: $(STAMP)
	$(BIN)/ruff check --select S helios

demo:
	@echo "The docker compose demo (deploy/) is not built yet; 'make run' runs Helios locally."
	@exit 1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
