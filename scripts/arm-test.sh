#!/usr/bin/env bash
# The ARM job: scripts/install.sh and edged, run on Debian for the Raspberry Pi's architectures
# under emulation (qemu-user-static through binfmt_misc, roots made by debootstrap).
#
# For each root (default: bookworm-arm64 and bookworm-armhf):
#   root     a minimal Debian root, built once and cached under $EDGED_ARM_CACHE
#            (/var/cache/edged-arm/<release>-<arch>-<hash of what the root is made from>)
#   install  scripts/install.sh run inside a throwaway overlay of that root, as root, exactly as
#            on a Pi (apt step, venv, pip install, the installer's own correctness self-check);
#            the first run's result is cached as a layer keyed by install.sh + pyproject.toml,
#            and later runs run install.sh again over it (reinstalling edged when its sources
#            changed, self-check every time); when install.sh or pyproject.toml changed and a
#            fresh install does not fit the budget, the new install.sh runs over the newest
#            older install instead (the upgrade path; it says so); EDGED_ARM_FRESH=1 forces a
#            fresh install
#   classify `edged classify` on real models from ../shared/realdata, asserting their labels
#            (skipped, with the reason, when the data is absent)
#   golden   the demo bundle's golden vector reproduced by the installed interpreter
#   daemon   the demo daemon end to end against a Mosquitto on the host (loopback), asserting
#            that a prediction for every sample image arrives
# On armhf the install runs as a 32-bit userland on a 64-bit kernel (`uname -m` aarch64, Python
# under linux32 sees armv8l: stand-ins, as qemu-arm reports armv7l), the checks after it as
# armv7l (a Pi 2/3 with a 32-bit kernel).
#
# usage: sudo scripts/arm-test.sh [--build-only] [--no-build] [--only RELEASE-ARCH ...]
#
#   --build-only   build the missing roots, whatever the budget, and run nothing (do this once
#                  on a CI machine: the first build of a root takes 10-20 minutes under emulation)
#   --no-build     never build: a root that is not cached is skipped with the reason
#   --only R-A     this root only (repeatable): bookworm-arm64, bookworm-armhf, trixie-arm64
#
# Time budget: EDGED_ARM_BUDGET_S (default 1500 s). A root is built only when the time left
# covers EDGED_ARM_BUILD_ESTIMATE_S (default 1200 s), a test run only when it covers
# EDGED_ARM_RUN_ESTIMATE_S (default 420 s), or EDGED_ARM_FRESH_ESTIMATE_S (default 1500 s)
# when the install layer must be made afresh; otherwise that part is skipped and says so.
# Measured on a shared 2-core x86-64 host (load ~10), everything under nice 15: roots
# (debootstrap) arm64 680 s, armhf 924 s; fresh installs arm64 778 s, armhf 751 s (runs of
# 801 s and 853 s with the checks); a cached arm64 run (install.sh again, reinstalling edged
# after a source change, golden, 3 real models, the daemon) 291-331 s, a cached armhf run with
# edged unchanged 60 s; the whole job as CI runs it, both roots and installs cached, 357 s.
# Where the job cannot run at all (not root, no binfmt_misc, no qemu, no debootstrap, no
# network for the first build), it prints one "SKIPPED: <reason>" line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PROG=arm-test
CACHE=${EDGED_ARM_CACHE:-/var/cache/edged-arm}
BUDGET_S=${EDGED_ARM_BUDGET_S:-1500}
BUILD_ESTIMATE_S=${EDGED_ARM_BUILD_ESTIMATE_S:-1200}
RUN_ESTIMATE_S=${EDGED_ARM_RUN_ESTIMATE_S:-420}
FRESH_ESTIMATE_S=${EDGED_ARM_FRESH_ESTIMATE_S:-1500}
REALDATA=${EDGEDTEST_REALDATA:-$REPO/../shared/realdata}
START=$SECONDS
ROOT_FORMAT=1 # bump when the way a root is made changes (part of the cache key)

build=auto
run_tests=yes
only=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-only) run_tests=no ;;
    --no-build) build=no ;;
    --only)
      [ $# -ge 2 ] || {
        echo "$PROG: --only needs a value" >&2
        exit 2
      }
      only+=("$2")
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "$PROG: unknown argument: $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done
[ ${#only[@]} -gt 0 ] || only=(bookworm-arm64 bookworm-armhf)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
skip_all() {
  echo "$PROG: SKIPPED: $*"
  exit 0
}
elapsed() { echo $((SECONDS - START)); }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# -- can this machine emulate ARM at all? -------------------------------------------------

[ "$(id -u)" -eq 0 ] || skip_all "needs root (debootstrap, chroot, mounts); run it with sudo"
need_pkgs=()
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] && [ -x /usr/bin/qemu-arm-static ] || need_pkgs+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || need_pkgs+=(binfmt-support)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip_all "${need_pkgs[*]} missing and no apt-get to install them"
  log "installing ${need_pkgs[*]} ..."
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null 2>&1 ||
    skip_all "cannot install ${need_pkgs[*]} (apt-get install failed)"
fi
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e $BINFMT/register ]; then
  mount -t binfmt_misc binfmt_misc $BINFMT 2>/dev/null ||
    skip_all "cannot mount binfmt_misc at $BINFMT (a container without the privilege?)"
fi
for q in aarch64 arm; do
  if [ ! -e $BINFMT/qemu-$q ]; then update-binfmts --enable "qemu-$q" >/dev/null 2>&1 || true; fi
  grep -qx enabled $BINFMT/qemu-$q 2>/dev/null ||
    skip_all "no binfmt_misc handler for $q binaries (update-binfmts --enable qemu-$q failed)"
  # F: the interpreter is opened when registered, so it works inside a chroot without a copy.
  grep -q '^flags: .*F' $BINFMT/qemu-$q ||
    skip_all "the qemu-$q binfmt handler lacks the F (fix-binary) flag; chroots cannot use it"
done

# The Debian mirror this machine's apt uses (the first non-security deb URI), so the roots use
# the same one; deb.debian.org when none is configured.
host_mirror() {
  local uri
  uri=$(
    {
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) {print $i; break}}'
    } | grep -v -- '-security' | grep -E '/debian/?$' | head -n 1
  )
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${EDGED_ARM_MIRROR:-$(host_mirror)}
# pip's index and CA bundle as this machine's pip is configured (file:// extras are not visible
# in a root; a TLS-inspecting proxy's CA is only in the host's bundle).
pip_config() { pip3 config get "global.$1" 2>/dev/null || python3 -m pip config get "global.$1" 2>/dev/null || true; }
PIP_INDEX=${PIP_INDEX_URL:-$(pip_config index-url)}
HOST_CA=${PIP_CERT:-$(pip_config cert)}
if [ -z "$HOST_CA" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then HOST_CA=/etc/ssl/certs/ca-certificates.crt; fi
ROOT_CA=/etc/ssl/certs/edged-arm-host-ca.crt # where the host's bundle goes in a root

# What each root is made of: what scripts/install.sh finds on a Raspberry Pi OS Lite image
# before it runs (python3; on armhf the OS's numpy and Pillow, which have no 32-bit ARM wheels),
# plus most of what the installer's apt step wants.
root_packages() { # ARCH
  local p=(python3 python3-venv ca-certificates mosquitto-clients procps)
  # (not python3-cryptography: it depends on the virtual python3-cffi-backend-api-min/-max,
  # which debootstrap does not resolve, so it stays unconfigured; install.sh's apt step installs
  # it with apt, which does)
  case $1 in armhf) p+=(python3-numpy python3-pil) ;; esac
  (
    IFS=,
    echo "${p[*]}"
  )
}
root_dir() { # RELEASE ARCH
  local key
  key=$(printf '%s\n' "$ROOT_FORMAT" "$1" "$2" "$MIRROR" "$(root_packages "$2")" | sha256sum | cut -c1-12)
  echo "$CACHE/$1-$2-$key"
}

build_root() { # RELEASE ARCH DIR
  local release=$1 arch=$2 dir=$3 t0=$SECONDS
  rm -rf -- "$dir.partial"
  mkdir -p -- "$CACHE"
  log "building $release-$arch at $dir (debootstrap from $MIRROR; minutes under emulation) ..."
  if ! nice -n 15 debootstrap --arch="$arch" --variant=minbase --include="$(root_packages "$arch")" \
    "$release" "$dir.partial" "$MIRROR" >"$CACHE/$release-$arch.build.log" 2>&1; then
    log "debootstrap failed; last lines of $CACHE/$release-$arch.build.log:"
    tail -n 5 "$CACHE/$release-$arch.build.log" >&2
    cp -f -- "$dir.partial/debootstrap/debootstrap.log" "$CACHE/$release-$arch.debootstrap.log" 2>/dev/null || true
    rm -rf -- "$dir.partial"
    return 1
  fi
  rm -rf -- "$dir.partial/var/cache/apt/archives/"*.deb
  echo "$((SECONDS - t0))" >"$dir.partial/.edged-build-seconds"
  mv -- "$dir.partial" "$dir"
  log "built $release-$arch in $((SECONDS - t0)) s"
}

# -- one test run in a throwaway overlay of a cached root ----------------------------------

CHECKOUT_PARTS=(pyproject.toml README.md LICENSE edged scripts config systemd models samples)
# Real models, the photos they are run on, and what they must say (labels as in
# tests/model/test_classifier_realdata.py). One `edged classify` per model: each start of the
# interpreter costs seconds under emulation.
REAL_CHECKS=(
  "coral_mobilenet_v2_1.0_224_quant.tflite|coral_imagenet_labels.txt|wasmedge/grace_hopper.jpg=military uniform"
  "coral_mobilenet_v2_1.0_224_inat_bird_quant.tflite|coral_inat_bird_labels.txt|coral/bird.bmp=Poecile atricapillus (Black-capped Chickadee)"
  "mlperf_tiny_vww_96_int8.tflite||coral/grace_hopper.bmp=class_1 coral/cat.bmp=class_0 coral/hot_dog.jpg=class_0"
)

mounts=()
work=""
daemon_pid=""
broker_pid=""
cleanup_run() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  daemon_pid="" broker_pid=""
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  mounts=()
  if [ -n "$work" ]; then rm -rf --one-file-system -- "$work"; fi
  work=""
}
trap cleanup_run EXIT

in_root() { # run a command inside the root, with a clean environment (and $QEMU_CPU if set)
  local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
  if [ -n "$PIP_INDEX" ]; then envs+=("PIP_INDEX_URL=$PIP_INDEX"); fi
  if [ -n "$HOST_CA" ]; then envs+=("PIP_CERT=$ROOT_CA" "SSL_CERT_FILE=$ROOT_CA"); fi
  if [ -n "${QEMU_CPU:-}" ]; then envs+=("QEMU_CPU=$QEMU_CPU"); fi
  if [ -n "${ARMV8L:-}" ]; then envs+=("PYTHONPATH=$ARMV8L_SHIM"); fi
  nice -n 15 chroot "$merged" /usr/bin/env -i "${envs[@]}" "$@"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# classify checks: stdout of `edged classify` (JSON lines) against "path=label" expectations
check_labels() { # OUTPUT EXPECT...
  python3 - "$@" <<'EOF'
import json
import sys

out, wants = sys.argv[1], sys.argv[2:]
got = {}
for line in out.splitlines():
    if line.startswith("{"):
        d = json.loads(line)
        got[d["image"]] = (d["label"], d["score"])
bad = []
for want in wants:
    path, label = want.split("=", 1)
    have = got.get(path)
    if have is None or have[0] != label:
        bad.append(f"{path}: {have[0] if have else 'no result'!r}, want {label!r}")
    else:
        print(f"  {path.rsplit('/', 1)[-1]} -> {label} ({have[1]:.3f})")
if bad:
    print("; ".join(bad))
    sys.exit(1)
EOF
}

classify_checks() { # NAME: every REAL_CHECKS entry through the installed `edged classify`
  local name=$1 spec model labels pairs cmd pair t out res ok=1
  for spec in "${REAL_CHECKS[@]}"; do
    IFS='|' read -r model labels pairs <<<"$spec"
    cmd=(/opt/edged/venv/bin/edged classify "/realdata/models/$model" --top-k 1)
    if [ -n "$labels" ]; then cmd+=(--labels "/realdata/models/$labels"); fi
    local expects=()
    # pairs: "dir/file=label dir/file=label"; labels may hold spaces, so split before " dir/"
    while IFS= read -r pair; do
      [ -n "$pair" ] || continue
      cmd+=("/realdata/photos/${pair%%=*}")
      expects+=("/realdata/photos/$pair")
    done < <(printf '%s\n' "$pairs" | sed 's/ \([a-z]*\/\)/\n\1/g')
    t=$SECONDS
    res=""
    if out=$(in_root "${cmd[@]}" 2>&1) && res=$(check_labels "$out" "${expects[@]}"); then
      log "$name: classify $model OK in $((SECONDS - t)) s"
      printf '%s\n' "$res" >&2
    else
      log "$name: FAILED: classify $model: ${res:-$(printf '%s' "$out" | tail -n 1)}"
      ok=""
    fi
  done
  [ -n "$ok" ]
}

newest_layer() { # ROOT_DIR: the most recent install layer of that root, any installer
  local d
  d=$(ls -1td -- "$1".install-* 2>/dev/null | grep -v '\.partial$' | head -n 1 || true)
  if [ -n "$d" ] && [ -d "$d" ]; then echo "$d"; fi
}

# A 32-bit userland on a 64-bit kernel (32-bit Raspberry Pi OS on a Pi 3/4/5) as far as the
# installer can tell: `uname -m` says aarch64, and a process under the linux32 personality
# (pip, which install.sh runs through `setarch linux32`) sees armv8l. qemu-arm itself always
# reports armv7l, so a `uname` wrapper and a sitecustomize that rewrites os.uname() stand in.
ARMV8L_SHIM=/opt/edged-arm-armv8l
armv8l_shim() { # MERGED_ROOT: install the stand-ins
  mkdir -p "$1/usr/local/bin" "$1$ARMV8L_SHIM"
  printf '%s\n' '#!/bin/sh' 'if [ "$*" = -m ]; then echo aarch64; else exec /usr/bin/uname "$@"; fi' \
    >"$1/usr/local/bin/uname"
  chmod 0755 "$1/usr/local/bin/uname"
  cat >"$1$ARMV8L_SHIM/sitecustomize.py" <<'PY'
import os

_uname = os.uname


def _armv8l():
    u = _uname()
    return os.uname_result((u.sysname, u.nodename, u.release, u.version, "armv8l"))


os.uname = _armv8l
PY
}

install_layer() { # ROOT_DIR: where that root's install layer for this installer is cached
  echo "$1.install-$(cat "$REPO/scripts/install.sh" "$REPO/pyproject.toml" | sha256sum | cut -c1-12)"
}

run_root() { # NAME ARCH ROOT_DIR
  local name=$1 arch=$2 dir=$3 t0=$SECONDS t
  local ok=1
  work=$(mktemp -d /var/tmp/edged-arm.XXXXXX)
  merged=$work/root
  mkdir -p "$work/upper" "$work/wk" "$merged"
  # The install layer: the root as scripts/install.sh left it, cached per hash of what decides
  # the install (the installer, pyproject.toml's dependencies). With it, install.sh runs again
  # over a finished install (the path a `git pull` takes: edged reinstalled when its sources
  # changed, the self-check every time); without it, a fresh install, saved as that layer.
  local layer lower mode=fresh
  layer=$(install_layer "$dir")
  lower=$dir
  local older
  older=$(newest_layer "$dir")
  if [ -d "$layer" ] && [ "${EDGED_ARM_FRESH:-}" != 1 ]; then
    lower=$layer:$dir
    mode=rerun
  elif [ -n "$older" ] && [ "${EDGED_ARM_FRESH:-}" != 1 ] && [ "$(left)" -lt "$FRESH_ESTIMATE_S" ]; then
    # The installer changed since the cached install and a fresh one does not fit the budget:
    # the new install.sh runs over the older install (the upgrade path), and says so.
    lower=$older:$dir
    mode=upgrade
    layer=$older
  fi
  if mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/wk" "$merged" 2>/dev/null; then
    mounts+=("$merged")
  else
    log "$name: FAILED: cannot mount an overlay of $lower"
    cleanup_run
    return 1
  fi
  mount -t proc proc "$merged/proc" && mounts+=("$merged/proc")
  mount --bind /dev "$merged/dev" && mounts+=("$merged/dev")
  mkdir -p "$CACHE/pip-$arch" "$merged/root/.cache/pip"
  mount --bind "$CACHE/pip-$arch" "$merged/root/.cache/pip" && mounts+=("$merged/root/.cache/pip")
  cp /etc/resolv.conf "$merged/etc/resolv.conf" 2>/dev/null || true
  if [ -n "$HOST_CA" ]; then cp -- "$HOST_CA" "$merged$ROOT_CA"; fi
  mkdir -p "$merged/src/edged"
  local parts=() part
  for part in "${CHECKOUT_PARTS[@]}"; do if [ -e "$REPO/$part" ]; then parts+=("$part"); fi; done
  tar -C "$REPO" -cf - --exclude=__pycache__ --exclude='*.egg-info' "${parts[@]}" | tar -C "$merged/src/edged" -xf - ||
    {
      log "$name: FAILED: cannot copy the checkout into the root"
      cleanup_run
      return 1
    }
  local have_real=""
  if [ -d "$REALDATA/models" ]; then
    mkdir -p "$merged/realdata"
    mount --bind "$REALDATA" "$merged/realdata" && mounts+=("$merged/realdata")
    mount -o remount,bind,ro "$merged/realdata" 2>/dev/null || true
    have_real=1
  fi
  local uname_m
  uname_m=$(in_root uname -m)
  log "$name: root ready in $((SECONDS - t0)) s; userland $(in_root dpkg --print-architecture), uname -m $uname_m"

  # install: the installer as on a Pi (no systemd here: it says so and skips that step)
  t=$SECONDS
  local out
  if [ "$mode" = rerun ]; then
    log "$name: install: scripts/install.sh again over the cached install $(basename "$layer")"
  elif [ "$mode" = upgrade ]; then
    log "$name: install: NOTE: no cached install for this install.sh/pyproject.toml and no time for a fresh one (~${FRESH_ESTIMATE_S} s); the new install.sh runs over the older install $(basename "$layer") instead (run sudo scripts/arm-test.sh --only $name beforehand for a fresh one)"
  else
    log "$name: install: scripts/install.sh, fresh (minutes under emulation)"
  fi
  if [ "$arch" = armhf ]; then
    armv8l_shim "$merged"
    export ARMV8L=1
    log "$name: as a 32-bit userland on a 64-bit kernel: uname -m $(in_root uname -m), Python sees $(in_root python3 -c 'import platform; print(platform.machine())')"
  fi
  if out=$(in_root bash /src/edged/scripts/install.sh 2>&1); then
    unset ARMV8L
    rm -rf -- "$merged/usr/local/bin/uname" "$merged$ARMV8L_SHIM"
    printf '%s\n' "$out" | grep -E '^(platform|apt|edged|selfcheck|systemd|done): ' | sed "s/^/  /" >&2
    log "$name: install ($mode) OK in $((SECONDS - t)) s"
    if [ "$mode" = fresh ] && [ ! -d "$layer" ]; then
      rm -rf -- "$layer.partial"
      if cp -a "$work/upper" "$layer.partial" && rm -rf -- "$layer.partial/src" "$layer.partial/realdata" &&
        echo "$((SECONDS - t))" >"$layer.partial/.edged-install-seconds" && mv -- "$layer.partial" "$layer"; then
        log "$name: cached the install as $layer"
      else
        rm -rf -- "$layer.partial"
      fi
    fi
  else
    unset ARMV8L
    printf '%s\n' "$out" | tail -n 15 | sed "s/^/  /" >&2
    log "$name: FAILED: scripts/install.sh (after $((SECONDS - t)) s)"
    cleanup_run
    return 1
  fi
  printf '%s\n' "$out" | grep -q '^selfcheck: golden vector within' ||
    {
      log "$name: FAILED: the installer printed no selfcheck line"
      ok=""
    }

  # golden: the demo bundle's golden vector and its checks, through the daemon's own validator
  t=$SECONDS
  if out=$(in_root /opt/edged/venv/bin/python -m edged.update.validate /etc/edged/digits.edgb 2>&1) &&
    printf '%s' "$out" | grep -q '"ok": true'; then
    log "$name: golden OK in $((SECONDS - t)) s: $(printf '%s' "$out" | tail -n 1)"
  else
    log "$name: FAILED: golden: $(printf '%s' "$out" | tail -n 1)"
    ok=""
  fi

  # classify: real models on real photos
  if [ -z "$have_real" ]; then
    echo "$PROG: $name: classify SKIPPED: real models not found at $REALDATA (../shared/realdata)"
  else
    classify_checks "$name" || ok=""
  fi

  # daemon: the demo config's files source over the samples, to a Mosquitto on the host
  t=$SECONDS
  local port topic n
  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/broker.conf"
  /usr/sbin/mosquitto -c "$work/broker.conf" >"$work/broker.log" 2>&1 &
  broker_pid=$!
  topic="edged/arm-$arch/prediction"
  n=$(find "$REPO/samples" -name '*.png' | wc -l)
  cat >"$merged/tmp/arm.toml" <<EOF
device_id = "arm-$arch"
state_dir = "/var/lib/edged-arm"

[source]
type = "files"
path = "/src/edged/samples"
fps = 4
loop = false

[model]
path = "/etc/edged/digits.edgb"
top_k = 1

[mqtt]
host = "127.0.0.1"
port = $port

[publish]
mode = "every"
EOF
  sleep 0.5
  mosquitto_sub -h 127.0.0.1 -p "$port" -t "$topic" -C "$n" -W 240 >"$work/predictions" 2>&1 &
  local sub_pid=$!
  sleep 0.5
  # loop = false: the daemon exits after the last sample; `timeout` bounds it inside the root.
  in_root timeout 300 /opt/edged/venv/bin/edged run -c /tmp/arm.toml >"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  wait "$sub_pid" || true
  kill "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
  if res=$(
    python3 - "$work/predictions" "$n" <<'EOF'
import json
import sys

lines = [ln for ln in open(sys.argv[1]).read().splitlines() if ln.strip()]
want = int(sys.argv[2])
labels = []
for ln in lines:
    try:
        labels.append(json.loads(ln)["label"])
    except (ValueError, KeyError, TypeError):
        print(f"not a prediction: {ln[:120]!r}")
        sys.exit(1)
if len(labels) != want:
    print(f"{len(labels)} of {want} predictions arrived")
    sys.exit(1)
if len(set(labels)) < 5:
    print(f"predictions collapse to {sorted(set(labels))}")
    sys.exit(1)
print(f"{len(labels)} predictions, {len(set(labels))} distinct labels")
EOF
  ); then
    log "$name: daemon OK in $((SECONDS - t)) s: $res"
  else
    log "$name: FAILED: daemon: $res; daemon log: $(tail -n 3 "$work/daemon.log" | tr '\n' ' ')"
    ok=""
  fi
  cleanup_run
  log "$name: run took $((SECONDS - t0)) s"
  [ -n "$ok" ]
}

# -- main ---------------------------------------------------------------------------------

failed=()
for ra in "${only[@]}"; do
  release=${ra%-*}
  arch=${ra##*-}
  case $ra in bookworm-arm64 | bookworm-armhf | trixie-arm64 | trixie-armhf) ;; *)
    echo "$PROG: unknown root $ra (bookworm-arm64, bookworm-armhf, trixie-arm64, trixie-armhf)" >&2
    exit 2
    ;;
  esac
  dir=$(root_dir "$release" "$arch")
  if [ ! -d "$dir" ]; then
    if [ "$build" = no ]; then
      echo "$PROG: $ra: SKIPPED: no cached root at $dir (--no-build); build it with: sudo scripts/arm-test.sh --build-only --only $ra"
      continue
    fi
    if [ "$run_tests" = yes ] && [ "$(left)" -lt "$BUILD_ESTIMATE_S" ]; then
      echo "$PROG: $ra: SKIPPED: no cached root at $dir, and building one (~${BUILD_ESTIMATE_S} s here) does not fit the $(left) s left of the job's budget; build it beforehand with: sudo scripts/arm-test.sh --build-only --only $ra"
      continue
    fi
    build_root "$release" "$arch" "$dir" || {
      failed+=("$ra: root build")
      continue
    }
  else
    log "$ra: cached root $dir (built in $(cat "$dir/.edged-build-seconds" 2>/dev/null || echo '?') s)"
  fi
  [ "$run_tests" = yes ] || continue
  estimate=$RUN_ESTIMATE_S
  what="a test run"
  if [ "${EDGED_ARM_FRESH:-}" = 1 ] || { [ ! -d "$(install_layer "$dir")" ] && [ -z "$(newest_layer "$dir")" ]; }; then
    estimate=$FRESH_ESTIMATE_S
    what="a test run with a fresh install (no install of this root cached yet)"
  fi
  if [ "$(left)" -lt "$estimate" ]; then
    echo "$PROG: $ra: SKIPPED: $what (~${estimate} s) does not fit the $(left) s left of the job's budget; run it beforehand: sudo scripts/arm-test.sh --only $ra"
    continue
  fi
  run_root "$ra" "$arch" "$dir" || failed+=("$ra")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "$PROG: FAILED: ${failed[*]} ($(elapsed) s)"
  exit 1
fi
echo "$PROG: done in $(elapsed) s"
