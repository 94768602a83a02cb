#!/usr/bin/env bash
# Install edged from this checkout on a Raspberry Pi (Raspberry Pi OS Bookworm or Trixie, Pi 4 or
# Pi 5) or another Debian-like machine with systemd. One line per step:
#
#   apt       python3-venv, mosquitto-clients, and on a Pi python3-picamera2 (missing ones only)
#   venv      PREFIX/venv, created with --system-site-packages so it sees the OS's picamera2
#   edged     this checkout pip-installed into the venv; the OS's numpy is kept when there is
#             one (picamera2's compiled modules are built against it)
#   config    /etc/edged/edged.toml from config/edged.example.toml, only if absent — an existing
#             one is never touched; /etc/edged/mqtt-password, empty and 0600, only if absent
#             (the unit's LoadCredential= needs the file); /etc/edged/digits.edgb, the demo model
#   unit      /etc/systemd/system/edged.service, ExecStart pointed at PREFIX/venv/bin/edged
#   systemd   daemon-reload, enable --now edged (a restart when the software changed)
#
# Idempotent: a second run changes nothing and says so. Run it again after `git pull` to update.
# Under --root DIR everything is written below DIR and neither apt-get nor systemctl runs
# (unless --apt / --enable), so CI can check what it writes without touching the host.
set -euo pipefail
umask 022  # the service runs as a dynamic user: the venv, config and model must be readable

PROG=install.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEFAULT_PREFIX=/opt/edged

usage() {
  cat <<EOF
usage: sudo scripts/install.sh [options]

Install edged from this checkout: OS packages, a venv at PREFIX/venv, /etc/edged (config,
broker password file, demo model), the systemd unit; then enable and start it.

  --prefix DIR   where the venv goes (default $DEFAULT_PREFIX; the unit's ExecStart follows)
  --root DIR     write everything below DIR (DIR$DEFAULT_PREFIX, DIR/etc/edged,
                 DIR/etc/systemd/system) for a throwaway tree or an image; no root needed;
                 implies --no-apt --no-enable
  --python PY    the interpreter the venv is made from (default /usr/bin/python3, the OS's,
                 which sees python3-picamera2)
  --no-apt       do not install OS packages      (--apt: do, even under --root)
  --no-enable    do not run systemctl            (--enable: under --root, systemctl --root enable)
  -n, --dry-run  say what would change, change nothing
  -h, --help     this text
EOF
}

usage_error() {
  echo "$PROG: error: $*" >&2
  exit 2
}
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}

prefix=$DEFAULT_PREFIX
root=""
python=""
apt=auto
enable=auto
dry_run=""
while [ $# -gt 0 ]; do
  case $1 in
    --prefix | --root | --python)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      case $1 in
        --prefix) prefix=$2 ;;
        --root) root=$2 ;;
        --python) python=$2 ;;
      esac
      shift 2
      continue
      ;;
    --prefix=*) prefix=${1#*=} ;;
    --root=*) root=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --apt) apt=yes ;;
    --no-apt) apt=no ;;
    --enable) enable=yes ;;
    --no-enable) enable=no ;;
    -n | --dry-run) dry_run=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# -- preflight: nothing is changed before every check below has passed --------------------

prefix=${prefix%/}
case $prefix in
  /*) ;;
  *) usage_error "--prefix must be an absolute path: $prefix" ;;
esac
case $prefix in
  *[!A-Za-z0-9._/-]*) usage_error "--prefix may only contain A-Z a-z 0-9 . _ / -: $prefix" ;;
  /home | /home/* | /root | /root/* | /run/user/*)
    usage_error "--prefix $prefix is hidden from the service (ProtectHome=yes); use e.g. /opt/edged"
    ;;
  /tmp | /tmp/* | /var/tmp/*) usage_error "--prefix $prefix is private to the service (PrivateTmp=yes)" ;;
esac
if [ -n "$root" ]; then
  root=$(realpath -m -- "$root")
  [ "$root" != / ] || root=""
fi
if [ -z "$root" ] && [ -z "$dry_run" ] && [ "$(id -u)" -ne 0 ]; then
  echo "$PROG: error: must run as root (sudo $0), or with --root DIR to install into a throwaway tree" >&2
  exit 1
fi
R=$root # prefix of every path written

if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=$(command -v python3 || true); fi
fi
if [ -z "$python" ] || ! "$python" -c '' 2>/dev/null; then die "no python3 found (pass --python PATH)"; fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$python is Python $pyver; edged needs 3.11 or later (Raspberry Pi OS Bookworm or newer)"

if [ "$apt" = auto ]; then if [ -n "$root" ]; then apt=no; else apt=yes; fi; fi
if [ "$enable" = auto ]; then if [ -n "$root" ]; then enable=no; else enable=yes; fi; fi

# Platform. The userland's architecture, not the kernel's: 32-bit Raspberry Pi OS runs a 64-bit
# kernel on the Pi 3/4/5 (a 32-bit process there sees `uname -m` = aarch64, or armv8l under the
# linux32 personality), so what decides the wheels is dpkg's architecture, else the pointer size
# of the interpreter itself.
kernel_arch=$(uname -m)
deb_arch=$(dpkg --print-architecture 2>/dev/null || true)
py_bits=$("$python" -c 'import struct; print(8 * struct.calcsize("P"))')
if [ -z "$deb_arch" ]; then
  deb_arch=$kernel_arch
  case $kernel_arch in aarch64 | arm*) if [ "$py_bits" = 32 ]; then deb_arch=armhf; fi ;; esac
fi
arm32=""
case $deb_arch in armhf | armel | armv7l | armv6l | armv8l) arm32=1 ;; esac
pi_model=""
if [ -r /proc/device-tree/model ]; then pi_model=$(tr -d '\0' </proc/device-tree/model); fi
on_pi=""
case $pi_model in "Raspberry Pi"*) on_pi=1 ;; esac
os_name=$(
  # shellcheck disable=SC1091
  . /etc/os-release 2>/dev/null && echo "${ID:-linux} ${VERSION_CODENAME:-}"
) || os_name=linux

# 32-bit ARM: ai-edge-litert has no wheels at all; tflite-runtime 2.14 (its last release) has
# armv7l wheels for CPython 3.8-3.11 only (manylinux_2_34: glibc 2.34+; Bookworm has 2.36), built
# for ARMv7 with NEON; Pillow, numpy and cffi (cryptography's) have no 32-bit ARM wheels, so those
# come from the OS (python3-pil, python3-numpy, python3-cryptography). Every refusal is here,
# before anything is changed.
if [ -n "$arm32" ]; then
  refuse32() { die "32-bit ARM ($deb_arch userland, $kernel_arch kernel) is not supported here: $*"; }
  case $deb_arch in armel | armv6l) refuse32 "tflite-runtime's wheels need an armhf (ARMv7) userland; install the 64-bit Raspberry Pi OS" ;; esac
  case $kernel_arch in armv6*) refuse32 "an ARMv6 CPU (Pi 1 / Zero / Zero W) cannot run tflite-runtime's ARMv7 wheels" ;; esac
  "$python" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 11))' ||
    refuse32 "Python $pyver has no TFLite runtime (ai-edge-litert has no 32-bit ARM wheels, tflite-runtime's last release, 2.14, stops at Python 3.11: Raspberry Pi OS Bookworm has 3.11, Trixie 3.13); install the 64-bit Raspberry Pi OS"
  [ "$(
    "$python" -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[1])' 2>/dev/null |
      awk -F. '{print ($1 > 2 || ($1 == 2 && $2 >= 34)) ? "ok" : "old"}'
  )" = ok ] || refuse32 "tflite-runtime 2.14's armv7l wheel needs glibc 2.34+ (Debian Bookworm or newer)"
fi

if [ -n "$root" ] && [ -z "$dry_run" ]; then mkdir -p -- "$root" || die "cannot create --root $root"; fi
if [ ! -f "$REPO/pyproject.toml" ] || [ ! -d "$REPO/edged" ]; then die "$REPO is not an edged checkout"; fi
for f in config/edged.example.toml systemd/edged.service models/digits.edgb; do
  [ -f "$REPO/$f" ] || die "missing $REPO/$f"
done

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

venv=$R$prefix/venv
etc=$R/etc/edged
unit_dir=$R/etc/systemd/system
config=$etc/edged.toml
password=$etc/mqtt-password
model=$etc/digits.edgb
model_target=/etc/edged/digits.edgb # the path the service sees (the config names this one)
unit=$unit_dir/edged.service
exec_start="$prefix/venv/bin/edged run -c /etc/edged/edged.toml"

changes=0
say() { printf '%-9s %s\n' "$1:" "$2"; }
changed() {
  changes=$((changes + 1))
  say "$@"
}
would() { [ -n "$dry_run" ]; }

platform="${pi_model:-not a Raspberry Pi}, $os_name $deb_arch, Python $pyver ($python)"
if [ -n "$root" ]; then platform="$platform; installing below $root"; fi
say platform "$platform"

# -- apt ------------------------------------------------------------------------------------

pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
apt_has() {
  local candidate
  candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

wanted=(python3-venv mosquitto-clients)
if [ -n "$on_pi" ]; then wanted+=(python3-picamera2); fi
# No 32-bit ARM wheels on PyPI for these (numpy 1.x for tflite-runtime): the OS's, prebuilt.
if [ -n "$arm32" ]; then wanted+=(python3-numpy python3-pil python3-cryptography); fi
if ! command -v dpkg-query >/dev/null 2>&1; then
  say apt "not a Debian system, skipped (wanted: ${wanted[*]})"
else
  missing=()
  for p in "${wanted[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then
    say apt "${wanted[*]} already installed"
  elif [ "$apt" = no ]; then
    if [ -n "$arm32" ]; then
      for p in "${missing[@]}"; do
        case $p in python3-numpy | python3-pil | python3-cryptography)
          die "32-bit ARM needs the OS's python3-numpy python3-pil python3-cryptography (PyPI has no wheels for them there), and $p is missing: apt-get install it, or run without --no-apt"
          ;;
        esac
      done
    fi
    why=--no-apt
    if [ -n "$root" ]; then why=--root; fi
    say apt "skipped ($why); missing here: ${missing[*]}"
  elif would; then
    changed apt "would install ${missing[*]}"
  else
    export DEBIAN_FRONTEND=noninteractive
    echo "$PROG: apt-get update; install ${missing[*]} ..." >&2
    apt-get update -qq
    installable=()
    for p in "${missing[@]}"; do
      if apt_has "$p"; then installable+=("$p"); else say apt "$p is not in this system's apt sources, skipped"; fi
    done
    if [ ${#installable[@]} -gt 0 ]; then
      # --no-install-recommends: python3-picamera2 recommends a desktop's worth of GUI packages.
      apt-get install -y -qq --no-install-recommends "${installable[@]}" >/dev/null
      changed apt "installed ${installable[*]}"
    fi
  fi
fi

# -- venv -----------------------------------------------------------------------------------

venv_python_version() { "$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
venv_fresh=""
if [ -x "$venv/bin/python" ] && [ "$(venv_python_version)" = "$pyver" ] &&
  grep -qiE '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" 2>/dev/null; then
  say venv "$venv unchanged (Python $pyver, sees the OS's site-packages)"
else
  "$python" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$python cannot create a venv: apt-get install python3-venv (or run without --no-apt)"
  what=created
  if [ -e "$venv" ]; then what="recreated (it had Python $(venv_python_version || echo '?'))"; fi
  if would; then
    changed venv "$venv would be $what"
  else
    mkdir -p -- "$(dirname "$venv")"
    "$python" -m venv --clear --system-site-packages "$venv"
    changed venv "$venv $what; Python $pyver, sees the OS's site-packages"
  fi
  venv_fresh=1
fi

# -- edged ----------------------------------------------------------------------------------

# What pip installs: the package and the files its build reads (not the whole checkout: no
# .git, venvs or build output; and nothing is built inside the checkout).
source_files() {
  (
    cd "$REPO"
    find edged -type f ! -name '*.pyc' ! -path '*/__pycache__/*'
    for f in pyproject.toml README.md LICENSE setup.cfg setup.py MANIFEST.in; do
      if [ -f "$f" ]; then echo "$f"; fi
    done
  ) | LC_ALL=C sort
}
source_hash() { (cd "$REPO" && source_files | tr '\n' '\0' | xargs -0 sha256sum | sha256sum | cut -c1-64); }

# picamera2's compiled dependencies (simplejpeg, ...) are built against the OS's numpy; a
# numpy from PyPI in the venv would shadow it and break `import picamera2` (numpy 1.x and 2.x
# are not binary compatible), so pip is told to keep the OS's version. On 32-bit ARM the same
# holds for Pillow and cryptography: PyPI has no wheels for them (or for cffi) there, so pip
# must take the OS's rather than try to compile them.
os_version() { "$python" -c "import $1 as m; print(m.__version__)" 2>/dev/null || true; }
constraints=()
pin_note=""
os_numpy=$(os_version numpy)
if [ -n "$os_numpy" ]; then
  constraints+=("numpy==$os_numpy")
  pin_note="; numpy kept at the OS's $os_numpy"
elif [ -n "$arm32" ]; then
  constraints+=("numpy<2") # tflite-runtime 2.14 is built against numpy 1.x
fi
if [ -n "$arm32" ]; then
  for mod_pkg in PIL:pillow cryptography:cryptography; do
    v=$(os_version "${mod_pkg%%:*}")
    if [ -n "$v" ]; then
      constraints+=("${mod_pkg#*:}==$v")
      pin_note="$pin_note, ${mod_pkg#*:} at $v"
    fi
  done
fi
stamp_file=$venv/.edged-install
stamp="$(source_hash) python=$pyver constraints=${constraints[*]:-} arm32=${arm32:-no}"

installed_version() { "$venv/bin/edged" --version 2>/dev/null | awk '{print $2}'; }
if [ -z "$venv_fresh" ] && [ "$(cat "$stamp_file" 2>/dev/null || true)" = "$stamp" ] &&
  [ -n "$(installed_version)" ]; then
  say edged "$(installed_version) in $venv unchanged (same source as installed)"
  edged_changed=""
elif would; then
  changed edged "would pip-install $REPO into $venv${pin_note}"
  edged_changed=1
else
  mkdir -p "$tmp/src"
  (cd "$REPO" && source_files | tar -cf - --no-recursion -T -) | tar -xf - -C "$tmp/src"
  printf '%s\n' "${constraints[@]}" >"$tmp/constraints.txt"
  echo "$PROG: pip-installing edged and its dependencies into $venv (minutes on a Pi) ..." >&2
  pip=("$venv/bin/python" -m pip)
  pip_opts=(--quiet --disable-pip-version-check --no-input --progress-bar off)
  if [ -n "$arm32" ]; then
    # A 32-bit process on a 64-bit kernel: under the linux32 personality `uname -m` says
    # armv8l, which pyproject's markers know as 32-bit ARM (no ai-edge-litert, tflite-runtime
    # instead). Bookworm's pip 23.0 offers only linux_armv8l wheel tags there; pip 24.1+ (its
    # packaging 24.1) also accepts armv7l, the tag tflite-runtime's wheels carry.
    if [ "$kernel_arch" = aarch64 ]; then pip=(setarch linux32 "${pip[@]}"); fi
    "${pip[@]}" install "${pip_opts[@]}" 'pip>=24.1' ||
      die "could not upgrade pip in $venv (pip 24.1+ is needed to find armv7l wheels; output above)"
  fi
  "${pip[@]}" install "${pip_opts[@]}" --constraint "$tmp/constraints.txt" "$tmp/src" ||
    die "pip install into $venv failed (output above)"
  echo "$stamp" >"$stamp_file"
  changed edged "$(installed_version) installed into $venv from $REPO$pin_note"
  edged_changed=1
fi

# A check, not a change, and it must prove the numbers, not only that something runs: the
# installed interpreter reproduces the demo bundle's golden vector within its tolerance, and
# classifies the known-answer images in samples/ (<name>-<label>-<n>.png) as named. A failure
# stops the install with the reason.
selfcheck() { # MODEL SAMPLES_DIR
  "$venv/bin/python" - "$@" <<'EOF'
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier
from edged.update.validate import _check_golden

MIN_AGREEMENT = 0.9  # the demo model gets 19 of its 20 samples right on a correct runtime


def fail(msg):
    print(msg)
    sys.exit(1)


model, samples = Path(sys.argv[1]), Path(sys.argv[2])
bundle = read_bundle(model.read_bytes(), allow_unsigned=True)
clf = Classifier.from_bundle(bundle, threads=1)
golden = bundle.manifest.get("golden")
if golden is None:
    fail(f"{model.name} has no golden vector to check the interpreter against")
try:
    diff = _check_golden(clf, bundle.members, golden, np)
except ValueError as err:
    fail(f"golden vector: {err}")
known = []
for path in sorted(samples.glob("*.png")):
    m = re.fullmatch(r"[a-z]+-(.+)-\d+", path.stem)
    if m:
        known.append((path, m.group(1)))
if not known:
    fail(f"no known-answer images (<name>-<label>-<n>.png) in {samples}")
wrong, labels = [], set()
for path, want in known:
    with Image.open(path) as im:
        got = clf.classify(np.asarray(im.convert("RGB")), 1).label
    labels.add(got)
    if got != want:
        wrong.append(f'{path.name} -> "{got}"')
right = len(known) - len(wrong)
if right < MIN_AGREEMENT * len(known) or (len(known) > 1 and len(labels) == 1):
    fail(f"known-answer images: only {right} of {len(known)} as named ({', '.join(wrong[:3])}, ...)")
atol = float(golden.get("atol", 0))
print(
    f"golden vector within {diff:.2g} (atol {atol:g}); {right} of {len(known)} known-answer "
    f"images as named; backend {clf.info.backend}"
)
EOF
}
if ! would; then
  if out=$(selfcheck "$REPO/models/digits.edgb" "$REPO/samples" 2>&1); then
    say selfcheck "$(printf '%s' "$out" | tail -n 1)"
  else
    die "the installed edged computes wrong answers here, so it would publish wrong labels: $(printf '%s' "$out" | tail -n 1)"
  fi
fi
if [ -n "$on_pi" ] && ! would; then
  if "$venv/bin/python" -c 'import picamera2' 2>/dev/null; then
    say camera "picamera2 importable from the venv"
  else
    say camera "warning: picamera2 does not import in the venv ($venv/bin/python -c 'import picamera2' says why)"
  fi
fi

# -- /etc/edged -----------------------------------------------------------------------------

install_dir() { # DIR: create (0755) when missing
  if [ -d "$1" ]; then return 0; fi
  if would; then changed dir "$1 would be created"; else
    install -d -m 0755 -- "$1"
    changed dir "$1 created"
  fi
}
install_dir "$etc"

device_id=$(hostname 2>/dev/null | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9-\n' '-' | sed 's/^[^a-z0-9]*//' | cut -c1-32)
[ -n "$device_id" ] || device_id=edged

render_config() { # the example config, with device_id and model.path set
  echo "# Written by scripts/install.sh from config/edged.example.toml; yours to edit — the"
  echo "# installer never overwrites this file. Apply changes: sudo systemctl restart edged"
  awk -v id="$device_id" -v model="$model_target" '
    /^\[/ { section = $0 }
    section == "" && /^device_id *=/ { print "device_id = \"" id "\""; n++; next }
    section == "[model]" && /^path *=/ { print "path = \"" model "\""; n++; next }
    { print }
    END { if (n != 2) exit 3 }
  ' "$REPO/config/edged.example.toml"
}
validate_config() { # FILE: prints the problems, fails when the file is not a valid edged config
  "$venv/bin/python" - "$1" <<'EOF'
import sys
from pathlib import Path

from edged.config import load_config
from edged.errors import ConfigError

try:
    load_config(Path(sys.argv[1]), environ={})
except ConfigError as err:
    print("; ".join(err.problems))
    sys.exit(2)
EOF
}

if [ -e "$config" ]; then
  note=""
  if ! would && [ -x "$venv/bin/python" ] && ! problems=$(validate_config "$config" 2>&1); then
    note=" — warning: not valid for this edged: $problems"
  fi
  say config "$config exists, left as it is (yours)$note"
else
  render_config >"$tmp/edged.toml" || die "config/edged.example.toml no longer has device_id and [model] path lines"
  if would; then
    changed config "$config would be written (device_id \"$device_id\", the demo model)"
  else
    problems=$(validate_config "$tmp/edged.toml" 2>&1) || die "the generated config is invalid: $problems"
    install -m 0644 -- "$tmp/edged.toml" "$config"
    changed config "$config written (device_id \"$device_id\", the demo model): set mqtt.host and [source] there"
  fi
fi

if [ -e "$password" ]; then
  mode=$(stat -c %a -- "$password")
  if [ $((8#$mode & 8#077)) -eq 0 ]; then
    say password "$password exists, left as it is (mode 0$mode)"
  elif would; then
    changed password "$password is mode 0$mode: would be made 0600"
  else
    chmod 0600 -- "$password"
    changed password "$password was mode 0$mode, now 0600 (contents untouched)"
  fi
elif would; then
  changed password "$password would be created empty, mode 0600"
else
  install -m 0600 /dev/null "$password"
  changed password "$password created empty, mode 0600 (the broker password goes here, no newline needed)"
fi

model_changed=""
if cmp -s -- "$REPO/models/digits.edgb" "$model"; then
  say model "$model unchanged (the demo model)"
else
  what=installed
  if [ -e "$model" ]; then what=updated; fi
  if would; then changed model "$model would be $what"; else
    install -m 0644 -- "$REPO/models/digits.edgb" "$model"
    changed model "$model $what (the demo model)"
  fi
  model_changed=1
fi

# -- the systemd unit -----------------------------------------------------------------------

sed "s#^ExecStart=$DEFAULT_PREFIX/venv/bin/edged #ExecStart=$prefix/venv/bin/edged #" \
  "$REPO/systemd/edged.service" >"$tmp/edged.service"
grep -qxF "ExecStart=$exec_start" "$tmp/edged.service" ||
  die "systemd/edged.service has no 'ExecStart=$DEFAULT_PREFIX/venv/bin/edged run -c /etc/edged/edged.toml' line to point at $prefix"
unit_changed=""
if cmp -s -- "$tmp/edged.service" "$unit"; then
  say unit "$unit unchanged"
else
  what=installed
  if [ -e "$unit" ]; then what="updated (local changes belong in a drop-in: systemctl edit edged)"; fi
  install_dir "$unit_dir"
  if would; then changed unit "$unit would be $what"; else
    install -m 0644 -- "$tmp/edged.service" "$unit"
    changed unit "$unit $what; ExecStart=$exec_start"
  fi
  unit_changed=1
fi

# -- systemd --------------------------------------------------------------------------------

start_hint="systemctl daemon-reload && systemctl enable --now edged"
if [ "$enable" = no ]; then
  why=--no-enable
  if [ -n "$root" ]; then why=--root; fi
  say systemd "skipped ($why); to start it: $start_hint"
elif [ -n "$root" ]; then
  if [ -L "$unit_dir/multi-user.target.wants/edged.service" ]; then
    say systemd "edged.service already enabled below $root"
  elif would; then
    changed systemd "would run systemctl --root=$root enable edged.service"
  else
    systemctl --root="$root" enable edged.service >/dev/null 2>&1 || die "systemctl --root=$root enable edged failed"
    changed systemd "enabled below $root (systemctl --root enable)"
  fi
elif [ ! -d /run/systemd/system ]; then
  say systemd "systemd is not running here, skipped; on the device: $start_hint"
else
  actions=()
  if [ -n "$unit_changed" ]; then actions+=(daemon-reload); fi
  systemctl is-enabled --quiet edged.service 2>/dev/null || actions+=(enable)
  if ! systemctl is-active --quiet edged.service; then
    actions+=(start)
  elif [ -n "$unit_changed$edged_changed$model_changed" ]; then
    actions+=(restart)
  fi
  if [ ${#actions[@]} -eq 0 ]; then
    say systemd "edged enabled and running, unchanged"
  elif would; then
    changed systemd "would run: ${actions[*]}"
  else
    failed=""
    for a in "${actions[@]}"; do
      case $a in
        daemon-reload) systemctl daemon-reload ;;
        enable) systemctl enable --quiet edged.service ;;
        *) systemctl "$a" edged.service || failed=$a ;;
      esac
    done
    if [ -n "$failed" ]; then
      changed systemd "ran ${actions[*]}, but edged failed to $failed: journalctl -u edged -e"
      exit 1
    fi
    changed systemd "ran ${actions[*]}; follow it with: journalctl -u edged -f"
  fi
fi

if would; then
  say "done" "dry run: $changes change(s) would be made, nothing was written"
elif [ "$changes" -eq 0 ]; then
  say "done" "nothing changed (already installed)"
else
  say "done" "$changes change(s)"
fi
