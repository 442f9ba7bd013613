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
	$(PY) -m pytest -n 2 -q --durations=30 tests

DEMO_CONFIG := configs/pretrain/mae.py:tiny

# The data layer on the embedded BigEarthNet sample, then a short MAE pretraining run on it with a
# checkpoint and a PNG of input / masked / reconstruction (a few minutes on 2 CPU cores).
demo: $(STAMP)
	$(PY) scripts/demo_data.py --workdir=workdirs/demo/data_layer
	$(PY) pretrain/main.py --config=$(DEMO_CONFIG) --workdir=workdirs/demo/mae_tiny \
	    --config.total_steps=300
	$(PY) scripts/plot_reconstruction.py --config=$(DEMO_CONFIG) --workdir=workdirs/demo/mae_tiny

bench: $(STAMP)
	$(PY) scripts/bench_data.py

clean:
	rm -rf $(VENV) workdirs
