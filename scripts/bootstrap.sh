#!/usr/bin/env bash
# Install the OS packages edged's demo and tests need, when missing: python3-venv, mosquitto;
# with the argument "cluster" also rabbitmq-server (the broker-cluster tests, tests/fleet/;
# CI passes it). Uses apt-get (Debian / Raspberry Pi OS); sudo when not root.
set -euo pipefail
need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
if [ "${1:-}" = cluster ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  need+=(rabbitmq-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing OS packages: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${need[@]}" >/dev/null
# The Debian package enables a system-wide broker; the demo and tests start their own.
# rabbitmq-server too: the cluster tests start their own nodes, so the system one is disabled.
if [[ " ${need[*]} " == *" rabbitmq-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
fi
