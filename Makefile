# Funnelstream: `make run` serves everything on one machine; `make test` runs the whole suite.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 8080
DATA_DIR ?= ./data
DEMO_DIR ?= ./data-demo
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run demo test bench bench-rss lint install up down clean help

help:
	@echo "make run    start the gateway and all services on http://127.0.0.1:$(PORT) (data in $(DATA_DIR))"
	@echo "make demo   the same on $(DEMO_DIR), with a generated demo shop loaded once (DEMO_ARGS=\"--customers 2000\")"
	@echo "make test   run the whole test suite (embedded bus, Kafka via Tansu, SQLite and PostgreSQL)"
	@echo "make bench  run the benchmarks (each printed as a ratio to a baseline)"
	@echo "make bench-rss  segmentation's memory after consuming BENCH_RSS_EVENTS (1M) events"
	@echo "make lint   ruff on everything, mypy --strict on shared/"
	@echo "make up     docker compose up -d (Kafka, PostgreSQL, each service in its own container)"
	@echo "make down   docker compose down"

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Funnelstream needs Python 3.11 or newer; set PYTHON=python3.11")'
	@echo "==> creating a virtual environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	@echo "==> installing Funnelstream and its dependencies into $(VENV) (the first time takes a minute)"
	@$(PY) -m pip install --disable-pip-version-check --progress-bar on -e '.[test]'
	@touch $(INSTALLED)

install: $(INSTALLED)

run: install
	@echo "==> starting the gateway and all services (stores migrate on start); Ctrl-C stops them"
	@# exec: the server is make's own child, so a SIGTERM to make reaches it (no shell left between
	@# them to die alone); it exits 0 once stopped, so make reports no error.
	@PORT=$(PORT) DATA_DIR=$(DATA_DIR) LOG_FORMAT=$${LOG_FORMAT:-text} GATEWAY_PROCESSES=$${GATEWAY_PROCESSES:-true} exec $(PY) -m services.gateway

# exec: Ctrl-C reaches the demo, which stops the gateway and exits 0 (no make error to read).
demo: install
	@echo "==> the demo: the gateway on $(DEMO_DIR), the demo shop loaded once, then serving"
	@PORT=$(PORT) DATA_DIR=$(DEMO_DIR) LOG_FORMAT=$${LOG_FORMAT:-text} exec $(PY) -m services.demo $(DEMO_ARGS)

test: install
	@$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@$(PY) -m bench

bench-rss: install
	@$(PY) -m bench.segmentation_rss

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache

lint: install
	@$(PY) -m pip install --quiet ruff mypy
	@$(PY) -m ruff check shared services bench tests --select E,F,W,B --ignore E501
	@$(PY) -m mypy --strict shared
