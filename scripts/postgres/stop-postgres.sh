#!/usr/bin/env bash
# Stops the test cluster that ensure-postgres.sh started (same MIMI_PG_DIR).
#
#   scripts/postgres/stop-postgres.sh            # stop it, keep its data
#   scripts/postgres/stop-postgres.sh --remove   # stop it and delete the cluster
#
# Does nothing when the cluster is not running.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pg_dir="${MIMI_PG_DIR:-$repo/.postgres/cluster}"
pg_user="postgres"

log() { printf 'stop-postgres: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

remove=false
case "${1:-}" in
  "") ;;
  --remove) remove=true ;;
  *) die "usage: $0 [--remove]" ;;
esac

[[ "$pg_dir" == /* ]] || pg_dir="$PWD/$pg_dir"

if [[ -f "$pg_dir/PG_VERSION" ]]; then
  version="$(<"$pg_dir/PG_VERSION")"
  pg_ctl=""
  if [[ -x "/usr/lib/postgresql/$version/bin/pg_ctl" ]]; then
    pg_ctl="/usr/lib/postgresql/$version/bin/pg_ctl"
  elif command -v pg_ctl >/dev/null 2>&1; then
    pg_ctl="$(command -v pg_ctl)"
  fi
  [[ -n "$pg_ctl" ]] || die "pg_ctl not found"
  as_server=()
  if [[ "$(id -u)" -eq 0 ]]; then
    if command -v runuser >/dev/null 2>&1; then
      as_server=(runuser -u "$pg_user" --)
    else
      as_server=(setpriv "--reuid=$pg_user" "--regid=$pg_user" --init-groups --)
    fi
  fi
  if "${as_server[@]}" "$pg_ctl" --pgdata="$pg_dir" status >/dev/null 2>&1; then
    log "stopping the cluster in $pg_dir"
    "${as_server[@]}" "$pg_ctl" --pgdata="$pg_dir" --mode=fast --wait --timeout=60 stop >&2 ||
      die "pg_ctl stop failed"
  else
    log "the cluster in $pg_dir is not running"
  fi
else
  log "no cluster in $pg_dir"
fi

if $remove; then
  log "removing $pg_dir"
  rm -rf "$pg_dir" "$pg_dir.lock"
fi
