# Sourced by bootstrap_vllm.sh and bootstrap_gpuquant.sh: a virtualenv of its own for a package whose
# pins conflict with localserve's, on the same CPU torch.
#
#   side_venv NAME VENV RECIPE PACKAGE IMPORT_CHECK [AFTER_INSTALL]
#
# Idempotent: VENV/.localserve-NAME records RECIPE; a rerun with the same recipe does nothing. torch is
# installed first and pinned (+cpu as a constraint), or PACKAGE would resolve a different (CUDA) torch.
# AFTER_INSTALL, when given, is a shell command run after PACKAGE is installed; IMPORT_CHECK is Python code
# that must import cleanly before the stamp is written.

SIDE_VENV_TORCH="2.13.0"

side_venv() {
  local name="$1" venv="$2" recipe="$3" package="$4" import_check="$5" after_install="${6:-}"
  local stamp="$venv/.localserve-$name" py="${PYTHON:-python3.11}" constraints
  if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
    return 0
  fi
  command -v "$py" >/dev/null 2>&1 || py=python3
  _side_log() { printf '\033[1m[bootstrap-%s]\033[0m %s\n' "$name" "$*" >&2; }

  mkdir -p "${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
  if [ ! -x "$venv/bin/python" ]; then
    _side_log "creating virtualenv $venv"
    "$py" -m venv "$venv"
  fi
  _side_log "installing torch==$SIDE_VENV_TORCH"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install "torch==$SIDE_VENV_TORCH"
  constraints="$(mktemp)"
  echo "torch==$SIDE_VENV_TORCH+cpu" >"$constraints"
  _side_log "installing $package"
  if ! "$venv/bin/python" -m pip --disable-pip-version-check -q install -c "$constraints" "$package"; then
    rm -f "$constraints"
    return 1
  fi
  rm -f "$constraints"
  if [ -n "$after_install" ]; then
    eval "$after_install"
  fi
  "$venv/bin/python" -c "$import_check" >/dev/null
  echo "$recipe" >"$stamp"
  _side_log "ready: $venv"
}
