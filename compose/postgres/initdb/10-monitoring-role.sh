#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory
# (docker-entrypoint-initdb.d), as the superuser. Creates the login role of
# the PostgreSQL exporter: a member of pg_monitor (statistics views) and of
# nothing else. Migration 0005 grants pg_monitor the business counts
# (atendeai_monitoring.business_counts()) and CONNECT on the database; the
# local stack does the same in harness/providers/exporters.py.
set -eu
: "${ATENDEAI_MONITOR_PASSWORD:?set ATENDEAI_MONITOR_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$ATENDEAI_MONITOR_PASSWORD" <<'SQL'
CREATE ROLE atendeai_monitor WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
    NOREPLICATION INHERIT CONNECTION LIMIT 5 PASSWORD :'password';
GRANT pg_monitor TO atendeai_monitor;
SQL
