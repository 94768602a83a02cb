#!/usr/bin/env bash
# The whole test suite: lint, type checks, pytest (real Mosquitto), and the model tests again
# on the second interpreter backend (tflite-runtime, which needs numpy<2).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export PATH="$PATH:/usr/sbin"
"$BIN/ruff" check .
"$BIN/ruff" format --check .
"$BIN/mypy"
"$BIN/pytest" "$@"
bash scripts/test-tflite-runtime.sh
