#!/usr/bin/env bash
# Run the paho-internals test module (tests/publish/test_paho_client.py, plus any test paths
# given as arguments) under every supported paho-mqtt minor version, each in a throwaway venv
# under ${PAHO_VENVS:-/tmp/edged-paho}. The versions: PAHO_VERSIONS (default: the minors that
# pyproject.toml admits). Usage, from the repo root:
#   bash scripts/paho-compat.sh [more test paths...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
versions="${PAHO_VERSIONS:-2.0.0 2.1.0 2.2.0}"
base="${PAHO_VENVS:-/tmp/edged-paho}"
python="${PYTHON:-python3}"
tests=(tests/publish/test_paho_client.py "$@")
failed=""
for v in $versions; do
  venv="$base/$v"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import paho.mqtt as m, sys; sys.exit(m.__version__ != '$v')"; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q -U pip
    # The package's dependencies that the publish tests import (not the TFLite runtime).
    "$venv/bin/pip" install -q "paho-mqtt==$v" "pydantic>=2.6" "numpy>=1.24" "pillow>=10" \
      "cryptography>=42" "pytest>=8" "hypothesis>=6.100"
  fi
  echo "== paho-mqtt $v"
  if ! (cd "$root" && PYTHONPATH="$root" "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"); then
    failed="$failed $v"
  fi
done
if [ -n "$failed" ]; then
  echo "failed under paho-mqtt:$failed" >&2
  exit 1
fi
echo "paho-mqtt $versions: all passed"
