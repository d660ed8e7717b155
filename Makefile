# One venv for development and tests; each service's image installs only its own extra.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := training,serving,gateway,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: help venv system-deps browser-deps test lint fmt bench up clean protos

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)  ## create .venv and install every extra

system-deps:  ## Java 17 and Maven for Cassandra (installed with apt when missing and running as root)
	@bash deploy/local/system-deps.sh

browser-deps:  ## Chromium for the browser tests (apt, as above)
	@bash deploy/local/system-deps.sh --browser

test: lint system-deps browser-deps  ## lint, then every test (real Cassandra, model server, gateway, Chromium)
	$(PY) -m pytest

lint: venv  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv system-deps  ## print the benchmark figures
	$(PY) -m bench

protos: venv  ## regenerate gateway/tfs_protos/*_pb2*.py from the .proto files (grpcio-tools)
	$(PY) -m gateway.tfs_protos.generate

up: venv system-deps  ## the whole stack here, no Docker; prints the URL, Ctrl-C stops it (flags: make up ARGS="--help")
	$(PY) -m deploy.local.stack $(ARGS)

clean:  ## remove the local stack's state (models, Cassandra data, spool)
	rm -rf .state
