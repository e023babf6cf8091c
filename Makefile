# Synergy Engine. `make run` starts everything locally; `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV ?= $(shell command -v uv 2>/dev/null || echo ".local/tools/bin/uv")
RUN_ENV := KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
	DATABASE_URL=postgresql://synergy:synergy@127.0.0.1:5432/synergy
STATE := .local/run
# Trust the machine's certificate store (a registry behind a TLS-inspecting proxy stays reachable).
export UV_SYSTEM_CERTS := 1

.PHONY: help install run down test test-unit lint bench schemas clean

help:
	@echo "make run    - start Kafka, Postgres and the services locally (no Docker needed)"
	@echo "make down   - stop everything make run started"
	@echo "make test   - the whole suite against real Kafka and Postgres"
	@echo "make bench  - the benchmarks, each against a ceiling measured in the same run"
	@echo "make lint   - ruff and mypy"

.local/tools/bin/uv:
	python3 -m venv .local/tools
	.local/tools/bin/pip install --quiet uv==$(UV_VERSION)

install: $(UV)
	$(UV) sync --frozen

$(STATE)/encryption.key: | install
	@mkdir -p $(STATE)
	@$(UV) run synergy keys generate > $@

run: install $(STATE)/encryption.key
	@mkdir -p $(STATE)
	$(UV) run synergy infra up --name run --kafka-port 9092 --pg-port 5432
	$(RUN_ENV) $(UV) run synergy db migrate
	@SYNERGY_ENCRYPTION_KEY=$$(cat $(STATE)/encryption.key) bash deploy/local/run-services.sh

down:
	-bash deploy/local/run-services.sh stop
	$(UV) run synergy infra down --name run

test: install
	$(UV) run pytest -q -p no:cacheprovider

test-unit: install
	$(UV) run pytest -q tests/unit

lint: install
	$(UV) run ruff check .
	$(UV) run mypy libs/schemas/src libs/common/src libs/streaming/src services/ingest/src services/achievements/src \
		services/cio-sink/src services/insights/src services/marketing/src

bench: install
	@set -e; for bench in tests/bench/bench_*.py; do \
		module=$$(basename $$bench .py); echo "== $$module"; $(UV) run python -m tests.bench.$$module; done

schemas: install
	$(UV) run synergy schemas export libs/schemas/jsonschema

clean:
	rm -rf .local
