# Helios — `make run` starts the product on the embedded default; `make test`
# runs the test suite. Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_KEY ?= test-key
DEMO_ADMIN_KEY ?= admin-key

.PHONY: run test test-fast bench bench-growth protos lint typecheck format security-scan check-pins demo demo-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m helios.tools.check_pins
	touch $(STAMP)

run: $(STAMP)
	@echo "Helios on http://127.0.0.1:8080 (gRPC on :9080, metrics on :2112) with the demo API key '$(DEMO_KEY)';"
	@echo "its control plane on http://127.0.0.1:8081 (gRPC on :9081) with the demo admin key '$(DEMO_ADMIN_KEY)'."
	@echo "Try: curl 'http://127.0.0.1:8080/allow?tenant=acme&resource=demo&cost=1&api_key=$(DEMO_KEY)'"
	@HELIOS_ALLOWED_API_KEYS=$(DEMO_KEY) HELIOS_ADMIN_API_KEYS=$(DEMO_ADMIN_KEY) $(BIN)/helios --role all

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/tracing.py
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

# The docker compose demo (deploy/): a STRONG-mode gateway on Redis, the control
# plane on etcd, Prometheus, Grafana and Jaeger. Grafana's admin password is
# made at random into deploy/.env.grafana (ignored by git) on first use.
demo:
	@docker compose version >/dev/null 2>&1 || { \
		echo "make demo needs Docker with the compose plugin ('docker compose'), which is not available here."; \
		echo "Install Docker Engine or Docker Desktop with Compose v2, or use 'make run' to run Helios without Docker."; \
		exit 1; }
	@if [ ! -f deploy/.env.grafana ]; then \
		password=$$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n'); \
		umask 077; \
		sed "s/^GF_SECURITY_ADMIN_PASSWORD=.*/GF_SECURITY_ADMIN_PASSWORD=$$password/" \
			deploy/.env.grafana.example > deploy/.env.grafana; \
		echo "Wrote deploy/.env.grafana with a random Grafana admin password."; \
	fi
	docker compose -f deploy/docker-compose.yml up -d --build
	@echo ""
	@echo "Helios demo is up (every port on 127.0.0.1; keys are DEMO-ONLY):"
	@echo "  gateway        http://127.0.0.1:8080   (gRPC 127.0.0.1:9080, API key 'demo-only-gateway-key')"
	@echo "  control plane  http://127.0.0.1:8081   (gRPC 127.0.0.1:9081, admin key 'demo-only-admin-key')"
	@echo "  metrics        http://127.0.0.1:2112/metrics (gateway), http://127.0.0.1:2113/metrics (control)"
	@echo "  Prometheus     http://127.0.0.1:9090"
	@echo "  Grafana        http://127.0.0.1:3000   (user and password in deploy/.env.grafana)"
	@echo "  Jaeger         http://127.0.0.1:16686"
	@echo "Stop it with 'make demo-down'."

demo-down:
	@docker compose version >/dev/null 2>&1 || { \
		echo "make demo-down needs Docker with the compose plugin ('docker compose'), which is not available here."; \
		exit 1; }
	docker compose -f deploy/docker-compose.yml down --volumes

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
