#!/usr/bin/env bash
# SGLang: vLLM serving big (written by localserve `export --target vllm`).
# Layout: tensor parallel 8 x pipeline parallel 2 on 2 node(s) of 8 GPU(s); host memory per pod 6Gi (the weights it loads + 4 GiB runtime, assumed).
# Run from anywhere: the export folder is this file's grandparent. SGLANG_PYTHON selects the Python that has SGLang (default: python3).
# Serving features: prefix caching: on; speculative decoding: off; structured outputs (response_format json_schema): auto backend.
# 2 nodes: on the first  ./launch.sh 0 FIRST_NODE_ADDRESS, on node i  ./launch.sh i FIRST_NODE_ADDRESS
set -euo pipefail
EXPORT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${SGLANG_PYTHON:-python3}"
export VLLM_ALLOW_RUNTIME_LORA_UPDATING="${VLLM_ALLOW_RUNTIME_LORA_UPDATING:-True}"
rank="${1:?usage: ./launch.sh NODE_RANK FIRST_NODE_ADDRESS}"
head="${2:?usage: ./launch.sh NODE_RANK FIRST_NODE_ADDRESS}"
exec "$PY" -m sglang.launch_server \
  --model-path "$EXPORT/model" \
  --served-model-name big \
  --host 0.0.0.0 \
  --port 8000 \
  --tp-size 8 \
  --pp-size 2 \
  --dtype auto \
  --mem-fraction-static 0.9 \
  --context-length 32768 \
  --max-running-requests 64 \
  --enable-lora \
  --max-lora-rank 16 \
  --max-loras-per-batch 2 \
  --max-loaded-loras 2 \
  --lora-paths "support=$EXPORT/adapters/support" "legal=$EXPORT/adapters/legal" \
  --nnodes 2 \
  --node-rank "$rank" \
  --dist-init-addr "$head:20000"
