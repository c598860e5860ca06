# Two entry points: `make bench` (set up + embedded smoke benchmark) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned to the CPU build on this machine's disk; pyproject asks only for a range
# it satisfies, so nothing is reinstalled (an unpinned torch would pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: bench test docs-check lint stockfish chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[chess,textnav,serve,hf]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Stockfish is a system package: installed with apt when missing and possible, otherwise the
# chess tasks are skipped (with this message, and again by the tests and `lmrlgym envs list`).
stockfish:
	@if command -v stockfish >/dev/null || [ -x /usr/games/stockfish ] || [ -n "$$LMRLGYM_STOCKFISH" ]; then \
	  true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing stockfish with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q stockfish >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q stockfish >/dev/null 2>&1) || \
	  echo "could not install stockfish; Chess/Endgames will be skipped (sudo apt-get install stockfish)"; \
	else \
	  echo "stockfish not found; Chess/Endgames will be skipped. Install: sudo apt-get install stockfish"; \
	fi

# Chromium (headless) renders the results site in one test (tests/bench/test_site.py): installed
# the same way for `make test`, else that test is skipped with the same kind of message.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
	  true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium with apt-get (for the results-site test)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) || \
	  echo "could not install chromium; the site rendering test will be skipped (sudo apt-get install chromium)"; \
	else \
	  echo "chromium not found; the site rendering test will be skipped. Install: sudo apt-get install chromium"; \
	fi

bench: $(VENV)/.core stockfish
	$(BIN)/lmrlgym bench run --profile smoke

test: $(VENV)/.dev stockfish chromium
	$(BIN)/python -m pytest

# Every command in README.md and docs/ parses; the README's runnable blocks run with tiny sizes.
docs-check: $(VENV)/.dev
	$(BIN)/python -m pytest tests/test_readme_commands.py

lint: $(VENV)/.dev
	$(BIN)/ruff check lmrlgym tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
