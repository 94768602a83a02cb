#!/usr/bin/env bash
# The demo: edged classifies the bundled sample images with the bundled model and publishes to
# a local Mosquitto (started here if none listens on localhost:1883); a subscriber prints what
# it receives.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
PORT=1883
export PATH="$PATH:/usr/sbin"

listening() { "$BIN/python" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $PORT)))"; }

started_broker=""
if ! listening; then
  echo "starting mosquitto on localhost:$PORT" >&2
  mosquitto -c scripts/mosquitto-demo.conf -d
  started_broker=yes
  for _ in $(seq 50); do listening && break; sleep 0.1; done
fi
cleanup() { [ -n "$started_broker" ] && pkill -f 'mosquitto -c scripts/mosquitto-demo.conf' || true; }
trap cleanup EXIT

n=$(find samples -name '*.png' | wc -l)
mosquitto_sub -h localhost -p $PORT -t 'edged/demo/prediction' -C "$n" -W 60 &
sub=$!
sleep 0.5
"$BIN/edged" run -c config/demo.toml
wait $sub
echo "received $n predictions; retained state and availability:" >&2
mosquitto_sub -h localhost -p $PORT -t 'edged/demo/state' -t 'edged/demo/availability' -v -W 1 -C 2 || true
