# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: make .venv with hvsock installed.
# Usage: setup_venv EXTRAS  (e.g. "" or "[dev]")
set -euo pipefail

PY=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "need root for: $*" >&2; return 1
  fi
}

apt_install() {
  # apt_install PKG... : install the Debian packages not yet installed.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing packages ${missing[*]} and no apt-get: install them by hand" >&2
    return 1
  fi
  echo "installing: ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_venv() {
  local extras=$1
  if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras}"
}
