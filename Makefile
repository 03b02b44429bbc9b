# transcribe — a user's path:  make data -> make train -> make evaluate -> make gallery
# DATA is a folder of format-1 splits (train/, test/, optionally extra/): the official SVHN
# by default, any other such folder with DATA=...  `make demo` runs the same path, small, on
# synthetic house numbers; `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TR     := $(VENV)/bin/transcribe
DATA   ?= data/svhn
RUN    ?= runs/svhn
PRESET ?= goodfellow
STEPS  ?= 100000
SAMPLE ?= ../shared/data/svhn-sample/train
# train+extra with 6,000 held out for validation (Goodfellow et al. 2014); a small set: 10%.
TRAIN_FOLDERS := $(DATA)/train $(wildcard $(DATA)/extra)
VAL_ARGS      := $(if $(wildcard $(DATA)/extra),--val-size 6000,--val-fraction 0.1)

.PHONY: help setup test demo data train evaluate gallery bench train-sample evaluate-sample \
        baseline compare ablation lr-sweep learning-curve check search figures clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Idempotent: reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,baseline]'
	touch $@

setup: $(VENV)/.installed ## .venv with torch 2.14.1 and the package (editable)

test: setup ## the test suite (about 5 minutes on 2 cores)
	$(VENV)/bin/pytest -q

# ---------------------------------------------------------------- the demo (synthetic)
DEMO_RUN     ?= runs/demo
DEMO_N       ?= 20000
DEMO_SECONDS ?= 600
demo: setup ## the whole path on synthetic data: data, train (10 min), evaluate, gallery
	test -f data/synth/train/digitStruct.mat || $(TR) data synth --n $(DEMO_N) --out data/synth/train --seed 1
	test -f data/synth/test/digitStruct.mat  || $(TR) data synth --n 2000 --out data/synth/test --seed 2
	$(TR) data data/synth/train
	$(TR) train --preset cpu --train data/synth/train --out $(DEMO_RUN) --threads 2 \
	    --steps 4000 --lr 0.05 --eval-every 250 --max-seconds $(DEMO_SECONDS)
	$(TR) evaluate $(DEMO_RUN) --split val
	$(TR) evaluate $(DEMO_RUN) --split test

# ---------------------------------------------------------------- full SVHN (or DATA=...)
data: setup ## download and verify SVHN format 1 (or cache DATA=folder), print summaries
ifeq ($(DATA),data/svhn)
	$(TR) data svhn --root data/svhn
else
	for split in $(TRAIN_FOLDERS) $(wildcard $(DATA)/test); do $(TR) data $$split || exit 1; done
endif

train: setup ## the paper's network on train(+extra), early stopping on validation
	$(TR) train --preset $(PRESET) --train $(TRAIN_FOLDERS) $(VAL_ARGS) --out $(RUN) \
	    --steps $(STEPS) --batch-size 128 --lr 0.05 --eval-every 2000 --patience 10

evaluate: setup ## threshold for 98% chosen on validation, applied to test: coverage, plots
	$(TR) evaluate $(RUN) --split val
	if [ -d $(DATA)/test ]; then $(TR) evaluate $(RUN) --split $(DATA)/test; fi

gallery: setup ## most confident mistakes on the training photos (where the chapter found tight crops)
	$(TR) evaluate $(RUN) --split $(DATA)/train
