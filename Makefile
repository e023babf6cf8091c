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

.PHONY: help install tools run down test test-unit test-faults lint bench schemas k8s-render prometheusrule clean

help:
	@echo "make run    - start Kafka, Postgres and the services locally (no Docker needed)"
	@echo "make down   - stop everything make run started"
	@echo "make test   - the whole suite against real Kafka and Postgres"
	@echo "make bench  - the benchmarks, each against a ceiling measured in the same run"
	@echo "make lint   - ruff and mypy"
	@echo "make test-faults     - the three-broker fault test (SIGKILL one broker under load)"
	@echo "make k8s-render OUT=DIR - the Kubernetes manifests of both overlays, rendered into DIR"

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
	@[ ! -d .local/bench ] || $(UV) run synergy infra down --name bench

# kustomize (go install) and promtool (Debian's prometheus package), for the offline ops checks.
tools:
	@bash deploy/tools/ensure-tools.sh

test: install tools
	$(UV) run pytest -q -p no:cacheprovider --durations=25

# The fault tests alone: a three-node KRaft cluster, ingest under 200 events/s, one broker SIGKILLed
# (about two minutes; `make test` runs them too).
test-faults: install
	$(UV) run pytest -q -p no:cacheprovider -m faults

test-unit: install
	$(UV) run pytest -q tests/unit

lint: install
	$(UV) run ruff check .
	$(UV) run mypy libs/schemas/src libs/common/src libs/streaming/src services/ingest/src services/achievements/src \
		services/cio-sink/src services/insights/src services/marketing/src services/dispatcher/src services/analytics/src deploy/tools

# What KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL do not name, the benchmarks get of their own (.local/bench),
# apart from `make run`'s: the marketing bench reads its Postgres's CPU from the whole server.
BENCH_KAFKA_PORT := 49092
BENCH_PG_PORT := 45432
BENCH_ENV := KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$(BENCH_KAFKA_PORT)} \
	DATABASE_URL=$${DATABASE_URL:-postgresql://synergy:synergy@127.0.0.1:$(BENCH_PG_PORT)/synergy}

bench: install
	@set -e; only=""; [ -z "$${KAFKA_BOOTSTRAP_SERVERS:-}" ] || only="--only postgres"; \
	[ -z "$${DATABASE_URL:-}" ] || only="--only kafka"; \
	if [ -z "$${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "$${DATABASE_URL:-}" ]; then \
		$(UV) run synergy infra up --name bench --kafka-port $(BENCH_KAFKA_PORT) \
			--controller-port $$(( $(BENCH_KAFKA_PORT) + 1 )) --pg-port $(BENCH_PG_PORT) $$only; fi; \
	if [ -z "$${DATABASE_URL:-}" ]; then $(BENCH_ENV) $(UV) run synergy db migrate; fi
	@set -e; for bench in tests/bench/bench_*.py; do \
		module=$$(basename $$bench .py); echo "== $$module"; $(BENCH_ENV) $(UV) run python -m tests.bench.$$module; done

OUT ?= .local/k8s
k8s-render: install
	@bash deploy/tools/ensure-tools.sh kustomize
	@mkdir -p $(OUT)
	@for overlay in local production; do \
		.local/tools/go/bin/kustomize build deploy/k8s/overlays/$$overlay > $(OUT)/$$overlay.yaml || exit 1; \
		echo "$(OUT)/$$overlay.yaml"; done

prometheusrule: install
	$(UV) run python deploy/tools/prometheusrule.py

schemas: install
	$(UV) run synergy schemas export libs/schemas/jsonschema

clean:
	rm -rf .local
