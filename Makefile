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

# System packages: installed with apt when missing and possible, otherwise what needs them is
# skipped, with this message (and again by the tests). $(call apt_install,PACKAGE,FOUND,WHAT):
# FOUND is a shell test that the package is present, WHAT names what is skipped without it.
define apt_install
	@if $(2); then \
	  true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing $(1) with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) >/dev/null 2>&1) || \
	  echo "could not install $(1); $(3) will be skipped (sudo apt-get install $(1))"; \
	else \
	  echo "$(1) not found; $(3) will be skipped. Install: sudo apt-get install $(1)"; \
	fi
endef

# Stockfish: the chess tasks (also reported by `lmrlgym envs list`).
stockfish:
	$(call apt_install,stockfish,command -v stockfish >/dev/null || [ -x /usr/games/stockfish ] || [ -n "$$LMRLGYM_STOCKFISH" ],Chess/Endgames)

# Chromium (headless): the test that renders the results site (tests/bench/test_site.py).
chromium:
	$(call apt_install,chromium,command -v chromium >/dev/null || command -v chromium-browser >/dev/null,the results-site rendering test)

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
