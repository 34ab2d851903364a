#!/bin/sh
# Runs a Python test helper in the project's venv (.venv, made by `.ci/bootstrap`).
# Exits 77 (meson's skip) when the venv or the reference packages are missing, so a plain
# `meson test` still runs everywhere.
root=$(cd "$(dirname "$0")/../.." && pwd)
py="${SAFESHARD_PYTHON:-$root/.venv/bin/python3}"
if [ ! -x "$py" ] || ! "$py" -c 'import safetensors, numpy, ml_dtypes' 2>/dev/null; then
    echo "skip: no venv with safetensors/numpy/ml_dtypes at $py (run: bash .ci/bootstrap test)"
    exit 77
fi
exec "$py" "$@"
