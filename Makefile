# Quick start: `make bench` (the main job) and `make test`. Each sets itself up.
PYTHON ?= python3
# `make test PYTHON=python3.12` builds and uses its own venv (.venv-3.12); the default keeps .venv
ifeq ($(origin PYTHON),file)
VENV   := .venv
else
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
$(if $(PYVER),,$(error PYTHON=$(PYTHON) does not run: give an interpreter's name or path))
VENV   := .venv-$(PYVER)
endif
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv venv-mpich test conformance conformance-update bench bench-quick demo docs clean

all: test

# `make clean` also removes the per-interpreter venvs of `make test PYTHON=...`
clean: clean-venvs
.PHONY: clean-venvs
clean-venvs:
	rm -rf .venv-*

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# MPICH (the `mpich` wheel) and mpi4py in a venv of their own: the hybrid tests run
# jobs under both Open MPI (the test venv's) and MPICH
MPICH_STAMP := .venv-mpich/.installed
$(MPICH_STAMP): pyproject.toml
	python3 -m venv .venv-mpich
	.venv-mpich/bin/python -m pip install -q --upgrade pip
	.venv-mpich/bin/python -m pip install -q mpich mpi4py -e .
	touch $(MPICH_STAMP)

venv-mpich: $(MPICH_STAMP)

test: $(STAMP) $(MPICH_STAMP)
	$(PY) -m pytest -q tests

# mpi4py 4.1.2's own test suite on driller.MPI at 1, 2 and 3 ranks (fetched once into
# .cache/conformance/); fails below tests/conformance_baseline.json, on a hang or a crash
conformance: $(STAMP)
	$(PY) tools/conformance.py

conformance-update: $(STAMP)
	$(PY) tools/conformance.py --update-baseline

# the docs site (guides in docs/, API reference from the docstrings) into site/;
# --strict: any warning fails the build
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(VENV)/bin/driller bench

bench-quick: $(STAMP)
	$(VENV)/bin/driller bench --quick

demo: $(STAMP)
	$(PY) -m driller demo

clean:
	rm -rf $(VENV) build src/*.egg-info bench-results .pytest_cache conformance-results.json site
