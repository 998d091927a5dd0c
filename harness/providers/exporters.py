"""The PostgreSQL and Redis exporters of the local stack (Debian's packages).

- ``LocalPostgresExporter``: ``prometheus-postgres-exporter`` connected as
  ``atendeai_monitor``, a member of ``pg_monitor`` (sees the statistics
  views) with the custom queries of ``compose/postgres-exporter/queries.yaml``
  (the business gauges, through ``atendeai_monitoring.business_counts()``,
  migration 0005). The role cannot read a single row of a tenant table.
- ``LocalRedisExporter``: ``prometheus-redis-exporter`` with the password in
  its environment (never on the command line, where ``ps`` shows it).

``ensure_monitoring_role`` creates (or corrects) that role, as a superuser;
in Docker, ``compose/postgres/initdb/10-monitoring-role.sh`` does the same.
Both exporters are ready when their ``/metrics`` says the database is up
(``pg_up 1`` / ``redis_up 1``), so a wrong password fails the start with the
exporter's log instead of a silent 0 later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from harness.childenv import child_environment
from harness.exceptions import NotReadyYet
from harness.providers.daemon import HttpDaemon

MONITOR_ROLE = "atendeai_monitor"
POSTGRES_EXPORTER_PACKAGE = "prometheus-postgres-exporter"
REDIS_EXPORTER_PACKAGE = "prometheus-redis-exporter"


def ensure_monitoring_role(superuser_dsn: str, password: str, *, role: str = MONITOR_ROLE) -> None:
    """Create or correct the exporter's login role: ``pg_monitor`` member, nothing more."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone()
        hashed = conn.pgconn.encrypt_password(password.encode(), role.encode(), None).decode()
        verb = "ALTER ROLE {} WITH " if exists else "CREATE ROLE {} WITH "
        conn.execute(
            sql.SQL(verb).format(sql.Identifier(role))
            + sql.SQL(
                "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT "
                "CONNECTION LIMIT 5 PASSWORD {}"
            ).format(sql.Literal(hashed))
        )
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    return child_environment(drop_prefixes=("PG", "REDIS", "DATA_SOURCE"), extra=extra)


class LocalPostgresExporter(HttpDaemon):
    """``prometheus-postgres-exporter`` for one database, with the custom queries."""

    component = "postgres-exporter"
    binary_name = "prometheus-postgres-exporter"
    package = POSTGRES_EXPORTER_PACKAGE
    hint = (
        "the exporter connects as atendeai_monitor (pg_monitor member); check the DSN, "
        "that migration 0005 ran, and the queries file"
    )

    def __init__(self, directory: Path, *, dsn: str, queries_file: Path, **options) -> None:
        super().__init__(directory, **options)
        self.dsn = dsn
        self.queries_file = Path(queries_file)

    def _command(self, binary: Path, ports: Sequence[int]) -> list[str]:
        return [
            str(binary),
            f"--web.listen-address={self.host}:{ports[0]}",
            f"--extend.query-path={self.queries_file}",
            "--log.level=warn",
        ]

    def _env(self) -> Mapping[str, str]:
        separator = "&" if "?" in self.dsn else "?"
        return _clean_env({"DATA_SOURCE_NAME": f"{self.dsn}{separator}sslmode=disable"})

    def _ready(self) -> bool:
        text = self._get("/metrics")
        if "\npg_up 1" not in text:
            raise NotReadyYet("/metrics does not say pg_up 1 yet")
        return True


class LocalRedisExporter(HttpDaemon):
    """``prometheus-redis-exporter`` for one Redis server."""

    component = "redis-exporter"
    binary_name = "prometheus-redis-exporter"
    package = REDIS_EXPORTER_PACKAGE
    hint = "check the Redis address and password given to the exporter"

    def __init__(
        self, directory: Path, *, redis_host: str, redis_port: int, password: str, **options
    ) -> None:
        super().__init__(directory, **options)
        self.redis_address = f"redis://{redis_host}:{redis_port}"
        self.password = password

    def _command(self, binary: Path, ports: Sequence[int]) -> list[str]:
        return [
            str(binary),
            "-redis.addr",
            self.redis_address,
            "-web.listen-address",
            f"{self.host}:{ports[0]}",
        ]

    def _env(self) -> Mapping[str, str]:
        return _clean_env({"REDIS_PASSWORD": self.password})

    def _ready(self) -> bool:
        text = self._get("/metrics")
        if "\nredis_up 1" not in text:
            raise NotReadyYet("/metrics does not say redis_up 1 yet")
        return True


def monitor_dsn(host: str, port: int, database: str, password: str) -> str:
    return f"postgresql://{MONITOR_ROLE}:{quote(password, safe='')}@{host}:{port}/{database}"


__all__ = [
    "MONITOR_ROLE",
    "LocalPostgresExporter",
    "LocalRedisExporter",
    "ensure_monitoring_role",
    "monitor_dsn",
]
