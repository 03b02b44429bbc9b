# transcribe — a user's path:  make data -> make train -> make evaluate -> make gallery
# DATA is a folder of format-1 splits (train/, test/, optionally extra/): the official SVHN
# by default, any other such folder with DATA=...  `make demo` runs the same path, small, on
# synthetic house numbers; `make test` runs the suite. Both set up .venv first.
# Every `VAR ?= value` line under a `#> text` line is listed with its value by `make help`;
# override any on the command line: `make train RUN=runs/mine PRESET=cpu`.
#> interpreter that creates .venv
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TR     := $(VENV)/bin/transcribe
#> folder of format-1 splits (train/, test/, optionally extra/)
DATA   ?= data/svhn
#> run folder of train, evaluate, gallery, diagnose, clean-runs
RUN    ?= runs/svhn
#> model preset of `make train` (the paper's network; transcribe train's own default is cpu; transfer: the recognizer)
PRESET ?= goodfellow
#> optimizer steps of `make train`
STEPS  ?= 100000
#> the 2,000 real photos of the sample targets
SAMPLE ?= ../shared/data/svhn-sample/train
# train+extra with 6,000 held out for validation (Goodfellow et al. 2014); a small set: 10%.
TRAIN_FOLDERS := $(DATA)/train $(wildcard $(DATA)/extra)
VAL_ARGS      := $(if $(wildcard $(DATA)/extra),--val-size 6000,--val-fraction 0.1)

.PHONY: help setup test fuzz demo data train evaluate gallery train-sample train-sample-tuned train-sample-cpu distil-sample whole-sample cv-table ablation lr-sweep \
        learning-curve diagnose check search bench baseline compare figures clean clean-runs \
        serve bench-serve rehearsal

HELP_VARS = $(shell awk '/^\#> /{d=1; next} d && /^[A-Z_]+ +\?=/{print $$1} {d=0}' $(firstword $(MAKEFILE_LIST)))
help: ## list the targets, then the variables with their values
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "variables (value now; set one with make TARGET VAR=value):"
	@$(foreach v,$(HELP_VARS),printf '  %-14s %-34s %s\n' '$(v)' '$($(v))' \
	    "$$(grep -B1 -E '^$(v) +\?=' $(firstword $(MAKEFILE_LIST)) | head -1 | sed 's/^\#> //')";)

# Idempotent: reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip uninstall -q -y transcribe 2>/dev/null || true  # the distribution's old name (now transcribe-svhn)
	$(PY) -m pip install -q -e '.[dev,baseline,transfer,serve,whole]'
	touch $@

setup: $(VENV)/.installed ## .venv with torch 2.14.1 and the package (editable)

test: setup ## the test suite (about 3 minutes on 2 cores; about 4 with a fresh .venv)
	$(VENV)/bin/pytest -q

# tests/test_fuzz.py, long: FUZZ_EXAMPLES random cases per property (6,000 x 7 properties: about
# 10 minutes on 2 cores), then the cases run and their outcomes per property. `make test` runs 100.
#> random cases per property of `make fuzz`
FUZZ_EXAMPLES ?= 6000
fuzz: setup ## property-based fuzzing of every input reader (Hypothesis), long
	TRANSCRIBE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -q tests/test_fuzz.py --hypothesis-show-statistics

# ---------------------------------------------------------------- the demo (synthetic)
#> run folder of the demo (also read by train-sample-cpu, serve)
DEMO_RUN     ?= runs/demo
#> synthetic training photos the demo generates
DEMO_PHOTOS  ?= 20000
#> the demo's training budget, seconds
DEMO_SECONDS ?= 600
#> the demo's step limit (the schedule decays over steps or seconds)
DEMO_STEPS   ?= 3000
#> the demo's peak learning rate
DEMO_LR      ?= 0.05
#> steps between the demo's evaluations
DEMO_EVAL    ?= 200
demo: setup ## the whole path on synthetic data: data, train (10 min), evaluate, gallery
	test -f data/synth/train/digitStruct.mat || $(TR) data synth --photos $(DEMO_PHOTOS) --out data/synth/train --synth-seed 1
	test -f data/synth/test/digitStruct.mat  || $(TR) data synth --photos 2000 --out data/synth/test --synth-seed 2
	$(TR) data data/synth/train
	$(TR) train --preset cpu --train data/synth/train --out $(DEMO_RUN) --threads 2 \
	    --steps $(DEMO_STEPS) --lr $(DEMO_LR) --eval-every $(DEMO_EVAL) --max-seconds $(DEMO_SECONDS)
	$(TR) evaluate $(DEMO_RUN) --split val
	$(TR) evaluate $(DEMO_RUN) --split test

# ---------------------------------------------------------------- full SVHN (or DATA=...)
data: setup ## download and verify SVHN format 1 (or cache DATA=folder), print summaries
ifeq ($(DATA),data/svhn)
	$(TR) data svhn --root data/svhn
else
	for split in $(TRAIN_FOLDERS) $(wildcard $(DATA)/test); do $(TR) data $$split || exit 1; done
endif

train: setup ## the paper's network on train(+extra), early stopping on validation (PRESET=transfer: the recognizer)
ifeq ($(PRESET),transfer)
	# the PP-OCRv6 recognizer fine-tuned on train/ (not extra/), 5% held out; fresh views each epoch
	$(TR) transfer --train $(DATA)/train --folds 0 --val-fraction 0.05 --stream --epochs 4 --out $(RUN)
else
	$(TR) train --preset $(PRESET) --train $(TRAIN_FOLDERS) $(VAL_ARGS) --out $(RUN) \
	    --steps $(STEPS) --batch-size 128 --lr 0.05 --eval-every 2000 --patience 10
endif

evaluate: setup ## threshold for 98% chosen on validation, applied to test: coverage, plots
	$(TR) evaluate $(RUN) --split val
	if [ -d $(DATA)/test ]; then $(TR) evaluate $(RUN) --split $(DATA)/test; fi

gallery: setup ## most confident mistakes on the training photos (where the chapter found tight crops)
	$(TR) evaluate $(RUN) --split train

# ---------------------------------------------------------------- the real sample (2,000 photos)
# The best recipe measured on real photos: the PP-OCRv6 small recognizer (inside the rapidocr
# wheel) fine-tuned with a digits-only CTC head, 5-fold cross-validated over the whole sample,
# then trained on all of it; its threshold is chosen on the 2,000 out-of-fold predictions. The fold
# models then read 600 training-side photos they never saw at every candidate box, and the choice
# among candidates for whole photos is fitted to those readings (the usual 200 validation photos,
# 10% seed 0, left out: the whole-photo figures are measured on them).
#> run folder of train-sample (the transfer recipe)
TRANSFER_RUN ?= runs/sample-transfer
train-sample: setup ## transfer: fine-tune PP-OCRv6 small on the sample, 5-fold CV, ship; box chooser and fitter
	$(TR) transfer --train $(SAMPLE) --folds 5 --views 4 --epochs 8 --keep-folds --out $(TRANSFER_RUN)
	$(TR) fit-chooser $(TRANSFER_RUN) --val-fraction 0.1 --split-seed 0 --limit 600
	$(TR) fit-box --train $(SAMPLE) --out $(TRANSFER_RUN)

# The earlier recipe: the demo's synthetic-trained cpu network fine-tuned on the sample's training
# part; validation (10%, seed 0) from the sample only. Run `make demo` first (it is run if missing).
#> run folder of train-sample-cpu
SAMPLE_RUN ?= runs/sample
train-sample-cpu: setup ## fine-tune the synthetic-pretrained cpu net on ../shared/data/svhn-sample (10 min)
	test -f $(DEMO_RUN)/ckpt-best.pt || $(MAKE) demo
	$(TR) train --preset cpu --init $(DEMO_RUN)/ckpt-best.pt --train $(SAMPLE) --out $(SAMPLE_RUN) \
	    --threads 2 --steps 1600 --lr 0.02 --eval-every 100 --eval-limit 600 --max-seconds 600
	$(TR) evaluate $(SAMPLE_RUN) --split val

# Distillation (issue 9, item 5): an honest teacher (the transfer recipe trained on the 1,800 training
# photos of the usual split only: 10%, seed 0 held out), whose top-5 readings of the student's training
# photos (the 1,800 real + 1,800 synthetic) teach the demo's cpu network; the same run without the
# teacher (same flags, steps and seed); both read the 200 validation photos; then student and teacher
# photos/s side by side. Run `make demo` first (it is run if missing).
TEACHER_RUN ?= runs/sample-teacher
DISTIL_RUN  ?= runs/sample-distil
DISTIL_BASE ?= runs/sample-nodistil
STUDENT_ARGS = --preset cpu --init $(DEMO_RUN)/ckpt-best.pt --train $(SAMPLE) --mix data/synth/train --mix-size 1800 \
    --threads 2 --steps 150 --lr 0.02 --eval-every 50 --eval-limit 600 --amp bf16
distil-sample: setup ## distil the fine-tuned recognizer into the cpu ConvNet: with vs without, and speed
	test -f $(DEMO_RUN)/ckpt-best.pt || $(MAKE) demo
	test -f $(TEACHER_RUN)/model.pt || $(TR) transfer --train $(SAMPLE) --folds 0 --views 4 --epochs 8 \
	    --val-fraction 0.1 --split-seed 0 --out $(TEACHER_RUN)
	$(TR) distil --teacher $(TEACHER_RUN) --alpha 0.5 --top-k 5 $(STUDENT_ARGS) --out $(DISTIL_RUN)
	$(TR) train $(STUDENT_ARGS) --out $(DISTIL_BASE)
	$(TR) evaluate $(DISTIL_RUN) --split val
	$(TR) evaluate $(DISTIL_BASE) --split val
	$(PY) scripts/bench_distil.py $(DISTIL_RUN) $(TEACHER_RUN) --train $(SAMPLE) --limit 256 --rounds 3 --threads 2

# The same recipe with the backbone's last stage trained as well (1.5M more weights, on features
# cached at its input), bf16 where measured faster: measured against train-sample in cv-table.
#> run folder of train-sample-tuned (the backbone's last stage trained too)
TUNED_RUN ?= runs/sample-transfer-tuned
train-sample-tuned: setup ## train-sample with the backbone's last stage trained too (19 min)
	$(TR) transfer --train $(SAMPLE) --folds 5 --views 4 --epochs 8 --tune-stages 1 --amp auto --keep-folds \
	    --out $(TUNED_RUN)

# Whole photos, honestly: the same transfer recipe trained without the usual 200 validation photos
# (10%, seed 0), given train-sample's box chooser (fitted with those photos left out) and its own box
# fitter (ditto), evaluated on them without their boxes, beside the same reader at the given boxes.
whole-sample: setup ## whole photos on the 200 validation photos no part of the reader, chooser or box fitter saw
	test -f $(TRANSFER_RUN)/chooser-readings.jsonl || $(MAKE) train-sample
	test -f $(TEACHER_RUN)/model.pt || $(TR) transfer --train $(SAMPLE) --folds 0 --views 4 --epochs 8 \
	    --val-fraction 0.1 --split-seed 0 --out $(TEACHER_RUN)
	rm -f $(TEACHER_RUN)/chooser.json   # fit-chooser keeps a chooser only where it beats the rule out of sample
	if [ -f $(TRANSFER_RUN)/chooser.json ]; then cp $(TRANSFER_RUN)/chooser.json $(TEACHER_RUN)/; fi
	test -f $(TEACHER_RUN)/boxfit.onnx || $(TR) fit-box --train $(SAMPLE) --out $(TEACHER_RUN) --val-fraction 0.1 --split-seed 0
	$(TR) evaluate $(TEACHER_RUN) --split val --no-boxes

# ---------------------------------------------------------------- methodology (book ch. 11)
# STUDY is the training folder these tools study: the real sample by default.
#> training folder of the methodology and baseline targets
STUDY ?= $(SAMPLE)
ablation: setup ## crop widening 1.0 vs 1.3: same preset, photos, budget (sec. 11.6)
	$(PY) scripts/ablation.py --train $(STUDY) --preset cpu --steps 900 --max-seconds 300 \
	    --split val --out runs/ablation

lr-sweep: setup ## training error after a fixed budget against the learning rate (fig. 11.1)
	$(TR) lr-sweep --preset cpu --train $(STUDY) --lr-min 1e-3 --lr-max 1 --per-decade 2 \
	    --steps 150 --threads 2 --out runs/lr-sweep

# Each size fine-tunes the synthetic-pretrained network as `make train-sample` does (its config).
learning-curve: setup ## error against training-set size, power-law fit: gather more data?
	test -f $(SAMPLE_RUN)/config.json || $(MAKE) train-sample-cpu
	$(TR) learning-curve --config $(SAMPLE_RUN)/config.json --train $(STUDY) --epochs 12 --min-steps 150 \
	    --max-steps 350 --evals 4 --threads 2 --out runs/learning-curve

diagnose: setup ## underfitting, overfitting or a defect, for RUN
	$(TR) diagnose $(RUN)

check: setup ## the chapter's debugging checks on real photos, pass/fail
	$(TR) check --preset cpu --train $(STUDY) --threads 2 --out runs/check

search: setup ## random search with Optuna, 2 workers sharing one SQLite study (8 min 23 s measured)
	$(TR) search --preset cpu --train $(STUDY) --params lr dropout weight_decay batch_size \
	    --trials 6 --workers 2 --steps 150 --evals 3 --out runs/search

bench: setup ## images/second: training, inference, the data path vs the obvious loader
	$(TR) bench --threads 2 --out runs/bench/bench.json

# A synthetic tree the size of SVHN (train 33,402 + extra 202,353 photos; REHEARSAL_SCALE=0.1 for a
# tenth), its data step and a bounded training run of the paper's network on it, measured:
# digitStruct read, cache build, peak memory, img/s, projected epoch time (runs/rehearsal/report.md).
# CPU- and disk-heavy (about 6 GB of photos at full scale); never part of `make test`.
REHEARSAL_SCALE   ?= 1
REHEARSAL_SECONDS ?= 300
rehearsal: setup ## full-size rehearsal on synthetic SVHN-sized data: data step, bounded train, report
	$(PY) scripts/rehearsal.py --scale $(REHEARSAL_SCALE) --train-seconds $(REHEARSAL_SECONDS) \
	    --root data/rehearsal --out runs/rehearsal

# ---------------------------------------------------------------- the OCR baseline (sec. 11.2)
baseline: setup ## RapidOCR's PP-OCRv4 and v6 recognizers on the sample's photos
	$(TR) baseline --engine rapidocr --crop-widen 1.0 --split val --train $(STUDY) --out runs/baseline/rapidocr-w1.0-val
	$(TR) baseline --engine rapidocr --crop-widen 1.3 --split val --train $(STUDY) --out runs/baseline/rapidocr-w1.3-val
	$(TR) baseline --engine rapidocr --crop-widen 1.0 --split train --train $(STUDY) --out runs/baseline/rapidocr-w1.0-train
	# PP-OCRv6 small on every sample photo (the cross-validated table reads these), plain and stretched 1.5x
	for s in 1.0 1.5; do $(TR) baseline --engine rapidocr-v6 --crop-widen 1.0 --stretch $$s --threads 2 \
	    --split $(STUDY) --out runs/baseline/rapidocr-v6-s$$s-all || exit 1; done
	$(TR) baseline --engine rapidocr --crop-widen 1.0 --threads 2 --split $(STUDY) --out runs/baseline/rapidocr-v4-all

cv-table: setup ## every system on the same 5 folds of the sample: mean ± sd (after baseline, train-sample)
	$(PY) scripts/cv_table.py --folds 5 --split-seed 0 --json runs/cv-table.json \
	    transfer=$(TRANSFER_RUN)/eval/cv/predictions.jsonl \
	    transfer-adhoc=$(TRANSFER_RUN)/eval/cv/predictions.jsonl:adhoc_confidence \
	    $(if $(wildcard $(TUNED_RUN)/eval/cv/predictions.jsonl),transfer-tuned=$(TUNED_RUN)/eval/cv/predictions.jsonl) \
	    v6-digits-head-step0=$(TRANSFER_RUN)/eval/step0/predictions.jsonl \
	    rapidocr-v6-s1.5=runs/baseline/rapidocr-v6-s1.5-all/predictions.jsonl \
	    rapidocr-v6-s1.0=runs/baseline/rapidocr-v6-s1.0-all/predictions.jsonl \
	    rapidocr-v4=runs/baseline/rapidocr-v4-all/predictions.jsonl
	# the same systems on the 200 photos of the usual validation split (10%, seed 0): out of fold as well
	$(PY) scripts/cv_table.py --folds 5 --split-seed 0 --json runs/cv-table-val200.json \
	    --subset runs/baseline/rapidocr-w1.0-val/predictions.jsonl \
	    transfer=$(TRANSFER_RUN)/eval/cv/predictions.jsonl \
	    $(if $(wildcard $(TUNED_RUN)/eval/cv/predictions.jsonl),transfer-tuned=$(TUNED_RUN)/eval/cv/predictions.jsonl) \
	    v6-digits-head-step0=$(TRANSFER_RUN)/eval/step0/predictions.jsonl \
	    rapidocr-v6-s1.5=runs/baseline/rapidocr-v6-s1.5-all/predictions.jsonl \
	    rapidocr-v4=runs/baseline/rapidocr-v4-all/predictions.jsonl

compare: setup ## our sample model against the OCR baseline on the same validation photos
	$(TR) compare $(SAMPLE_RUN)/eval/val runs/baseline/rapidocr-w1.0-val runs/baseline/rapidocr-w1.3-val \
	    --names transcribe-cpu rapidocr-tight rapidocr-wide \
	    --val-preds - runs/baseline/rapidocr-w1.0-train - --out runs/compare

figures: setup ## README figures into docs/figures/ (git-ignored): contact sheet, plots, gallery shot
	mkdir -p docs/figures
	$(PY) scripts/contact_sheet.py --out docs/figures/synth-vs-real.png
	-cp $(SAMPLE_RUN)/eval/val/accuracy_coverage.png docs/figures/sample-accuracy-coverage.png
	-cp runs/compare/accuracy_coverage.png docs/figures/compare-accuracy-coverage.png
	-cp runs/learning-curve/learning_curve.png runs/lr-sweep/lr_sweep.png docs/figures/
	-chromium --headless --no-sandbox --hide-scrollbars --window-size=1280,1400 \
	    --screenshot=docs/figures/sample-gallery.png file://$(CURDIR)/$(SAMPLE_RUN)/eval/val/gallery.html
	-$(PY) scripts/serve_screenshot.py --run $(DEMO_RUN) --split data/synth/test --out docs/figures

# ---------------------------------------------------------------- the referral service (issue 13)
# `make serve` answers on http://127.0.0.1:$(SERVE_PORT): POST /v1/transcriptions, /review (the
# operator page), /status, /metrics. The token is TRANSCRIBE_TOKEN, or one made and printed at start.
#> run folder served by serve and bench-serve
SERVE_RUN  ?= $(DEMO_RUN)
#> port of `make serve`
SERVE_PORT ?= 8000
serve: setup ## the referral service on the demo run: API, review queue, operator and status pages
	test -f $(SERVE_RUN)/threshold.json || $(MAKE) demo
	$(TR) serve $(SERVE_RUN) --port $(SERVE_PORT)

bench-serve: setup ## 16 clients post 2,000 photos to the service: throughput, p50/p99, vs one process
	test -f $(SERVE_RUN)/threshold.json || $(MAKE) demo
	$(PY) scripts/bench_serve.py --run $(SERVE_RUN) --split data/synth/test --limit 2000 --clients 16 \
	    --threads 2 --out runs/bench-serve/bench.json

# Never run folders (a multi-day runs/svhn among them): those go one at a time with clean-runs.
clean: ## remove caches and generated files: data/cache, docs/figures, Python and pytest caches; keeps runs/ and data
	rm -rf data/cache docs/figures .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-runs: ## remove the one run folder RUN, given explicitly: make clean-runs RUN=runs/demo
	@test "$(origin RUN)" = "command line" || { echo "make clean-runs: name the run folder: make clean-runs RUN=runs/..."; exit 2; }
	@test -d "$(RUN)" || { echo "make clean-runs: $(RUN) is not a folder"; exit 2; }
	rm -rf -- "$(RUN)"
