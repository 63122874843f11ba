# Sourced by bootstrap_vllm.sh and bootstrap_gpuquant.sh: a virtualenv of its own for a package whose
# pins conflict with localserve's, on the same CPU torch.
#
#   side_venv NAME VENV PACKAGES IMPORT_CHECK [REMOVE...]
#
# PACKAGES is one requirement or several separated by spaces, installed in one resolve.
# torch is installed first and pinned (+cpu as a constraint), or PACKAGE would resolve a different (CUDA)
# torch; the packages named in REMOVE are uninstalled after it; IMPORT_CHECK is Python code that must
# import cleanly before the stamp is written. Idempotent: VENV/.localserve-NAME records the recipe (torch,
# PACKAGE, what was removed); a rerun with the same recipe does nothing.

SIDE_VENV_TORCH="2.13.0"

side_venv() {
  local name="$1" venv="$2" package="$3" import_check="$4"
  shift 4
  local recipe="torch==$SIDE_VENV_TORCH $package${*:+ minus $*}"
  local stamp="$venv/.localserve-$name" py="${PYTHON:-python3.11}" constraints
  if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
    return 0
  fi
  command -v "$py" >/dev/null 2>&1 || py=python3
  _side_log() { printf '\033[1m[bootstrap-%s]\033[0m %s\n' "$name" "$*" >&2; }
  _side_pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

  mkdir -p "${LOCALSERVE_HOME:-$HOME/.cache/localserve}"
  if [ ! -x "$venv/bin/python" ]; then
    _side_log "creating virtualenv $venv"
    "$py" -m venv "$venv"
  fi
  _side_log "installing torch==$SIDE_VENV_TORCH"
  _side_pip install "torch==$SIDE_VENV_TORCH"
  constraints="$(mktemp)"
  echo "torch==$SIDE_VENV_TORCH+cpu" >"$constraints"
  _side_log "installing $package"
  # shellcheck disable=SC2086  # several requirements, one per word
  if ! _side_pip install -c "$constraints" $package; then
    rm -f "$constraints"
    return 1
  fi
  rm -f "$constraints"
  if [ "$#" -gt 0 ]; then
    _side_pip uninstall -y "$@" >/dev/null 2>&1 || true
  fi
  "$venv/bin/python" -c "$import_check" >/dev/null
  echo "$recipe" >"$stamp"
  _side_log "ready: $venv"
}
