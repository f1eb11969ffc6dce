# tfads: `make demo` runs the whole pipeline on embedded defaults; `make test` runs the test suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: venv demo test lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tfads demo --out $(DEMO_DIR) $(DEMO_FLAGS)

# ruff, then the one-way layers and no import cycles (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check tfads beam_jobs serving tests benchmarks
	$(BIN)/lint-imports --no-logo

# Test workers (pytest-xdist): each test file runs whole in one worker, so module fixtures are built once;
# session fixtures are built once per worker. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	# pytest exits 5 when it collects no tests: not a failure of the code.
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# The serving and bidding benchmarks measure the demo's exports: run the demo first if they are missing.
bench: $(STAMP)
	test -f $(DEMO_DIR)/models/models.config || $(BIN)/tfads demo --out $(DEMO_DIR)
	$(BIN)/python -m benchmarks.run_all --demo-dir $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
