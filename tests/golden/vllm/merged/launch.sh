#!/usr/bin/env bash
# Start vLLM for demo from vllm-config.yaml (written by localserve). Extra arguments are
# passed to vLLM and override the config file, e.g.:  ./launch.sh --host 0.0.0.0 --port 8080
# VLLM_PYTHON selects the Python that has vLLM installed (default: python3).
# Serving features (vllm-config.yaml): prefix caching: on; speculative decoding: off; structured outputs (response_format json_schema): auto backend.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY="${VLLM_PYTHON:-python3}"
exec "$PY" -m vllm.entrypoints.openai.api_server --config vllm-config.yaml "$@"
