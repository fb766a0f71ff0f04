# make run   - create .venv if needed, install, run web + worker + beat + SMTP sink
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
STAMP := $(VENV)/.installed

.PHONY: run test lint install system-packages clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: install
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
