# Cargohold build, test and deployment entry points. `make help` lists them.
# Everything runs from a checkout: the venv lives in .venv, build products in build/.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cargohold-installed
IMAGE ?= cargohold:latest
BASE_IMAGE ?= cargohold-base:bookworm
COMPOSE_FILE ?= cluster-compose.yml
COMPOSE_PROJECT ?= cargohold
# TLS=1: mutual TLS on the compose cluster's gRPC (cluster-compose.tls.yml; certificates
# from scripts/cluster-certs.sh into deploy/secrets/tls). Default: per-call HMAC tokens.
TLS ?=
COMPOSE_FILES := -f $(COMPOSE_FILE) $(if $(filter 1,$(TLS)),-f cluster-compose.tls.yml,)
BENCH_ARGS ?=
PYTEST_ARGS ?=
# `docker compose` (v2 plugin) when present, else the standalone docker-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: help venv system-deps run test test-unit test-cluster test-clients lint protos \
        wheels base-image image images cluster-up cluster-down cluster-logs bench \
        bench-quick clean

help:
	@echo "make venv          create .venv and install cargohold[dev] (fast when up to date)"
	@echo "make system-deps   apt-get install skopeo docker-registry debootstrap busybox-static haproxy prometheus podman (if missing)"
	@echo "make run           a local 3-node cluster + gateway on 127.0.0.1:5000 (data in ./data)"
	@echo "make test          everything CI runs: unit, cluster, then client/docker tests"
	@echo "make test-unit     one phase only (also test-cluster, test-clients); PYTEST_ARGS=..."
	@echo "make lint          ruff check, ruff format --check, mypy (config in pyproject.toml)"
	@echo "make protos        regenerate protos/*_pb2*.py from protos/registry.proto"
	@echo "make wheels        wheels of cargohold and its deps into build/wheels"
	@echo "make base-image    offline base image $(BASE_IMAGE) (debootstrap + docker import)"
	@echo "make image         the cargohold image $(IMAGE) from $(BASE_IMAGE)"
	@echo "make cluster-up    3 nodes + 2 gateways + HAProxy on 127.0.0.1:5000 ($(COMPOSE_FILE));"
	@echo "                   TLS=1 adds mutual TLS between gateways/admin and nodes"
	@echo "make cluster-down  stop it (volumes kept; VOLUMES=1 removes them); cluster-logs"
	@echo "make bench         full benchmark vs Distribution; bench-quick a short one"

# The stamp depends on pyproject.toml: pip runs again only when the dependencies change.
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# The benchmark's extra dependencies (matplotlib, tqdm) on top of the dev ones.
$(VENV)/.cargohold-bench-installed: pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $@

system-deps:
	@scripts/system-deps.sh

run: venv
	$(VENV)/bin/cargohold dev

# Unit tests, then real-process cluster tests, then real clients (skopeo, docker, compose).
# Where a Docker engine answers, the images are built in the background while the unit and
# cluster phases run (base image and wheels side by side); the clients phase waits for
# them. Without an engine the docker tests skip.
test: venv system-deps
	@PY=$(PY) IMAGES_CMD="$(MAKE) --no-print-directory -j2 images" scripts/run-tests.sh $(PYTEST_ARGS)

test-unit: venv
	@PY=$(PY) PHASES=unit scripts/run-tests.sh $(PYTEST_ARGS)

test-cluster: venv
	@PY=$(PY) PHASES=cluster scripts/run-tests.sh $(PYTEST_ARGS)

test-clients: venv system-deps images
	@PY=$(PY) PHASES=clients scripts/run-tests.sh $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

protos: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash protos/generate.sh

wheels: venv
	@scripts/build-wheels.sh $(PY)

base-image: system-deps
	@scripts/build-base-image.sh $(BASE_IMAGE)

image: base-image wheels
	docker build --quiet -f deploy/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .
	@docker image prune -f --filter label=org.opencontainers.image.title=cargohold >/dev/null

images: image

cluster-up: image
	@scripts/cluster-secrets.sh
	@$(if $(filter 1,$(TLS)),scripts/cluster-certs.sh deploy/secrets/tls 172.29.42 $(IMAGE),true)
	BASE_IMAGE=$(BASE_IMAGE) CARGOHOLD_IMAGE=$(IMAGE) $(COMPOSE) -p $(COMPOSE_PROJECT) \
	  $(COMPOSE_FILES) up -d
	@scripts/wait-http.sh http://127.0.0.1:5000/v2/ 120

cluster-down:
	BASE_IMAGE=$(BASE_IMAGE) CARGOHOLD_IMAGE=$(IMAGE) $(COMPOSE) -p $(COMPOSE_PROJECT) \
	  $(COMPOSE_FILES) down --remove-orphans $(if $(filter 1,$(VOLUMES)),--volumes,)

cluster-logs:
	$(COMPOSE) -p $(COMPOSE_PROJECT) $(COMPOSE_FILES) logs --tail=100

bench: $(VENV)/.cargohold-bench-installed system-deps
	$(PY) -m bench --full $(BENCH_ARGS)

bench-quick: $(VENV)/.cargohold-bench-installed system-deps
	$(PY) -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache .mypy_cache
