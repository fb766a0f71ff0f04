# make run   - create .venv if needed, install the package, run web + worker + beat + SMTP sink
# make test  - install (the Python packages, and as root the system packages in
#              .ci/system-packages.txt), then the whole test suite (PostgreSQL and
#              Redis tests skip unless those answer; under CI=true they fail instead)
# make lint  - ruff check, ruff format --check, mypy
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

# Re-install only when the dependencies change, not on every `make test`.
# `make run` needs the package alone; the tests and linters add the dev tools.
# pip is asked for errors only (-qq): a newcomer's first command is not a page of
# warnings about this machine's package index or setuptools' editable installs.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check

.PHONY: run test lint install system-packages clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) --upgrade pip
	$(PIP) -e .
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(PIP) -e '.[dev]'
	@touch $@

run: $(RUN_STAMP)
	$(BIN)/mailer up --host $(HOST) --port $(PORT)

test: system-packages install
	$(BIN)/pytest $(PYTEST_ARGS)

# Nothing to do when they are there; else apt-get as root, starting no service,
# or one message saying what to install.
system-packages:
	@scripts/system-packages

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mailer benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
