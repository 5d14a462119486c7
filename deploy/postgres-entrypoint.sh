#!/bin/sh
# Entry point of the inferx-postgres image (Debian's PostgreSQL binaries, no
# other tools): on first start, initialises $PGDATA from the variables the
# official postgres image reads (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB), then runs the server in the foreground. Extra arguments go to
# the server (e.g. -c listen_addresses=127.0.0.1 -p 5433).
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    method=scram-sha-256
    printf '%s\n' "$POSTGRES_PASSWORD" | initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C \
      --auth-local=trust --auth-host="$method" --pwfile=/dev/stdin
  else
    echo "POSTGRES_PASSWORD is not set: clients connect without a password" >&2
    method=trust
    initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C --auth=trust
  fi
  printf 'host all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE "%s";\n' "$db" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
