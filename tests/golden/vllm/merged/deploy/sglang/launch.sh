#!/usr/bin/env bash
# SGLang: vLLM serving demo (written by localserve `export --target vllm`).
# Layout: tensor parallel 1 x pipeline parallel 1 on 1 node(s) of 1 GPU(s); host memory per pod 7Gi (the weights it loads + 4 GiB runtime, assumed).
# Run from anywhere: the export folder is this file's grandparent. SGLANG_PYTHON selects the Python that has SGLang (default: python3).
# Serving features: prefix caching: on; speculative decoding: off; structured outputs (response_format json_schema): auto backend.
set -euo pipefail
EXPORT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${SGLANG_PYTHON:-python3}"
exec "$PY" -m sglang.launch_server \
  --model-path "$EXPORT/model" \
  --served-model-name demo \
  --host 0.0.0.0 \
  --port 8000 \
  --tp-size 1 \
  --pp-size 1 \
  --dtype auto \
  --mem-fraction-static 0.9
