#!/usr/bin/env bash
# Installs a pinned Synapse into a Python virtualenv for the end-to-end tests.
#
#   scripts/synapse/install.sh            # venv at <repo>/.synapse/venv
#   MIMI_SYNAPSE_VENV=/path install.sh    # venv elsewhere
#
# Idempotent: does nothing when the venv already imports the pinned version.
# Concurrent callers (parallel Jest workers) serialise on a flock, so only one
# of them ever installs. Progress goes to stderr; the last line on stdout is
# the venv path.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state_dir="$repo/.synapse"
venv="${MIMI_SYNAPSE_VENV:-$state_dir/venv}"
python="${MIMI_SYNAPSE_PYTHON:-python3}"

log() { printf 'synapse-install: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

installed_ok() {
  [[ -x "$venv/bin/python" ]] || return 1
  local version
  # synapse.__version__ carries a git suffix ("1.163.2 (b=main,...)"); the
  # distribution metadata holds the plain version.
  version="$("$venv/bin/python" -c 'import synapse, importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null)" ||
    return 1
  [[ "$version" == "$SYNAPSE_VERSION" ]]
}

# Fast path, no lock needed.
if installed_ok; then
  printf '%s\n' "$venv"
  exit 0
fi

command -v flock >/dev/null 2>&1 || die "flock not found (install util-linux)"
mkdir -p "$state_dir" || die "cannot create $state_dir"
exec 9>"$state_dir/install.lock" || die "cannot open lock file $state_dir/install.lock"
flock 9 || die "cannot lock $state_dir/install.lock"

# Someone else may have installed while we waited for the lock.
if installed_ok; then
  printf '%s\n' "$venv"
  exit 0
fi

command -v "$python" >/dev/null 2>&1 || die "$python not found; Synapse needs Python 3.10 or newer"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "$("$python" --version 2>&1) is too old; Synapse $SYNAPSE_VERSION needs Python 3.10 or newer"
"$python" -c 'import venv, ensurepip' 2>/dev/null ||
  die "the Python venv module (with ensurepip) is missing; on Debian: apt-get install python3-venv"

start=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv" 2>/dev/null)" ]]; then
    die "$venv exists, is not empty and is not a virtualenv; refusing to touch it"
  fi
  log "creating virtualenv at $venv"
  "$python" -m venv --clear "$venv" >&2 || die "python3 -m venv $venv failed"
fi

log "installing matrix-synapse==$SYNAPSE_VERSION into $venv (about 30 s)"
"$venv/bin/pip" install --disable-pip-version-check --no-input -q "matrix-synapse==$SYNAPSE_VERSION" >&2 ||
  die "pip install matrix-synapse==$SYNAPSE_VERSION failed (see pip output above)"

installed_ok || die "matrix-synapse installed, but '$venv/bin/python -c \"import synapse\"' does not report $SYNAPSE_VERSION"
log "installed Synapse $SYNAPSE_VERSION in $((SECONDS - start)) s"
printf '%s\n' "$venv"
