# Two entry points, each creating the virtual environment on first use:
#   make run   - the server on the embedded SQLite default (./soloist.db) with the shop domain
#   make test  - lint, types and the whole test suite
#   make bench - every benchmark, then benchmarks/report.py (QUICK=1: about a minute each)
#   make browser - headless Chromium from Debian's packages, for the dashboard's browser test (root)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint types pytest bench bench-quick browser chaos fuzz overload clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/soloist serve --db soloist.db

test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check runtime domain tests benchmarks
	$(BIN)/ruff format --check runtime domain tests benchmarks

types: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests

# pytest under coverage (branch coverage; the floor, fail_under in pyproject.toml, only ever rises).
# Subprocesses (the e2e tests' `python -m soloist.cli`) are not measured.
pytest: $(STAMP)
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -q
	$(BIN)/python -m coverage report

# Every benchmark, each run as a script the way a new user would (benchmarks/run_all.py, with a progress bar),
# then benchmarks/report.py (Markdown table + PNG plots in benchmarks/results/). QUICK=1: the short modes.
bench: $(STAMP) $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick,)

bench-quick:
	$(MAKE) bench QUICK=1

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends chromium; }

# SIGKILL crash rounds against a real writer (docs/reliability.md); SEED=N to replay a run. Then the same
# rounds on PostgreSQL with a standby taking over (POSTGRES=server DSN; not run, with the reason, without one)
ROUNDS ?= 100
POSTGRES ?= postgresql://postgres@127.0.0.1:5432
chaos: $(STAMP)
	$(BIN)/python -m tests.e2e.crash_suite --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED),)
	$(BIN)/python -m tests.e2e.crash_suite --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED),) --postgres $(POSTGRES)

# The property fuzz (frame parser, every shop command's and query's fields, garbage over a socket) at
# FUZZ_EXAMPLES examples each (default 100,000; the default suite runs 60): docs/reliability.md
FUZZ_EXAMPLES ?= 100000
FUZZ_TESTS := tests/net/test_parse_lines.py tests/net/test_fuzz_shop.py tests/net/test_fuzz.py
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q --timeout=0 -p no:randomly --hypothesis-show-statistics $(FUZZ_TESTS)

clean:
	rm -rf $(VENV) soloist.db soloist.db-wal soloist.db-shm .coverage
