"""PostgreSQL access: an async pool, and transactions that carry the tenant context.

The tenant is set per transaction with ``atendeai.set_request_context`` (which
uses ``set_config(..., true)``), never per session, so a pooled connection
carries nothing from one request to the next.

PostgreSQL away (killed, frozen, restarting) costs a request a bounded time
and answers ``DatabaseUnavailable`` (503 ``database_unavailable``), never a hang:

- waiting for a pooled connection is bounded (``acquire_timeout_s``), and so
  is connecting a new one (libpq ``connect_timeout``);
- a transaction has a deadline (``deadline_s``) from the moment it asks for
  a connection: when it passes, the connection's socket is shut down, so a
  statement waiting on a frozen server fails at once with a broken connection
  (libpq has no read timeout; cancelling the task would make psycopg ask the
  frozen server to cancel the query and wait up to 10 s more);
- a connection that broke is never reused: the pool discards it when it comes
  back, and the first broken one found also drains the pool's idle ones (after
  a PostgreSQL restart they are all dead), so the service serves again as
  soon as PostgreSQL answers, with no check query on each request; a pooled
  connection found dead at ``BEGIN`` (nothing sent yet) is swapped for another
  once, so a restart costs no request that arrives after it;
- the pool gives up a failed reconnection after ``RECONNECT_GIVE_UP_S`` and
  starts a fresh one when a request needs it, so its backoff never grows
  longer than a few seconds.

Only a broken connection or no connection in time is "unavailable": an
``OperationalError`` on a live connection (a deadlock, a serialization
failure) is the query's own error, answered as before.

Every connection's cursors time the services' statements (``TimedCursor``)
and ``_transaction`` times each transaction, into
``db_query_duration_seconds{kind}`` (``statement``, ``transaction``): the
spec's "Database < 50 ms (queries simples)", read by the release gate.
A statement is timed from the moment it is sent until its whole result has
been read, whether it succeeded or failed (a statement cut by the deadline
counts its seconds); the pool wait is outside, and so are the statements this
module sends itself (``OWN_STATEMENTS``), which are no service's query.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from system_under_test.errors import DatabaseUnavailable
from system_under_test.metrics import DB_POOL_CONNECTIONS, DB_QUERY_DURATION

log = logging.getLogger("atendeai.db")

#: ``Retry-After`` of a ``database_unavailable`` answer (the pool retries connecting every 1-2 s).
RETRY_AFTER_S = 2
#: How long the pool keeps retrying one failed connection before it gives up
#: (and connects afresh when a request needs one): its backoff stays short.
RECONNECT_GIVE_UP_S = 4.0
#: ``/ready``'s PostgreSQL check: within the 2 s the probe allows.
PING_DEADLINE_S = 1.5
#: At most one drain of the pool per this many seconds.
DRAIN_INTERVAL_S = 1.0

#: The tenant context of a transaction (``set_context``).
SET_CONTEXT_SQL = "SELECT atendeai.set_request_context(%s, %s, %s, %s, %s)"
#: What this module sends itself to open, end, scope or probe a transaction:
#: not timed as a statement (no service's query; a transaction's time has them).
OWN_STATEMENTS = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SELECT 1", SET_CONTEXT_SQL})
_STATEMENT_SECONDS = DB_QUERY_DURATION.labels("statement")
_TRANSACTION_SECONDS = DB_QUERY_DURATION.labels("transaction")

#: Set by ``discard_commits()``: this request's transactions roll back where
#: they would commit (the ``ack_uncommitted`` defect of ``ATENDEAI_FAULTS``).
_COMMITS_DISCARDED: ContextVar[bool] = ContextVar("atendeai_commits_discarded", default=False)


@dataclass(frozen=True)
class TenantContext:
    """Who is acting, for RLS and for the audit trail."""

    clinic_id: UUID
    user_id: UUID | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


def _context_values(context: TenantContext) -> tuple:
    return (
        context.clinic_id,
        context.user_id,
        context.ip_address,
        context.user_agent,
        context.request_id,
    )


async def set_context(conn: AsyncConnection, context: TenantContext) -> None:
    """Set (or replace) the tenant context of the current transaction."""
    await conn.execute(SET_CONTEXT_SQL, _context_values(context))


class TimedCursor(AsyncCursor):
    """The pool's cursors: every statement a service sends is timed (one
    ``perf_counter`` pair and one histogram observation), ``OWN_STATEMENTS`` not."""

    async def execute(self, query, params=None, *, prepare=None, binary=None):
        if query.__class__ is str and query in OWN_STATEMENTS:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        started = time.perf_counter()
        try:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        finally:
            _STATEMENT_SECONDS.observe(time.perf_counter() - started)


@contextmanager
def discard_commits() -> Iterator[None]:
    """Within this block (this request's task), transactions roll back instead of
    committing, and say nothing: a DEFECT on purpose, for ``ATENDEAI_FAULTS``
    ``ack_uncommitted`` only."""
    token = _COMMITS_DISCARDED.set(True)
    try:
        yield
    finally:
        _COMMITS_DISCARDED.reset(token)


def _sever(conn: AsyncConnection) -> None:
    """Shut the connection's socket down: whatever waits on it fails at once."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:  # already closed
        return
    with suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        deadline_s: float = 5.0,
        acquire_timeout_s: float = 2.0,
        connect_timeout_s: int = 2,
        stuck_after_error: bool = False,
    ) -> None:
        self.deadline_s = deadline_s
        self.acquire_timeout_s = acquire_timeout_s
        #: ``ATENDEAI_FAULTS`` ``stuck_after_db_error`` (a DEFECT on purpose): the
        #: first time the database is unavailable, close the pool for good.
        self.stuck_after_error = stuck_after_error
        self._stuck = False
        self._last_drain = -DRAIN_INTERVAL_S
        self._tasks: set[asyncio.Task] = set()
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "cursor_factory": TimedCursor,
                "connect_timeout": connect_timeout_s,
            },
            timeout=acquire_timeout_s,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
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
        for task in list(self._tasks):
            task.cancel()
        await self.pool.close()

    @asynccontextmanager
    async def tenant(self, context: TenantContext) -> AsyncIterator[AsyncConnection]:
        """A transaction in which RLS shows only ``context.clinic_id``'s rows."""
        async with self._transaction(context) as conn:
            yield conn

    @asynccontextmanager
    async def unscoped(self) -> AsyncIterator[AsyncConnection]:
        """A transaction with no tenant: RLS shows nothing; only the SECURITY
        DEFINER look-ups (login by email, platform listing) answer here."""
        async with self._transaction(None) as conn:
            yield conn

    async def read(
        self, context: TenantContext | None, query: str, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        """The rows of one read in ``context``'s tenant (None: no tenant, as
        ``unscoped()``), in one round trip.

        The tenant context and the query go as one simple-protocol message
        (values bound client-side, quoted by libpq): PostgreSQL runs them as one
        implicit transaction, so the context (``set_config(..., true)``) holds
        for the query and ends with it, as in ``tenant()``, without a BEGIN and
        a COMMIT of their own. For a single statement that writes nothing; the
        whole round trip is timed as the statement."""
        started = time.perf_counter()
        try:
            if context is None:
                statement, values = query, tuple(params)
            else:
                statement = f"{SET_CONTEXT_SQL}; {query}"
                values = (*_context_values(context), *params)
            async with self._checked_out(statement, self.deadline_s, params=values) as cursor:
                if context is not None:
                    cursor.nextset()  # the context's own result first, then the query's
                return await cursor.fetchall()
        finally:
            _STATEMENT_SECONDS.observe(time.perf_counter() - started)

    async def ping(self) -> None:
        """``SELECT 1`` within ``PING_DEADLINE_S``; ``DatabaseUnavailable`` otherwise."""
        async with self._checked_out("SELECT 1", min(PING_DEADLINE_S, self.deadline_s)):
            pass

    # --- the machinery ---------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, context: TenantContext | None) -> AsyncIterator[AsyncConnection]:
        # BEGIN and the tenant context in one round trip (values bound client-side,
        # as in read()): each round trip costs the service a send, a wait and a wake-up
        first, params = (
            ("BEGIN", None)
            if context is None
            else (f"BEGIN; {SET_CONTEXT_SQL}", _context_values(context))
        )
        async with self._checked_out(first, self.deadline_s, params=params) as cursor:
            conn = cursor.connection
            began = time.perf_counter()
            try:
                try:
                    yield conn
                except BaseException:
                    if conn.pgconn.transaction_status in (
                        TransactionStatus.INTRANS,
                        TransactionStatus.INERROR,
                    ):
                        with suppress(psycopg.Error):
                            await conn.execute("ROLLBACK")
                    raise
                if _COMMITS_DISCARDED.get():
                    log.warning(
                        "ATENDEAI_FAULTS ack_uncommitted: transaction ROLLED BACK on purpose; "
                        "the response will say it was saved"
                    )
                    await conn.execute("ROLLBACK")
                else:
                    await conn.execute("COMMIT")
            finally:
                _TRANSACTION_SECONDS.observe(time.perf_counter() - began)

    @asynccontextmanager
    async def _checked_out(
        self,
        first: str,
        deadline_s: float,
        *,
        params: Sequence[Any] | None = None,
    ) -> AsyncIterator[AsyncCursor]:
        """The cursor on a pooled connection on which ``first`` has run (with
        ``params`` bound client-side when given), severed when the deadline passes.

        A pooled connection that turns out dead at ``first`` (PostgreSQL was
        restarted under it; nothing was done on it yet) is replaced, once, after
        the pool's other idle connections (as dead) are dropped. A broken
        connection or no connection in time is ``DatabaseUnavailable``.
        """
        if self._stuck:
            raise DatabaseUnavailable(
                "the database is unavailable; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        cursor = await self._begin(first, deadline, params=params, retry=True)
        conn = cursor.connection
        timer = loop.call_at(deadline, _sever, conn)
        try:
            yield cursor
        except psycopg.OperationalError as error:
            if not conn.broken:
                raise
            self._spawn(self._drain())
            late = loop.time() >= deadline
            raise self._unavailable(error, deadline_passed=late) from None
        finally:
            timer.cancel()
            await self.pool.putconn(conn)

    async def _begin(
        self,
        first: str,
        deadline: float,
        *,
        params: Sequence[Any] | None,
        retry: bool,
    ) -> AsyncCursor:
        """A cursor on a connection from the pool on which ``first`` ran, by
        ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self.pool.getconn(
                timeout=max(0.001, min(self.acquire_timeout_s, deadline - loop.time()))
            )
        except (PoolTimeout, PoolClosed) as error:
            raise self._unavailable(error) from None
        timer = loop.call_at(deadline, _sever, conn)
        try:
            # not through the pool's TimedCursor: the caller times what is a statement
            cursor = AsyncCursor(conn) if params is None else AsyncClientCursor(conn)
            await cursor.execute(first, params)
        except psycopg.OperationalError as error:
            timer.cancel()
            await self.pool.putconn(conn)
            if not conn.broken:
                raise
            if not retry or loop.time() >= deadline:
                self._spawn(self._drain())
                raise self._unavailable(error) from None
            log.warning("a pooled connection was found broken; trying a new one")
            await self._drain()
            return await self._begin(first, deadline, params=params, retry=False)
        except BaseException:
            timer.cancel()
            await self.pool.putconn(conn)
            raise
        timer.cancel()
        return cursor

    def _unavailable(
        self, error: Exception, *, deadline_passed: bool = False
    ) -> DatabaseUnavailable:
        """The 503 to answer for ``error``, logged with what it hides from the client."""
        why = f"deadline of {self.deadline_s:g} s passed; " if deadline_passed else ""
        log.warning("database unavailable: %s%s: %s", why, type(error).__name__, error)
        if self.stuck_after_error and not self._stuck:
            self._stuck = True
            log.error(
                "ATENDEAI_FAULTS stuck_after_db_error: closing the connection pool for good "
                "after one database error; this process will answer 503 until restarted"
            )
            self._spawn(self.pool.close())
        return DatabaseUnavailable(
            "the database is unavailable; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    async def _drain(self) -> None:
        """Close the pool's idle connections (likely dead too) and open new ones;
        at most once per ``DRAIN_INTERVAL_S``."""
        now = time.monotonic()
        if self._stuck or now - self._last_drain < DRAIN_INTERVAL_S:
            return
        self._last_drain = now
        log.warning("a pooled connection broke: dropping the pool's idle connections")
        await self.pool.drain()

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
