# `make test` and `make demo` work on a fresh machine: they create .venv and install the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

demo: $(STAMP)
	$(PY) scripts/demo_data.py --workdir=workdirs/demo

bench: $(STAMP)
	$(PY) scripts/bench_data.py

clean:
	rm -rf $(VENV) workdirs
