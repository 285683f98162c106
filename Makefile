# The two commands of the README: `make run` starts a server, `make test` runs every check.
# Both set up what they need first: a virtualenv in .venv with the package and its test extras, and
# (for the tests) Apache Thrift's compiler from Debian's packages when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test lint typecheck pytest system-deps clean

run: $(VENV)/.installed
	$(BIN)/python -m async_chat.server $(ARGS)

test: system-deps $(VENV)/.installed lint typecheck pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "async_chat needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# System tools the tests drive for real: Apache Thrift's compiler (interop with generated clients).
system-deps:
	@if ! command -v thrift >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing thrift-compiler from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq thrift-compiler >/dev/null; \
	  else \
	    echo "missing: the 'thrift' compiler. Install it (Debian/Ubuntu: sudo apt-get install thrift-compiler) and rerun." >&2; \
	    exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
