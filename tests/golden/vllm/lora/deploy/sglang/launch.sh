#!/usr/bin/env bash
# SGLang: vLLM serving smol (written by localserve `export --target vllm`).
# Layout: tensor parallel 1 x pipeline parallel 1 on 1 node(s) of 1 GPU(s); host memory per pod 7Gi (the weights it loads + 4 GiB runtime, assumed).
# Run from anywhere: the export folder is this file's grandparent. SGLANG_PYTHON selects the Python that has SGLang (default: python3).
# Serving features: prefix caching: on; speculative decoding: off; structured outputs (response_format json_schema): auto backend.
set -euo pipefail
EXPORT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${SGLANG_PYTHON:-python3}"
export VLLM_ALLOW_RUNTIME_LORA_UPDATING="${VLLM_ALLOW_RUNTIME_LORA_UPDATING:-True}"
exec "$PY" -m sglang.launch_server \
  --model-path "$EXPORT/model" \
  --served-model-name smol \
  --host 0.0.0.0 \
  --port 8000 \
  --tp-size 1 \
  --pp-size 1 \
  --dtype auto \
  --mem-fraction-static 0.9 \
  --context-length 8192 \
  --max-running-requests 16 \
  --enable-lora \
  --max-lora-rank 16 \
  --max-loras-per-batch 2 \
  --max-loaded-loras 2 \
  --lora-paths "support=$EXPORT/adapters/support" "legal=$EXPORT/adapters/legal"
