# shellcheck shell=bash
# Finds a PostgreSQL server for Shepherd, or starts a throwaway one, and
# exports DATABASE_URL (an admin URL: tests create their own databases).
#
# Order: $DATABASE_URL if it answers; else the local server on
# 127.0.0.1:5432; else a temporary cluster from the PostgreSQL binaries on
# this machine (installed with apt-get when missing), stopped on exit.

pg_answers() { # URL
  if command -v psql >/dev/null 2>&1; then
    psql "$1" -qAtc 'select 1' >/dev/null 2>&1
  else
    local hostport=${1#*@}; hostport=${hostport%%/*}
    local host=${hostport%%:*} port=${hostport##*:}
    [ "$port" = "$hostport" ] && port=5432
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_throwaway_postgres() {
  local bin
  bin=$(pg_bin_dir)
  if [ -z "$bin" ]; then
    echo "==> installing PostgreSQL (apt-get)" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin=$(pg_bin_dir)
  fi
  [ -n "$bin" ] || { echo "no PostgreSQL binaries found or installable" >&2; return 1; }

  SHEPHERD_PG_DIR=$(mktemp -d /tmp/shepherd-pg.XXXXXX)
  local port=${SHEPHERD_PG_PORT:-55432}
  # initdb refuses to run as root: run the cluster as the postgres user.
  local run=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$SHEPHERD_PG_DIR"
    run=(runuser -u postgres --)
  fi
  echo "==> starting a throwaway PostgreSQL in $SHEPHERD_PG_DIR on port $port" >&2
  "${run[@]}" "$bin/initdb" -D "$SHEPHERD_PG_DIR/data" -A trust -U postgres >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$SHEPHERD_PG_DIR/data" -l "$SHEPHERD_PG_DIR/log" -w \
    -o "-p $port -k $SHEPHERD_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=500" start >/dev/null
  SHEPHERD_PG_STOP=("${run[@]}" "$bin/pg_ctl" -D "$SHEPHERD_PG_DIR/data" -m fast stop)
  trap 'stop_throwaway_postgres' EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_throwaway_postgres() {
  if [ -n "${SHEPHERD_PG_DIR:-}" ]; then
    "${SHEPHERD_PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$SHEPHERD_PG_DIR"
  fi
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && pg_answers "$DATABASE_URL"; then
    echo "==> PostgreSQL: using DATABASE_URL" >&2
    return
  fi
  local local_url="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_answers "$local_url"; then
    echo "==> PostgreSQL: using the local server on 127.0.0.1:5432" >&2
    export DATABASE_URL=$local_url
    return
  fi
  start_throwaway_postgres
}
