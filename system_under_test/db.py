"""PostgreSQL access: an async pool, and transactions that carry the tenant context.

The tenant is set per transaction with ``atendeai.set_request_context`` (which
uses ``set_config(..., true)``), never per session, so a pooled connection
carries nothing from one request to the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from system_under_test.metrics import DB_POOL_CONNECTIONS


@dataclass(frozen=True)
class TenantContext:
    """Who is acting, for RLS and for the audit trail."""

    clinic_id: UUID
    user_id: UUID | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


async def set_context(conn: AsyncConnection, context: TenantContext) -> None:
    """Set (or replace) the tenant context of the current transaction."""
    await conn.execute(
        "SELECT atendeai.set_request_context(%s, %s, %s, %s, %s)",
        (
            context.clinic_id,
            context.user_id,
            context.ip_address,
            context.user_agent,
            context.request_id,
        ),
    )


class Database:
    def __init__(self, dsn: str, *, min_size: int, max_size: int) -> None:
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="atendeai",
        )
        stats = self.pool.get_stats
        DB_POOL_CONNECTIONS.labels("size").set_function(lambda: stats().get("pool_size", 0))
        DB_POOL_CONNECTIONS.labels("available").set_function(
            lambda: stats().get("pool_available", 0)
        )
        DB_POOL_CONNECTIONS.labels("waiting").set_function(
            lambda: stats().get("requests_waiting", 0)
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tenant(self, context: TenantContext) -> AsyncIterator[AsyncConnection]:
        """A transaction in which RLS shows only ``context.clinic_id``'s rows."""
        async with self.pool.connection() as conn, conn.transaction():
            await set_context(conn, context)
            yield conn

    @asynccontextmanager
    async def unscoped(self) -> AsyncIterator[AsyncConnection]:
        """A transaction with no tenant: RLS shows nothing; only the SECURITY
        DEFINER look-ups (login by email, platform listing) answer here."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
