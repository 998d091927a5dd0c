"""Redis with short timeouts and a small breaker, so a Redis that is away costs little.

Redis holds the login rate-limit counters, the revoked-session marks and the
clinic cache. Every use of it goes through ``RedisGuard.available(what)``::

    async with platform.redis_guard.available("login rate limit"):
        count = await platform.redis.incr(key)

- the client (``connect_redis``) has short socket timeouts
  (``ATENDEAI_REDIS_TIMEOUT_SECONDS``, connect and each answer), and retries a
  command once, at once, only when its pooled connection turns out dropped (a
  Redis restarted under it), never after a timeout;
- a block that fails because Redis is away (refused, reset, timed out, still
  loading its data) raises ``StoreUnavailable`` and opens the breaker: for
  ``ATENDEAI_REDIS_BREAKER_SECONDS`` every block raises ``StoreUnavailable`` at
  once, without asking Redis (a frozen Redis would otherwise add the timeout
  to every request); the first block after that asks Redis again;
- ``ping()`` (``/ready``) always asks Redis, and its success closes the breaker.

What a caller does with ``StoreUnavailable`` is its security decision (see
docs/platform.md, "When a dependency is away"): the revocation check asks
PostgreSQL, the clinic cache reads PostgreSQL, login fails closed. Cache
invalidations that cannot be sent are kept (``delete_later``) and sent before
anything else once Redis answers again, so an update made while Redis was
away is not hidden by the copy cached before it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from system_under_test.errors import StoreUnavailable

log = logging.getLogger("atendeai.redis")

#: What "Redis is away" looks like to the client (BusyLoadingError, Redis
#: still reading its append-only file after a restart, is a ConnectionError).
AWAY = (RedisConnectionError, RedisTimeoutError, OSError)
#: How long a request waits for one of the client's pooled connections.
POOL_WAIT_S = 5.0


def connect_redis(url: str, *, max_connections: int, timeout_s: float) -> Redis:
    """The platform's Redis client: short timeouts, one immediate retry on a dropped connection.

    Blocking pool: a burst waits up to ``POOL_WAIT_S`` for a free connection
    instead of failing with MaxConnectionsError (the default pool's answer past 100).
    """
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=POOL_WAIT_S,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    )


class RedisGuard:
    """The breaker in front of one process's Redis client."""

    def __init__(
        self,
        redis: Redis,
        *,
        breaker_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.breaker_s = breaker_s
        self._clock = clock
        self._open_until = 0.0
        self._pending_deletes: set[str] = set()

    @property
    def retry_after(self) -> str:
        """``Retry-After`` for an answer refused because Redis is away."""
        return str(max(1, math.ceil(self.breaker_s)))

    @property
    def is_open(self) -> bool:
        """Whether Redis is being skipped now (it failed less than ``breaker_s`` ago)."""
        return self._clock() < self._open_until

    @asynccontextmanager
    async def available(self, what: str) -> AsyncIterator[Redis]:
        """The client, for a block of Redis calls; ``StoreUnavailable`` when Redis is away."""
        if self.is_open:
            raise self._unavailable(what)
        try:
            if self._pending_deletes:
                await self._send_pending_deletes()
            yield self.redis
        except AWAY as error:
            self._open_until = self._clock() + self.breaker_s
            log.warning(
                "Redis unavailable for %s (%s: %s); not asked for %g s",
                what,
                type(error).__name__,
                error,
                self.breaker_s,
            )
            raise self._unavailable(what) from None

    async def ping(self) -> None:
        """Ask Redis, even while the breaker is open; a success closes it."""
        try:
            await self.redis.ping()
            if self._pending_deletes:
                await self._send_pending_deletes()
        except AWAY:
            self._open_until = self._clock() + self.breaker_s
            raise
        self._open_until = 0.0

    def delete_later(self, key: str) -> None:
        """Delete ``key`` as soon as Redis answers again (before anything else is asked)."""
        self._pending_deletes.add(key)
        log.warning("Redis away: deleting %s once it answers again", key)

    async def _send_pending_deletes(self) -> None:
        keys = sorted(self._pending_deletes)
        await self.redis.delete(*keys)
        self._pending_deletes.difference_update(keys)
        log.info("sent %d cache invalidation(s) kept while Redis was away", len(keys))

    def _unavailable(self, what: str) -> StoreUnavailable:
        # No "Redis" in the answer: the client learns what is paused, not our parts.
        return StoreUnavailable(
            f"{what}: temporarily unavailable; retry shortly",
            headers={"Retry-After": self.retry_after},
        )
