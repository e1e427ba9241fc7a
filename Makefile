# Quick start: `make bench` (the main job) and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all venv test bench bench-quick demo clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/driller bench

bench-quick: $(STAMP)
	$(VENV)/bin/driller bench --quick

demo: $(STAMP)
	$(PY) -m driller demo

clean:
	rm -rf $(VENV) build src/*.egg-info bench-results .pytest_cache
