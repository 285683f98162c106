# The two commands of the README: `make run` starts a server, `make test` runs every check.
# Both set up what they need first: a virtualenv in .venv with the package and its test extras, and
# (for the tests) Apache Thrift's compiler, Node.js and redis-server from Debian's packages when missing,
# and the npm packages of the Node example (examples/node, from its lock file).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
NODE_EXAMPLE := examples/node

.PHONY: run test lint typecheck pytest bench fuzz stress system-deps clean

# `make run` keeps rooms in ./chat.db (the SQLite broker), so history survives its restarts;
# `make run BROKER=memory://` keeps nothing. ARGS come last and win over it.
BROKER ?= sqlite:///chat.db

run: $(VENV)/.server
	$(BIN)/python -m async_chat.server --broker '$(BROKER)' $(ARGS)

test: system-deps $(VENV)/.installed $(NODE_EXAMPLE)/node_modules/.installed lint typecheck pytest pytest-pure

lint: $(VENV)/.installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

# The same suite against the pure-Python fallback: the package as it runs where nothing could be compiled.
pytest-pure: $(VENV)/.installed
	ASYNC_CHAT_PURE_PYTHON=1 $(BIN)/python -m pytest $(ARGS)

# The benchmark harness (minutes; needs redis-server): every scenario, figures to benchmarks/results/.
bench: system-deps $(VENV)/.installed
	$(BIN)/python -m benchmarks $(ARGS)

# Fuzz the decode path with atheris for SECONDS (default 600); `make test` runs 10,000 inputs of it.
SECONDS ?= 600
fuzz: $(VENV)/.installed
	PYTHON=$(BIN)/python fuzz/run.sh $(SECONDS)

# The self-checking stress run (tests/stress.py) for SECONDS per broker (memory, SQLite, Redis); prints its
# counts and fails on any message lost silently or seq issued twice. `make test` runs it briefly.
stress: system-deps $(VENV)/.installed
	$(BIN)/python -m tests.stress --seconds $(SECONDS)

# What `make run` needs: the package and its own dependencies (a small venv). The tests' tools (mypy,
# ruff, matplotlib, redis-py, …) come with `make test`, into the same venv. The install compiles the
# package's core (setup.py) in place, so a change to one of the compiled modules' sources installs again:
# else the stale compiled module would run instead of the changed .py (the tests refuse to, conftest.py).
BUILT := pyproject.toml setup.py async_chat/_binary_call.pyx $(shell grep -o '"async_chat/[a-z_/]*\.py"' setup.py | tr -d '"')

$(VENV)/.made:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "async_chat needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "$(PYTHON) cannot make a virtualenv: install Debian's python3-venv (apt-get install python3-venv) and rerun" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(VENV)/.server: $(VENV)/.made $(BUILT)
	@echo "installing async_chat into $(VENV), compiling its core with mypyc where it can (about a minute)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.made $(BUILT)
	@echo "installing async_chat and its test tools into $(VENV), compiling its core with mypyc where it can (about a minute)"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.server

# System tools the tests drive for real: Apache Thrift's compiler (code generated for Python and Node),
# Node.js with npm (the Node client), redis-server (the Redis broker; the tests start their own) and
# openssl (certificates for the tests' TLS Redis), and a C compiler (the benchmarks' load generator, and
# the package's compiled decoder, which the tests require to be built). Each is a command and the Debian
# package that provides it; Python's own headers (Debian's python3-dev) are checked for as a file.
SYSTEM_TOOLS := thrift:thrift-compiler node:nodejs npm:npm redis-server:redis-server openssl:openssl cc:gcc

system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing from Debian's packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing. Install them (sudo apt-get install$$missing) and rerun." >&2; \
	    exit 1; \
	  fi; \
	fi

$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package-lock.json
	cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info $(NODE_EXAMPLE)/node_modules
