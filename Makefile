# Entry points; each first runs scripts/bootstrap.sh (installs what is missing).
#   make test  [PYTEST_ARGS="-k auth -x"]   the pytest suites against a local stack
#   make gate  [GATE_ARGS="--profile smoke"] the release gate (default: the sla profile, 1000 users)
#   make benchmark [BENCH_ARGS=...]        sla + capacity profiles, the performance figures (~12 min on 2 cores)
#   make lint                               ruff check + ruff format --check
#   make up    [UP_ARGS="--json stack.json"] the local stack until Ctrl-C
#   make dashboards                         rewrite compose/grafana/dashboards/*.json

SHELL := /usr/bin/env bash
VENV ?= .venv
PYTEST_ARGS ?=
UP_ARGS ?=
GATE_ARGS ?= --profile sla
BENCH_ARGS ?=

.PHONY: bootstrap test gate benchmark lint up dashboards

bootstrap:
	@scripts/bootstrap.sh

test: bootstrap
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The release gate: stack up, suites, load profile, SLOs from Prometheus,
# reports/<run-id>/; exit 0 go, 1 no-go, 2 broken run.
gate: bootstrap
	$(VENV)/bin/atendeai gate $(GATE_ARGS)

# The performance targets of issue 5, measured: not a timed test.
benchmark: bootstrap
	$(VENV)/bin/atendeai benchmark $(BENCH_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

up: bootstrap
	$(VENV)/bin/atendeai up $(UP_ARGS)

# The Grafana dashboards are written by a script (make test fails when stale).
dashboards: bootstrap
	$(VENV)/bin/python compose/grafana/build_dashboards.py
