#!/usr/bin/env bash
# Start vLLM for big from vllm-config.yaml (written by localserve). Extra arguments are
# passed to vLLM and override the config file, e.g.:  ./launch.sh --host 0.0.0.0 --port 8080
# VLLM_PYTHON selects the Python that has vLLM installed (default: python3).
# Serving features (vllm-config.yaml): prefix caching: on; speculative decoding: off; structured outputs (response_format json_schema): auto backend.
#
# Multi-node (2 nodes, Ray): on the head node run  ./launch.sh head
# and on each of the other 1 node(s)          ./launch.sh worker HEAD_ADDRESS
# RAY_PORT sets the head's port (default 6379); RAY_START_ARGS adds options to this node's `ray start`,
# e.g. RAY_START_ARGS="--node-ip-address=10.0.0.5 --num-cpus=8" on a host with several networks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export VLLM_ALLOW_RUNTIME_LORA_UPDATING="${VLLM_ALLOW_RUNTIME_LORA_UPDATING:-True}"
PY="${VLLM_PYTHON:-python3}"
role="${1:-head}"
ray_port="${RAY_PORT:-6379}"
case "$role" in
  head)
    shift || true
    ray start --head --port="$ray_port" ${RAY_START_ARGS:-}
    # vLLM places its pipeline stages once every node has joined the Ray cluster.
    until [ "$(ray status 2>/dev/null | grep -c ' node_')" -ge 2 ]; do sleep 5; done
    ;;
  worker)
    head="${2:?usage: ./launch.sh worker HEAD_ADDRESS}"
    exec ray start --block --address="$head:$ray_port" ${RAY_START_ARGS:-}
    ;;
  *)
    echo "usage: ./launch.sh head [VLLM ARGS...] | ./launch.sh worker HEAD_ADDRESS" >&2
    exit 2
    ;;
esac
exec "$PY" -m vllm.entrypoints.openai.api_server --config vllm-config.yaml "$@"
