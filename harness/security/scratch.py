"""A scratch PostgreSQL cluster with the platform's schema, for injecting defects.

Roles are cluster-wide, so a defect such as "the service role has BYPASSRLS"
must never be injected into the shared stack's cluster. ``ScratchCluster``
starts a cluster of its own (``LocalPostgres``, about half a second from the
cached initdb template), creates the platform's roles and a migrated template
database once, and hands out fresh databases cloned from that template
(``CREATE DATABASE ... TEMPLATE``, a file copy: tens of milliseconds), so each
injected defect gets a database nobody else has touched.

Role-level defects are undone with ``reset_roles()``: the platform's own
``bootstrap`` restates every role attribute and revokes the service role's
memberships.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.processes import StartedResource
from harness.providers.postgres import LocalPostgres

TEMPLATE_DATABASE = "atendeai_template"
OWNER_ROLE = "atendeai_owner"
APP_ROLE = "atendeai_app"


@dataclass(frozen=True)
class ScratchDatabase:
    """One migrated database in the scratch cluster, with a DSN per role."""

    name: str
    superuser_dsn: str
    owner_dsn: str
    app_dsn: str

    def execute(self, *statements: str, as_owner: bool = False) -> None:
        """Run statements in one transaction, as the superuser (or the owner)."""
        import psycopg

        dsn = self.owner_dsn if as_owner else self.superuser_dsn
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement.encode())


class ScratchCluster(StartedResource):
    """A context manager: a PostgreSQL 15 cluster with the platform's roles.

    ``database()`` returns a fresh, fully migrated database each call.
    """

    def __init__(
        self, *, template_cache_dir: Path | None = None, base_dir: Path | None = None
    ) -> None:
        self._postgres = LocalPostgres(base_dir, template_cache_dir=template_cache_dir)
        self.owner_password = "scratch-" + secrets.token_urlsafe(16)
        self.app_password = "scratch-" + secrets.token_urlsafe(16)
        self._counter = itertools.count(1)

    def _start(self) -> None:
        from system_under_test.migrate import apply_migrations, bootstrap

        self._postgres.__enter__()
        bootstrap(
            self._postgres.superuser_dsn,
            database=TEMPLATE_DATABASE,
            owner_password=self.owner_password,
            app_password=self.app_password,
        )
        apply_migrations(self._dsn(TEMPLATE_DATABASE, OWNER_ROLE))

    def stop(self) -> None:
        self._postgres.stop()

    @property
    def superuser_dsn(self) -> str:
        """The superuser on the maintenance database ``postgres``."""
        return self._postgres.superuser_dsn

    def _dsn(self, database: str, role: str | None = None) -> str:
        password = {OWNER_ROLE: self.owner_password, APP_ROLE: self.app_password}.get(role or "")
        return self._postgres.dsn(database, user=role, password=password)

    def database(self, prefix: str = "scratch") -> ScratchDatabase:
        """A fresh database cloned from the migrated template."""
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{next(self._counter)}"
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(name),
                    sql.Identifier(TEMPLATE_DATABASE),
                    sql.Identifier(OWNER_ROLE),
                )
            )
        # The database-level grants (CONNECT for the service role) are not copied.
        self.reset_roles(database=name)
        return ScratchDatabase(
            name=name,
            superuser_dsn=self._dsn(name),
            owner_dsn=self._dsn(name, OWNER_ROLE),
            app_dsn=self._dsn(name, APP_ROLE),
        )

    def empty_database(self, prefix: str = "empty") -> ScratchDatabase:
        """A fresh database with the platform's roles and no migration applied
        (to test a migration against data written by the versions before it)."""
        name = f"{prefix}_{next(self._counter)}"
        self.reset_roles(database=name)  # bootstrap creates the database
        return ScratchDatabase(
            name=name,
            superuser_dsn=self._dsn(name),
            owner_dsn=self._dsn(name, OWNER_ROLE),
            app_dsn=self._dsn(name, APP_ROLE),
        )

    def reset_roles(self, *, database: str = TEMPLATE_DATABASE) -> None:
        """Put every role back as the platform defines it (undoes role-level defects)."""
        from system_under_test.migrate import bootstrap

        bootstrap(
            self.superuser_dsn,
            database=database,
            owner_password=self.owner_password,
            app_password=self.app_password,
        )

    def execute(self, *statements: str) -> None:
        """Run cluster-level statements (roles) as the superuser, in one transaction."""
        import psycopg

        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement.encode())

    def query(self, statement: str, params: Any = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            return list(conn.execute(statement, params).fetchall())


__all__ = ["ScratchCluster", "ScratchDatabase"]
