#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the registry's tests and bench; print its URL. Idempotent.
#
#   url=$(bash scripts/postgres.sh)   # postgresql+asyncpg://modelyard:modelyard@127.0.0.1:54329/modelyard
#   bash scripts/postgres.sh stop
#
# Installs PostgreSQL with apt when absent, then runs its own cluster in
# $MODELYARD_PG_DIR (default /tmp/modelyard-postgres) on $MODELYARD_PG_PORT
# (default 54329): no systemd, no dependence on the distribution's cluster,
# works as root (the server runs as the `postgres` user) or as a plain user.
# The cluster is for tests only: fsync is off, so it is fast and not durable.
# Everything but the URL goes to stderr, so the output can be captured.
set -euo pipefail

PGDIR="${MODELYARD_PG_DIR:-/tmp/modelyard-postgres}"
PORT="${MODELYARD_PG_PORT:-54329}"
ROLE="modelyard"
PASSWORD="modelyard"
DB="modelyard"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local config
  if config=$(command -v pg_config 2>/dev/null) && [ -x "$("$config" --bindir)/initdb" ]; then
    "$config" --bindir
    return
  fi
  # Debian keeps the server binaries off PATH, one directory per major version.
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BINDIR="$(find_bindir || true)"
if [ -z "$BINDIR" ] || [ ! -x "$BINDIR/initdb" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not installed and this is not root: apt-get install -y postgresql"
    exit 1
  fi
  log "installing PostgreSQL with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BINDIR="$(find_bindir)"
fi

# The server refuses to run as root: run it as `postgres` (created by the package).
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir "$PGDIR" --shell /bin/sh postgres
  fi
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

if [ "${1:-}" = "stop" ]; then
  if [ -f "$PGDIR/data/postmaster.pid" ]; then
    as_owner "$BINDIR/pg_ctl" -D "$PGDIR/data" -m fast -w stop >&2
  fi
  exit 0
fi

mkdir -p "$PGDIR"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$PGDIR"; fi

if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
  log "creating a cluster in $PGDIR/data"
  as_owner "$BINDIR/initdb" -D "$PGDIR/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log" 2>&1 \
    || { cat "$PGDIR/initdb.log" >&2; exit 1; }
fi

if ! "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  log "starting PostgreSQL on 127.0.0.1:$PORT"
  # A stale pid file from a killed server would stop pg_ctl; postgres itself
  # checks whether that pid still runs, so removing it only when nothing listens is safe.
  rm -f "$PGDIR/data/postmaster.pid"
  as_owner "$BINDIR/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 start \
    -o "-h 127.0.0.1 -p $PORT -k $PGDIR -c fsync=off -c full_page_writes=off \
        -c synchronous_commit=off -c max_connections=200" >&2 \
    || { tail -n 30 "$PGDIR/server.log" >&2; exit 1; }
fi

psql_admin() {
  as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"
}
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
  # CREATEDB: tests make one database per run or per worker.
  psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi

echo "postgresql+asyncpg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
