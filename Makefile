# memkd-stream: one entry point for developers and CI (.ci/run runs `make lint`, then `make test`).
#
#   make setup          venv + locked Python deps (uv), Kafka jars (Maven), redis-server (apt)
#   make services-up    local Kafka (KRaft) on 127.0.0.1:39092, SASL_SSL on :39094 (SCRAM-SHA-512,
#                       dev user memkd, dev-constant password; CA var/kafka/tls/ca.pem) + Redis :36379
#   make services-down  stop exactly what services-up started (pid files under var/run)
#   make test           setup, services up, all tests, services down (if this run started them)
#   make faults         only the fault suite (kill -9, restarts, device fault); make test runs it too
#   make lint           ruff (lint + format check), mypy, import boundaries (make format fixes)
#   make demo           train a line, stream its test images through a worker, show the verdicts
#   make bench          model speed, accuracy and end-to-end streaming benchmarks (bench/results)
#   make bench-anomalib speed vs anomalib's Reverse Distillation (own venv: .venv-anomalib)
#
# Ports are variables: `make test KAFKA_PORT=49092 KAFKA_CONTROLLER_PORT=49093 KAFKA_SASL_PORT=49094
# REDIS_PORT=46379`.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

KAFKA_PORT ?= 39092
KAFKA_CONTROLLER_PORT ?= 39093
KAFKA_SASL_PORT ?= 39094
REDIS_PORT ?= 36379
SERVICES_TIMEOUT ?= 120
PYTEST_ARGS ?=
# What pytest collects (a file or folder narrows it: `make test TESTS=tests/unit/model`).
TESTS ?= tests
# 1 keeps the services running after `make test` / `make bench` even when they started them.
KEEP_SERVICES ?= 0

VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# Use the Python that is on the machine; never download one.
export UV_PYTHON_DOWNLOADS := never
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

STAMPS := .cache/stamps
KAFKA_LIB := deploy/local/lib

SERVICES := $(PY) deploy/local/services.py --kafka-port $(KAFKA_PORT) \
	--controller-port $(KAFKA_CONTROLLER_PORT) --sasl-port $(KAFKA_SASL_PORT) \
	--redis-port $(REDIS_PORT) --timeout $(SERVICES_TIMEOUT)

# What the tests, the demo and the benchmark read (memkd_stream.settings).
SERVICE_ENV := MEMKD_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) \
	MEMKD_REDIS__URL=redis://127.0.0.1:$(REDIS_PORT)/0
# What the tests read besides (tests/integration/conftest.py): the broker's SASL_SSL listener and
# the CA that services.py generated for it.
TEST_ENV := $(SERVICE_ENV) MEMKD_TEST_KAFKA_SASL=127.0.0.1:$(KAFKA_SASL_PORT) \
	MEMKD_TEST_KAFKA_CA=$(CURDIR)/var/kafka/tls/ca.pem

# Runs $(1) between services-up and services-down; services-down happens even when $(1) fails,
# but only if this invocation found the services down (so a developer's running services and
# other checkouts sharing them survive `make test`).
define with_services
	@set -u; was_up=0; \
	if [ "$(KEEP_SERVICES)" = 1 ] || $(SERVICES) status >/dev/null 2>&1; then was_up=1; fi; \
	rc=0; $(SERVICES) up || rc=$$?; \
	if [ $$rc = 0 ]; then $(1) || rc=$$?; fi; \
	if [ $$was_up = 0 ]; then $(SERVICES) down || true; \
	else echo "services left running (they were up before; make services-down stops them)"; fi; \
	exit $$rc
endef

.PHONY: help setup services-up services-down services-status test faults lint format demo bench \
	bench-anomalib clean

help:
	@sed -n '3,15p' Makefile | sed 's/^# \{0,1\}//'

setup: $(STAMPS)/venv $(STAMPS)/kafka-jars $(STAMPS)/redis

$(STAMPS)/uv:
	@mkdir -p $(STAMPS)
	@if ! $(UV) --version >/dev/null 2>&1; then \
		echo "installing uv (python3 -m pip install --user uv)"; \
		python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv; \
	fi
	@$(UV) --version
	@touch $@

$(STAMPS)/venv: pyproject.toml uv.lock $(STAMPS)/uv
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || $(UV) venv --quiet --prompt memkd-stream $(VENV)
	$(UV) sync --frozen --extra dev
	@touch $@

$(STAMPS)/java:
	@mkdir -p $(STAMPS)
	@command -v java >/dev/null || { echo "installing Java 17 (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openjdk-17-jre-headless; }
	@command -v mvn >/dev/null || { echo "installing Maven (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq maven; }
	@touch $@

$(STAMPS)/kafka-jars: deploy/local/pom.xml $(STAMPS)/java
	rm -rf $(KAFKA_LIB)
	mvn -q -B -f deploy/local/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=lib -DincludeScope=runtime
	@ls $(KAFKA_LIB)/kafka_2.13-*.jar >/dev/null
	@touch $@

$(STAMPS)/redis:
	@mkdir -p $(STAMPS)
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { \
		echo "installing redis-server (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
	@touch $@

services-up: setup
	@$(SERVICES) up

services-down:
	@if [ -x $(PY) ]; then $(SERVICES) down; else echo "no venv: nothing was started"; fi

services-status: setup
	@$(SERVICES) status

test: setup
	$(call with_services,$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS) $(TESTS))

faults: setup
	$(call with_services,$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider -m faults $(PYTEST_ARGS) $(TESTS))

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMPS)/venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: setup
	@[ -f deploy/local/demo.sh ] || { echo "make demo: deploy/local/demo.sh does not exist yet" \
		"(the streaming demo is being written); nothing to run" >&2; exit 1; }
	$(call with_services,$(SERVICE_ENV) PY=$(PY) bash deploy/local/demo.sh)

bench: setup
	@[ -f bench/run.py ] || { echo "make bench: bench/run.py does not exist yet" >&2; exit 1; }
	$(call with_services,$(SERVICE_ENV) $(PY) bench/run.py)

# anomalib is a heavy install, so it gets its own venv and is never a dependency of the project
# or of `make test`. Every package the project locks (torch, torchvision, timm, numpy...) is
# constrained to its uv.lock version, so uv reuses the wheels it cached for .venv (no second 2 GB
# torch) and both sides of the benchmark run the same torch. A new pin or lock rebuilds the venv.
ANOMALIB_VERSION := 2.7.0
ANOMALIB_VENV := .venv-anomalib
ANOMALIB_BENCH_ARGS ?=

$(STAMPS)/venv-anomalib-$(ANOMALIB_VERSION): pyproject.toml uv.lock $(STAMPS)/uv
	@mkdir -p $(STAMPS)
	rm -rf $(ANOMALIB_VENV) $(STAMPS)/venv-anomalib-*
	$(UV) venv --quiet --prompt memkd-anomalib $(ANOMALIB_VENV)
	$(UV) export --frozen --format requirements-txt --no-hashes --no-emit-project \
		--output-file .cache/anomalib-constraints.txt >/dev/null
	$(UV) pip install --python $(ANOMALIB_VENV)/bin/python -c .cache/anomalib-constraints.txt \
		"anomalib==$(ANOMALIB_VERSION)" -e .
	@touch $@

bench-anomalib: $(STAMPS)/venv-anomalib-$(ANOMALIB_VERSION)
	$(ANOMALIB_VENV)/bin/python bench/vs_anomalib.py $(ANOMALIB_BENCH_ARGS)

clean: services-down
	rm -rf var .cache/stamps
