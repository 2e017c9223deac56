# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   creates .venv, installs hwnas, runs the main job on the embedded default
#   make test   creates .venv, installs hwnas with test tools, runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hwnas-installed

.PHONY: install demo demo-predictor test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.random_search --threads 1 --adapt-if-needed 4

demo-predictor: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --durations=30

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
