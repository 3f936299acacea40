#!/usr/bin/env bash
# A throw-away local PostgreSQL for the tests (and for trying `--db postgres://…` on one machine).
#
#   scripts/pg-local.sh up     start it (initdb on first use); a no-op when it is already running
#   scripts/pg-local.sh url    print its URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   scripts/pg-local.sh down   stop it and delete its data directory
#
# It listens on 127.0.0.1 only, trusts local connections (no password: never use it for real
# results) and keeps its data in $ETAGRID_PG_DIR (default /tmp/etagrid-pg-$PORT, shared by every
# checkout on the machine, which is fine: each test creates its own database). Port:
# $ETAGRID_PG_PORT (default 55432). PostgreSQL runs as the `postgres` user when started by root
# (initdb refuses root); if the server binaries are missing, `up` installs Debian's `postgresql`.
set -euo pipefail

PORT="${ETAGRID_PG_PORT:-55432}"
DIR="${ETAGRID_PG_DIR:-/tmp/etagrid-pg-$PORT}"
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/pg_ctl" ]; then BIN="$d"; fi   # the glob sorts ascending: the newest wins
  done
  [ -n "${BIN:-}" ]
}

# Runs a server binary as the data directory's owner.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres -U postgres; }

cmd="${1:-}"
case "$cmd" in
  url)
    echo "$URL"
    ;;
  up)
    BIN=""
    if ! find_bin; then
      echo "pg-local: PostgreSQL is not installed; installing Debian's postgresql (apt-get)" >&2
      if [ "$(id -u)" != 0 ]; then
        echo "pg-local: run as root, or: sudo apt-get install -y postgresql" >&2
        exit 1
      fi
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
      find_bin || { echo "pg-local: no /usr/lib/postgresql/*/bin/pg_ctl after installing postgresql" >&2; exit 1; }
    fi
    if ready; then
      echo "pg-local: already running at $URL" >&2
      exit 0
    fi
    if [ ! -s "$DIR/PG_VERSION" ]; then
      rm -rf "$DIR"
      mkdir -p "$DIR"
      [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
      chmod 700 "$DIR"
      as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR.initdb.log" 2>&1 \
        || { cat "$DIR.initdb.log" >&2; echo "pg-local: initdb -D $DIR failed (log above)" >&2; exit 1; }
    fi
    # The socket goes in the data directory: /var/run/postgresql may be missing or not writable.
    if ! as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 30 \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c max_connections=200 -c fsync=off" start >/dev/null; then
      tail -n 20 "$DIR/server.log" >&2 || true
      echo "pg-local: could not start PostgreSQL on 127.0.0.1:$PORT (log above; is the port taken? set ETAGRID_PG_PORT)" >&2
      exit 1
    fi
    ready || { echo "pg-local: started but not answering on 127.0.0.1:$PORT" >&2; exit 1; }
    echo "pg-local: running at $URL (data in $DIR)" >&2
    ;;
  down)
    BIN=""
    if find_bin && [ -s "$DIR/PG_VERSION" ]; then
      as_pg "$BIN/pg_ctl" -D "$DIR" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR" "$DIR.initdb.log"
    echo "pg-local: stopped; removed $DIR" >&2
    ;;
  *)
    echo "usage: scripts/pg-local.sh up|down|url" >&2
    exit 2
    ;;
esac
