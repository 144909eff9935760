#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests, installing the server
# binaries first if they are missing.
#
#   scripts/postgres/ensure-postgres.sh                  # cluster in <repo>/.postgres/cluster, port 54329
#   MIMI_PG_DIR=/path MIMI_PG_PORT=5555 ensure-postgres.sh
#
# The cluster listens only on 127.0.0.1 (no Unix socket), trusts every local
# connection as any user, and keeps fsync on. Idempotent: when a server
# already answers on the port it does nothing. Concurrent callers (parallel
# Jest workers) serialise on a flock. PostgreSQL refuses to run as root, so
# when started as root the server runs as the `postgres` user (created if
# missing). Progress goes to stderr; the last line on stdout is the
# connection URL.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pg_dir="${MIMI_PG_DIR:-$repo/.postgres/cluster}"
port="${MIMI_PG_PORT:-54329}"
host="127.0.0.1"
pg_user="postgres"
url="postgres://postgres@$host:$port/postgres"

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "MIMI_PG_PORT=$port is not a TCP port"
[[ "$pg_dir" == /* ]] || pg_dir="$PWD/$pg_dir"

# The server binaries' directory: the one holding initdb and pg_ctl on PATH,
# else the newest /usr/lib/postgresql/<major>/bin (Debian puts them there, off
# PATH). With a major version given, only a directory of that version will do.
find_bindir() {
  local want="${1:-}" dir candidate version
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dir="$(dirname "$(readlink -f "$(command -v initdb)")")"
    if [[ -x "$dir/pg_ctl" ]]; then
      # "pg_ctl (PostgreSQL) 15.14 (Debian ...)" -> 15
      version="$("$dir/pg_ctl" --version 2>/dev/null | awk '{print $3}' | sed -E 's/^([0-9]+).*/\1/')"
      if [[ -z "$want" || "$version" == "$want" ]]; then
        printf '%s\n' "$dir"
        return 0
      fi
    fi
  fi
  for candidate in $(compgen -G '/usr/lib/postgresql/*/bin' | sort -V -r); do
    [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]] || continue
    version="$(basename "$(dirname "$candidate")")"
    if [[ -z "$want" || "$version" == "$want" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

pg_isready_bin() {
  local dir
  if dir="$(find_bindir)" && [[ -x "$dir/pg_isready" ]]; then
    printf '%s\n' "$dir/pg_isready"
  elif command -v pg_isready >/dev/null 2>&1; then
    command -v pg_isready
  else
    return 1
  fi
}

answers() {
  local isready
  isready="$(pg_isready_bin)" || return 1
  "$isready" -q -h "$host" -p "$port" -t 5 >/dev/null 2>&1
}

# Fast path, no lock needed.
if answers; then
  log "a server already answers on $host:$port"
  printf '%s\n' "$url"
  exit 0
fi

command -v flock >/dev/null 2>&1 || die "flock not found (install util-linux)"
mkdir -p "$(dirname "$pg_dir")" || die "cannot create $(dirname "$pg_dir")"
lock_file="$pg_dir.lock"
exec 9>"$lock_file" || die "cannot open lock file $lock_file"
flock 9 || die "cannot lock $lock_file"

# Someone else may have started it while we waited for the lock.
if answers; then
  log "a server already answers on $host:$port"
  printf '%s\n' "$url"
  exit 0
fi

install_server() {
  log "initdb/pg_ctl not found; installing PostgreSQL with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "initdb/pg_ctl not found and there is no apt-get; install the PostgreSQL server binaries"
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "initdb/pg_ctl not found; installing them needs root (run: apt-get install -y postgresql)"
    sudo=(sudo -n)
  fi
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2; then
    log "apt-get install failed; updating the package lists and retrying"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2 || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2 ||
      die "apt-get install -y postgresql failed"
  fi
}

# An existing cluster needs the binaries of its own major version.
cluster_version=""
[[ -f "$pg_dir/PG_VERSION" ]] && cluster_version="$(<"$pg_dir/PG_VERSION")"
if ! bindir="$(find_bindir "$cluster_version")"; then
  if [[ -n "$cluster_version" ]] && find_bindir >/dev/null; then
    die "the cluster in $pg_dir is PostgreSQL $cluster_version, whose binaries are not installed; remove $pg_dir to start afresh"
  fi
  install_server
  bindir="$(find_bindir "$cluster_version")" || die "PostgreSQL was installed but no initdb/pg_ctl found (PATH, /usr/lib/postgresql/*/bin)"
fi
log "using the PostgreSQL binaries in $bindir"

# PostgreSQL refuses to run as root: as root, run the server as $pg_user.
as_server=()
if [[ "$(id -u)" -eq 0 ]]; then
  if ! id -u "$pg_user" >/dev/null 2>&1; then
    log "creating the system user $pg_user"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$pg_user" ||
      die "cannot create the user $pg_user"
  fi
  if command -v runuser >/dev/null 2>&1; then
    as_server=(runuser -u "$pg_user" --)
  elif command -v setpriv >/dev/null 2>&1; then
    as_server=(setpriv "--reuid=$pg_user" "--regid=$pg_user" --init-groups --)
  else
    die "running as root, and neither runuser nor setpriv is there to run PostgreSQL as $pg_user"
  fi
  mkdir -p "$pg_dir"
  chown "$pg_user:" "$pg_dir"
  chmod 700 "$pg_dir"
  "${as_server[@]}" test -w "$pg_dir" -a -x "$pg_dir" ||
    die "the user $pg_user cannot write $pg_dir (does it have search permission on every parent directory?)"
else
  mkdir -p "$pg_dir"
  chmod 700 "$pg_dir"
fi

if [[ ! -f "$pg_dir/PG_VERSION" ]]; then
  [[ -z "$(ls -A "$pg_dir")" ]] || die "$pg_dir is neither empty nor a PostgreSQL cluster; remove it to start afresh"
  log "creating a cluster in $pg_dir"
  # --username=postgres is the superuser name whatever user runs the server.
  "${as_server[@]}" "$bindir/initdb" --pgdata="$pg_dir" --username=postgres --auth=trust \
    --encoding=UTF8 --locale=C >&2 || die "initdb failed"
  {
    printf '\n# ensure-postgres.sh: a throwaway cluster for the tests\n'
    printf "listen_addresses = '%s'\n" "$host"
    printf "unix_socket_directories = ''\n"
    printf 'max_connections = 300\n'
    printf 'fsync = on\n'
  } >>"$pg_dir/postgresql.conf"
  # Trust only the loopback, and only over TCP (there is no socket).
  printf '%s\n' \
    '# ensure-postgres.sh: trust local loopback connections only' \
    'host all all 127.0.0.1/32 trust' \
    'host replication all 127.0.0.1/32 trust' >"$pg_dir/pg_hba.conf"
fi

log "starting PostgreSQL on $host:$port (log: $pg_dir/server.log)"
# The port is given at every start, so MIMI_PG_PORT wins over the cluster's config.
# The server must not inherit the lock (fd 9), or it would hold it for its whole life.
if ! "${as_server[@]}" "$bindir/pg_ctl" --pgdata="$pg_dir" --log="$pg_dir/server.log" \
  --options="-p $port" --wait --timeout=60 start >&2 9>&-; then
  tail -n 40 "$pg_dir/server.log" >&2 2>/dev/null || true
  die "pg_ctl start failed (see $pg_dir/server.log)"
fi
answers || die "the server started but does not answer on $host:$port"
printf '%s\n' "$url"
