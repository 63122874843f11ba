# The two set-up commands of the README. Both create or reuse the virtualenv in
# $(LOCALSERVE_HOME)/venv (default ~/.cache/localserve/venv) and install what is missing.
LOCALSERVE_HOME ?= $(HOME)/.cache/localserve
VENV ?= $(LOCALSERVE_HOME)/venv
export LOCALSERVE_HOME

.PHONY: demo test test-fast bootstrap bootstrap-vllm bootstrap-gpuquant bootstrap-browser bench

bootstrap:
	bash scripts/bootstrap.sh

# The real vLLM (CPU build) in its own virtualenv, $(LOCALSERVE_HOME)/vllm-venv: once, ~2 minutes.
bootstrap-vllm:
	bash scripts/bootstrap_vllm.sh

# llm-compressor (GPTQ/FP8/int8 for vLLM) in its own virtualenv, $(LOCALSERVE_HOME)/gpuquant-venv: once, ~2 minutes.
bootstrap-gpuquant:
	bash scripts/bootstrap_gpuquant.sh

# Debian's Chromium (headless), for the test that opens the HTML evaluation report in a browser.
bootstrap-browser:
	bash scripts/bootstrap_browser.sh

# The main job on the embedded default: export the demo adapter to Q4_K_M and show its answer.
demo: bootstrap
	$(VENV)/bin/localserve export examples/demo-adapter --quant Q4_K_M --out exports/demo --name demo

# Every test tier, once (fast tiny-model tests, Go template tests, slow end-to-end tests, the real vLLM
# serving merged, LoRA and GPU-quantized exports).
# Two pytest workers (pytest-xdist), each pinned to a core of its own with everything it starts: the
# suite waits on servers, children and imports often enough that two keep both cores busy (measured warm on
# 2 cores: 28.4 min in one process, 16.8 with two). A test file is one unit of work, heaviest tier first
# (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST = $(VENV)/bin/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

test: bootstrap bootstrap-vllm bootstrap-gpuquant bootstrap-browser
	$(PYTEST)

test-fast: bootstrap
	$(PYTEST) -m "not slow"

bench: bootstrap
	$(VENV)/bin/python scripts/bench_export.py
