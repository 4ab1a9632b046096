# Every target builds .venv from nothing, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-quick soak fsck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/maip-ledger serve --demo --data-dir $${MAIP_DATA_DIR:-./data}

lint: $(STAMP)
	$(BIN)/ruff check ledger api verifier tests bench
	$(BIN)/ruff format --check ledger api verifier tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The api bench drives the server with wrk when it is on PATH. Install it if we can (root
# with apt); if we cannot, say so and go on: the bench falls back to its Python client.
WRK_INSTALL = command -v wrk >/dev/null 2>&1 \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	     && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 \
	          || { apt-get update -qq >/dev/null 2>&1 \
	               && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1; }; }; } \
	|| echo "make: wrk is not installed (needs root and apt); the api bench uses its Python load generator"

bench: $(STAMP)
	@$(WRK_INSTALL)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	@$(WRK_INSTALL)
	$(BIN)/python -m bench --quick

soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10 --kills 20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
