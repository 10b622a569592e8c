# The verbs a newcomer needs. `make demo` and `make test` do all set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV := source scripts/kap-env.sh &&
LAUNCHER := graphstore/neo4j-local
LAUNCHER_JAR := $(LAUNCHER)/target/neo4j-local.jar
# Tests run on their own state directory and ports, never the demo's.
TEST_ENV := KAP_HOME=$(CURDIR)/.kap-test KAP_NEO4J_PORT=7698 KAP_POSTGRES_PORT=55433 KAP_REDIS_PORT=6390

.PHONY: help setup system python-env demo test check format bench services-up services-down clean

help:
	@echo "make demo           set up, start the local services, run kap end to end"
	@echo "make test           set up, start the test services, run lint and the whole suite"
	@echo "make check          ruff check, ruff format --check, mypy"
	@echo "make bench          run the benchmarks in benchmarks/ (tables printed, JSON written)"
	@echo "make services-up    start Neo4j, PostgreSQL and Redis under .kap/"
	@echo "make services-down  stop them"

setup: system python-env $(LAUNCHER_JAR)

system:
	@scripts/setup.sh

python-env:
	@echo "==> uv sync (the workspace, CPU extras only)"
	@# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set, every `kap` would recompile.
	@$(ENV) uv sync --locked --all-packages --extra cpu --compile-bytecode

$(LAUNCHER_JAR): $(LAUNCHER)/pom.xml $(shell find $(LAUNCHER)/src -type f 2>/dev/null)
	@echo "==> building the Neo4j launcher with Maven (first run downloads Neo4j 5.26)"
	@cd $(LAUNCHER) && mvn -B -q -DskipTests package \
		|| { echo "error: the Maven build of $(LAUNCHER) failed (is Maven Central reachable?)" >&2; exit 1; }

demo: setup
	@$(ENV) scripts/demo.sh

test: setup
	@$(ENV) $(TEST_ENV) scripts/test.sh

check: python-env
	@$(ENV) uv run ruff check . && uv run ruff format --check . && uv run mypy

format: python-env
	@$(ENV) uv run ruff format . && uv run ruff check --fix .

bench: setup
	@$(ENV) scripts/bench.sh

services-up: setup
	@$(ENV) uv run kap services up

services-down:
	@$(ENV) uv run kap services down

clean: services-down
	rm -rf .kap .kap-test $(LAUNCHER)/target
