"""Database roles, database and schema migrations of the platform.

Two steps, as in docs/platform.md "Database":

- ``bootstrap(superuser_dsn, ...)`` (as a superuser, idempotent): the three
  cluster roles with their attributes and passwords, the database owned by
  ``atendeai_owner``, and who may connect to it.
- ``apply_migrations(owner_dsn)`` (as ``atendeai_owner``): the SQL files in
  ``system_under_test/migrations`` not applied yet, in version order, each in
  its own transaction, under an advisory lock, recorded with a sha256 checksum
  in ``atendeai_meta.schema_migrations``.

Command line::

    python -m system_under_test.migrate --owner-dsn DSN \\
        [--superuser-dsn DSN --owner-password P --app-password P]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DATABASE = "atendeai"
OWNER_ROLE = "atendeai_owner"
APP_ROLE = "atendeai_app"
DEFINER_ROLE = "atendeai_definer"

# The attributes each role must have, restated on every bootstrap so that a
# drifted role is put back (docs/platform.md, table of roles).
_ROLE_ATTRIBUTES = {
    OWNER_ROLE: "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT",
    APP_ROLE: "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT",
    DEFINER_ROLE: "NOLOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT",
}

# One advisory lock key for bootstrap and migrations, whatever the database.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"atendeai.migrate").digest()[:8], "big", signed=True)
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """Bootstrap or a migration failed; the message names the file and the PostgreSQL error."""


@dataclass(frozen=True)
class Migration:
    version: str
    filename: str
    text: str
    checksum: str


def load_migrations(directory: str | os.PathLike[str] | None = None) -> list[Migration]:
    """The migration files in version order: the packaged ones, or those in ``directory``."""
    root = resources.files("system_under_test") / "migrations" if directory is None else None
    entries = list(root.iterdir()) if root is not None else list(Path(directory).iterdir())
    migrations: dict[str, Migration] = {}
    for entry in entries:
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: migration files are named NNNN_lowercase_name.sql")
        data = entry.read_bytes()
        version = match["version"]
        if version in migrations:
            raise MigrationError(
                f"{entry.name}: version {version} is also {migrations[version].filename}"
            )
        migrations[version] = Migration(
            version=version,
            filename=entry.name,
            text=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [migrations[version] for version in sorted(migrations)]


def bootstrap(
    superuser_dsn: str,
    *,
    database: str = DATABASE,
    owner_password: str,
    app_password: str,
) -> None:
    """Create or correct the roles and the database; set both passwords. Idempotent.

    ``superuser_dsn`` must reach an existing database (e.g. ``postgres``) as a
    superuser: creating a BYPASSRLS role needs one.
    """
    if not owner_password or not app_password:
        raise ValueError("bootstrap needs a non-empty owner_password and app_password")
    passwords = {OWNER_ROLE: owner_password, APP_ROLE: app_password}
    db = sql.Identifier(database)
    try:
        with psycopg.connect(superuser_dsn, autocommit=True) as conn:
            row = conn.execute(
                "select rolsuper from pg_roles where rolname = current_user"
            ).fetchone()
            if not row or not row[0]:
                raise MigrationError("bootstrap must connect as a superuser")
            conn.execute("select pg_advisory_lock(%s)", [_LOCK_KEY])
            for role, attributes in _ROLE_ATTRIBUTES.items():
                exists = conn.execute(
                    "select 1 from pg_roles where rolname = %s", [role]
                ).fetchone()
                statement = sql.SQL("ALTER ROLE {} WITH " if exists else "CREATE ROLE {} WITH ")
                statement = statement.format(sql.Identifier(role)) + sql.SQL(attributes)
                if role in passwords:
                    # Hashed here (SCRAM, per the server's password_encryption):
                    # the clear password never reaches the server or its logs.
                    hashed = conn.pgconn.encrypt_password(
                        passwords[role].encode(), role.encode(), None
                    )
                    statement += sql.SQL(" PASSWORD {}").format(sql.Literal(hashed.decode()))
                conn.execute(statement)
            # The service role and the definer are members of nothing: no
            # SET ROLE path to a more privileged role (DESIGN.md 7.1).
            for member in (APP_ROLE, DEFINER_ROLE):
                granted = conn.execute(
                    "select r.rolname from pg_auth_members m"
                    " join pg_roles r on r.oid = m.roleid"
                    " join pg_roles u on u.oid = m.member where u.rolname = %s",
                    [member],
                ).fetchall()
                for (role,) in granted:
                    conn.execute(
                        sql.SQL("REVOKE {} FROM {}").format(
                            sql.Identifier(role), sql.Identifier(member)
                        )
                    )
            # The owner hands the SECURITY DEFINER functions to the definer role.
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(DEFINER_ROLE), sql.Identifier(OWNER_ROLE)
                )
            )
            if conn.execute("select 1 from pg_database where datname = %s", [database]).fetchone():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(OWNER_ROLE))
                )
            else:
                conn.execute(
                    sql.SQL(
                        "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0"
                    ).format(db, sql.Identifier(OWNER_ROLE))
                )
            # Only the service role (and the owner) may connect; nobody gets TEMP,
            # so no one can plant objects in pg_temp.
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(APP_ROLE))
            )
            conn.execute("select pg_advisory_unlock(%s)", [_LOCK_KEY])

        # PostgreSQL 15's defaults for schema public, restated for a database that
        # was created elsewhere or upgraded: owned by the database owner (who
        # installs the extensions there), nobody else may create in it.
        target = make_conninfo(superuser_dsn, dbname=database)
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    except psycopg.Error as error:
        raise MigrationError(f"bootstrap of database {database!r}: {_describe(error)}") from error


def apply_migrations(
    owner_dsn: str, *, directory: str | os.PathLike[str] | None = None
) -> list[str]:
    """Apply the pending migrations as the owner; return the versions applied by this call.

    Raises ``MigrationError`` naming the file when an applied file changed
    (checksum), is missing, or when a file fails (with the PostgreSQL error;
    that file's transaction is rolled back, earlier files stay applied).
    ``directory`` replaces the packaged files (scratch databases, tests).
    """
    migrations = load_migrations(directory)
    by_version = {m.version: m for m in migrations}
    applied_now: list[str] = []
    try:
        conn = psycopg.connect(owner_dsn, autocommit=True)
    except psycopg.Error as error:
        raise MigrationError(f"cannot connect to apply migrations: {_describe(error)}") from error
    with conn:
        try:
            # Concurrent migrators (several instances starting at once) queue here.
            conn.execute("select pg_advisory_lock(%s)", [_LOCK_KEY])
            with conn.transaction():
                conn.execute("create schema if not exists atendeai_meta")
                conn.execute(
                    "create table if not exists atendeai_meta.schema_migrations ("
                    " version text primary key,"
                    " filename text not null,"
                    " checksum text not null,"
                    " applied_at timestamptz not null default now(),"
                    " applied_by text not null default current_user)"
                )
            recorded = {
                version: (filename, checksum)
                for version, filename, checksum in conn.execute(
                    "select version, filename, checksum from atendeai_meta.schema_migrations"
                )
            }
        except psycopg.Error as error:
            raise MigrationError(f"cannot read applied migrations: {_describe(error)}") from error

        for version, (filename, checksum) in sorted(recorded.items()):
            migration = by_version.get(version)
            if migration is None:
                raise MigrationError(f"{filename}: applied to the database but no longer present")
            if migration.checksum != checksum:
                raise MigrationError(
                    f"{migration.filename}: changed after it was applied "
                    f"(recorded sha256 {checksum}, file has {migration.checksum}); "
                    "add a new migration instead of editing an applied one"
                )
        latest = max(recorded, default="")
        for migration in migrations:
            if migration.version in recorded:
                continue
            if migration.version < latest:
                raise MigrationError(
                    f"{migration.filename}: older than the applied {recorded[latest][0]}; "
                    "give it a version after the last applied one"
                )
            try:
                with conn.transaction():
                    # Everything in a migration is schema-qualified; an unqualified
                    # name fails here instead of landing in whatever schema is first.
                    conn.execute("set local search_path = pg_catalog, pg_temp")
                    conn.execute(migration.text)
                    conn.execute(
                        "insert into atendeai_meta.schema_migrations (version, filename, checksum)"
                        " values (%s, %s, %s)",
                        [migration.version, migration.filename, migration.checksum],
                    )
            except psycopg.Error as error:
                raise MigrationError(
                    f"{migration.filename}: {_describe(error, migration.text)}"
                ) from error
            applied_now.append(migration.version)
    return applied_now


def _describe(error: psycopg.Error, text: str | None = None) -> str:
    """The PostgreSQL error with its SQLSTATE, and the line of the migration it points at."""
    diag = error.diag
    message = diag.message_primary or str(error).strip()
    parts = [f"{diag.sqlstate or type(error).__name__}: {message}"]
    if text is not None and diag.statement_position:
        line = text.count("\n", 0, int(diag.statement_position) - 1) + 1
        parts.insert(0, f"line {line}:")
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        parts.append(f"HINT: {diag.message_hint}")
    if diag.context:
        parts.append(f"CONTEXT: {diag.context.strip()}")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m system_under_test.migrate",
        description="Bootstrap (with --superuser-dsn) and migrate the AtendeAI database.",
    )
    parser.add_argument("--owner-dsn", required=True, help="DSN of atendeai_owner on the database")
    parser.add_argument("--superuser-dsn", help="bootstrap roles and database first, as this")
    parser.add_argument("--database", default=DATABASE, help="database to bootstrap")
    parser.add_argument("--owner-password", help="password to set for atendeai_owner")
    parser.add_argument("--app-password", help="password to set for atendeai_app")
    args = parser.parse_args(argv)
    if args.superuser_dsn and not (args.owner_password and args.app_password):
        parser.error("--superuser-dsn needs --owner-password and --app-password")
    try:
        if args.superuser_dsn:
            bootstrap(
                args.superuser_dsn,
                database=args.database,
                owner_password=args.owner_password,
                app_password=args.app_password,
            )
            print(f"bootstrapped roles and database {args.database}")
        applied = apply_migrations(args.owner_dsn)
    except MigrationError as error:
        print(f"migrate: error: {error}", file=sys.stderr)
        return 1
    names = {m.version: m.filename for m in load_migrations()}
    for version in applied:
        print(f"applied {names[version]}")
    if not applied:
        print("nothing to apply: the database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
