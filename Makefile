# Everything a user runs. `make demo` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a GPU machine: `make install JAX_EXTRA=cuda12` (or cuda13) installs the CUDA build of jaxlib.
JAX_EXTRA ?=
CONFIG ?= fast
DATA_DIR ?= $(HOME)/tensorflow_datasets
MANUAL_DIR ?= $(HOME)/pannuke
WORKDIR ?= runs/$(CONFIG)
EPOCHS ?=
SPLIT ?= paper_test
INPUT ?=
DATA ?=
OUT ?= predictions
ARGS ?=

STAMP := $(VENV)/.installed$(if $(JAX_EXTRA),-$(JAX_EXTRA))

.PHONY: install test test-slow test-all lint demo data train train-heads train-all evaluate predict \
        bench bench-ops bench-evaluation bench-input bench-model bench-peer bench-learning bench-slide bench-census clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(if $(JAX_EXTRA),$(PY) -m pip install --quiet 'jax[$(JAX_EXTRA)]')
	@touch $@

# Two test processes, a test file each at a time (XLA compiles single-threaded: 3.6 min instead of 5.6 on
# 2 cores). TEST_WORKERS=0 runs them all in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test: install
	$(PYTEST)

# The long tests (`slow`): learning, kill -9 and resume, two devices, the installed wheel, a real model
# through the slide path. CI runs them after `make test`.
test-slow: install
	$(PYTEST) -m slow

test-all: install
	$(PYTEST) -m ''

lint: install
	$(VENV)/bin/ruff check maskrcnn tests experiments

# The main job on a generated synthetic sample (CPU, about 7 minutes on 2 cores): data, tfds build,
# train, evaluate.
demo: install
	$(VENV)/bin/maskrcnn demo $(ARGS)

# Build PanNuke (both configs, all splits) from the three folds downloaded by hand into MANUAL_DIR.
data: install
	$(VENV)/bin/tfds build maskrcnn/datasets/pannuke --manual_dir $(MANUAL_DIR) --data_dir $(DATA_DIR) --file_format array_record

TRAIN := $(VENV)/bin/maskrcnn train --config $(CONFIG) --data-dir $(DATA_DIR) --workdir $(WORKDIR) \
         $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(INIT),--init $(INIT)) $(ARGS)

# The paper's two stages (heads, then all layers); resume a killed run with ARGS=--resume.
train: install
	$(TRAIN)

train-heads: install
	$(TRAIN) --stage heads

train-all: install
	$(TRAIN) --stage all

evaluate: install
	$(VENV)/bin/maskrcnn evaluate --workdir $(WORKDIR) --split "$(SPLIT)" --data-dir $(DATA_DIR) $(ARGS)

# Segment your own images: make predict INPUT=slides/ (PNG, JPEG or TIFF of any size).
predict: install
	$(VENV)/bin/maskrcnn predict $(INPUT) --workdir $(WORKDIR) --out $(OUT) $(ARGS)

bench: bench-ops bench-evaluation bench-input bench-model

bench-ops: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) experiments/bench_ops.py

bench-evaluation: install
	$(PY) experiments/bench_evaluation.py

bench-input: install
	$(PY) experiments/bench_input_pipeline.py

bench-model: install
	$(PY) experiments/bench_model.py

# The train step's XLA programs read without a GPU: cost analysis and the census of sorts, top-k, gathers,
# scatters and loops (`fast` at a GPU's batch 16, bf16).
bench-census: install
	$(PY) experiments/bench_census.py $(ARGS)

# Not part of `make bench`: downloads torch and torchvision (the optional `peer` extra) to time them, into
# a venv of their own: with torch in .venv, a `make test` worker that loads torch beside XLA crashed.
bench-peer:
	$(MAKE) install VENV=.venv-peer
	.venv-peer/bin/python -m pip install --quiet -e '.[peer]'
	.venv-peer/bin/python experiments/bench_peer.py $(ARGS)

# Whole-slide path against the model alone, tiles per second (tiny preset; ARGS="--config fast" on a GPU).
bench-slide: install
	$(PY) experiments/bench_slide.py $(ARGS)

# Not part of `make bench`: about an hour on 2 CPU cores (experiments/results/learning.md), on real tiles
# that may not be shared, so DATA is given by hand: the consep_train folder (consep_train.npz,
# make_pannuke_fold.py). Scratch files go to runs/learning. ARGS="--images 100000 --set train.batch_size=16"
# on a GPU.
bench-learning: install
	@test -n "$(DATA)" || { echo "usage: make bench-learning DATA=/path/to/consep_train"; exit 2; }
	$(PY) experiments/bench_learning.py --data "$(DATA)" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
