#!/usr/bin/env bash
# Run the model tests on tflite-runtime 2.14 (numpy<2) in a second venv, where wheels exist.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_TFL=${VENV_TFL:-.venv-tflite}
if ! python3 -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))'; then
  echo "tflite-runtime backend: SKIPPED (tflite-runtime 2.14 has wheels for Python 3.9-3.11 only)"
  exit 0
fi
if [ ! -f "$VENV_TFL/.installed-2" ]; then
  python3 -m venv "$VENV_TFL"
  "$VENV_TFL/bin/pip" install -q -U pip
  "$VENV_TFL/bin/pip" install -q 'tflite-runtime==2.14.0' 'numpy<2' pillow 'pydantic>=2.6' \
    'paho-mqtt>=2.1,<3' cryptography pytest hypothesis
  "$VENV_TFL/bin/pip" install -q --no-deps -e .
  touch "$VENV_TFL/.installed-2"
fi
EDGED_TEST_BACKEND=tflite-runtime "$VENV_TFL/bin/pytest" tests/model -q -p no:cacheprovider
