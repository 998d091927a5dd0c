"""Tenant rows: the one place that inserts a clinic (a tenant) and its users.

Every clinic the harness makes is inserted here: the test tenants
(``harness.tenants``), the load accounts (``harness.loadseed``) and the
clinics of the security checks (``harness.security.isolation`` and
``harness.security.rls_paths``). The rows go in on the caller's connection, so
the caller chooses the role that inserts them (the owner, or the service role
on purpose) and RLS judges them as it judges the services' writes.

``insert_clinic`` and ``insert_users`` run in the caller's transaction, under
the tenant context the caller has set; ``create_clinic`` is the whole of it: one
transaction under the new clinic's own context (``set_request_context``, as the
services set it), the clinic, then its users.

Rows are mappings of column -> value. A value may be SQL (a
``psycopg.sql.Composable``), written into the statement as it is:
``CONTEXT_CLINIC`` fills ``clinic_id`` from the tenant context, as the services
write it. There is no RETURNING unless ``returning`` names columns: with one,
RLS checks the new rows against the SELECT policies as well as the INSERT ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

#: A ``clinic_id`` taken from the tenant context the transaction has set.
CONTEXT_CLINIC = sql.SQL("atendeai.current_clinic_id()")

Row = Mapping[str, Any]


def create_clinic(
    conn: psycopg.Connection[Any],
    clinic: Row,
    users: Sequence[Row] = (),
    *,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """In one transaction under the clinic's own context: ``insert_clinic``."""
    with conn.transaction():
        conn.execute("select atendeai.set_request_context(%s::uuid)", [clinic["id"]])
        return insert_clinic(conn, clinic, users, returning=returning)


def insert_clinic(
    conn: psycopg.Connection[Any],
    clinic: Row,
    users: Sequence[Row] = (),
    *,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert one clinic, then its ``users`` (their ``clinic_id`` is the clinic's
    ``id`` unless given); return each user's ``returning`` columns, in order."""
    _insert(conn, "clinics", [clinic])
    default = {"clinic_id": clinic["id"]} if "id" in clinic else {}
    return insert_users(conn, [{**default, **user} for user in users], returning=returning)


def insert_users(
    conn: psycopg.Connection[Any], users: Sequence[Row], *, returning: Sequence[str] = ()
) -> list[tuple[Any, ...]]:
    """Insert ``users`` (one statement, every row the same columns); return each
    row's ``returning`` columns, in order."""
    return _insert(conn, "users", users, returning=returning)


def _insert(
    conn: psycopg.Connection[Any],
    table: str,
    rows: Sequence[Row],
    *,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    if not rows:
        return []
    statement, params = _statement(table, rows)
    if returning:
        statement += sql.SQL(" returning {}").format(
            sql.SQL(", ").join(map(sql.Identifier, returning))
        )
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(statement, params[0])
            return cursor.fetchall() if returning else []
        cursor.executemany(statement, params, returning=bool(returning))
        if not returning:
            return []
        inserted = cursor.fetchall()
        while cursor.nextset():  # executemany: one result per row
            inserted += cursor.fetchall()
        return inserted


def _statement(table: str, rows: Sequence[Row]) -> tuple[sql.Composed, list[list[Any]]]:
    """One INSERT for every row, and each row's parameters (its values that are not SQL)."""
    columns = list(rows[0])
    fixed = _sql_values(rows[0])
    for row in rows[1:]:
        if list(row) != columns or _sql_values(row) != fixed:
            raise ValueError(
                f"every {table} row needs the same columns and SQL values: {columns}, {row}"
            )
    values = sql.SQL(", ").join(fixed.get(column, sql.Placeholder()) for column in columns)
    statement = sql.SQL("insert into atendeai.{} ({}) values ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)), values
    )
    params = [[value for column, value in row.items() if column not in fixed] for row in rows]
    return statement, params


def _sql_values(row: Row) -> dict[str, sql.Composable]:
    return {column: value for column, value in row.items() if isinstance(value, sql.Composable)}


__all__ = ["CONTEXT_CLINIC", "create_clinic", "insert_clinic", "insert_users"]
