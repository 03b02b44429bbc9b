# transcribe: the user's path is  make data -> make train -> make evaluate -> make gallery.
# DATA is a folder holding format-1 splits (train/, test/, optionally extra/).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TR     := $(VENV)/bin/transcribe
DATA   ?= data/svhn
RUN    ?= runs/svhn
JOBS   ?= 2

.PHONY: setup test demo data train evaluate gallery bench help

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Idempotent: re-runs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,baseline]'
	touch $@

setup: $(VENV)/.installed ## make .venv with torch 2.14.1 and the package (editable)

test: setup ## run the test suite
	$(VENV)/bin/pytest -q

demo: setup ## the whole path, small, on synthetic house numbers
	$(TR) data synth --n 3000 --out data/synth/train --seed 1
	$(TR) data synth --n 1000 --out data/synth/test --seed 2
	$(TR) data data/synth/train
