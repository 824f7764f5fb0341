# make demo: prepare Tiny Shakespeare, train a character-level GPT on the CPU, print samples.
# make test: the test suite (CPU only, no network) without the minute-long runs marked slow; make test-all: all.
# Both create .venv on first use (torch $(TORCH) first, so pip does not pull a different build).
# make test-compat: the whole suite (slow tests too) under the oldest versions the README promises
# (torch $(TORCH_OLDEST), transformers $(TRANSFORMERS_OLDEST), with $(PEFT_OLDEST), a peft of its time) in
# .venv-compat; not run by CI, which stays on the pins.
PYTHON ?= python3
# the suite on every core (pytest-xdist; conftest.py gives each worker its share of the threads), one test file to a
# worker (--dist loadfile: a file's module fixtures, a trained run or a started server, are made once);
# PYTEST_JOBS= runs it in one process
PYTEST_JOBS ?= -n auto --dist loadfile
TORCH ?= torch==2.13.0
TORCH_OLDEST ?= torch==2.6.0
TRANSFORMERS_OLDEST ?= transformers==4.40.0
PEFT_OLDEST ?= peft==0.11.1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-all test-compat bench gpu-check clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python data/shakespeare_char/prepare.py
	$(BIN)/python train.py config/train_shakespeare_char_cpu.py
	$(BIN)/python sample.py --out_dir=out-shakespeare-char-cpu --num_samples=2 --max_new_tokens=400

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_JOBS) tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_JOBS) --durations=25 -m "slow or not slow" tests

test-compat:
	test -x .venv-compat/bin/python || $(PYTHON) -m venv .venv-compat
	.venv-compat/bin/python -m pip install -q "$(TORCH_OLDEST)"
	.venv-compat/bin/python -m pip install -q -r requirements.txt "$(TRANSFORMERS_OLDEST)" "$(TORCH_OLDEST)" "$(PEFT_OLDEST)"
	.venv-compat/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	.venv-compat/bin/python -m pytest -q $(PYTEST_JOBS) -m "slow or not slow" tests

bench: $(STAMP)
	$(BIN)/python bench.py

# make gpu-check: on one NVIDIA GPU, in under 8 minutes, the cuda tests, training and decoding speed, determinism and
# the GPU speedrun, as one table (and gpu_check.json); against nanoGPT where ../nanoGPT is checked out
gpu-check: $(STAMP)
	$(BIN)/python tools/gpu_check.py

clean:
	rm -rf out-* __pycache__ .pytest_cache
