# The two commands that do all set-up on a fresh machine: `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PKVC   := $(VENV)/bin/pkvc
STAMP  := $(VENV)/.installed

.PHONY: run test bench install system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# System packages the real-component tests need, installed when missing.
system-deps:
	@command -v gpg >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnupg; }

run: install system-deps
	bash contrib/demo.sh

test: install system-deps
	$(PY) -m pytest -q -p no:cacheprovider

# The benchmark against restic and borg (docs/performance.md); e.g. BENCH_ARGS=--quick.
# pkvc's modules are compiled first, as any installed package is (PYTHONDONTWRITEBYTECODE
# would otherwise make every command recompile them).
bench: install system-deps
	$(PY) -m compileall -q pkvc
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo build *.egg-info
