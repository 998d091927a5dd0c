"""Each process's own copy of the signed-out session families, kept by Redis pub/sub.

Every authenticated request asks whether its session family was signed out.
Asking Redis each time cost a round trip per request (a send, a wait, a
wake-up: about a tenth of a service's CPU). Instead every process keeps the
revoked families in memory:

- a revocation (``publish_revocation``) sets the Redis mark, as before, and
  publishes the family on ``CHANNEL`` in the same round trip; the revoking
  process then waits (``RevocationWatch.seen``, at most ``SEEN_WAIT_S``) until
  its own subscription has received it: Redis writes a message to every
  subscriber in the same pass, so by then every process's socket holds it
  before the client can send its next request, and that request is read after
  the message (revocation takes effect at once on every instance);
- ``RevocationWatch`` subscribes first, then reads the marks already set
  (``SCAN``), so nothing revoked in between is missed; only then is it
  ``live``. While it is not live (starting, Redis restarted, the subscription
  dropped), ``revoked()`` answers None and the caller asks Redis (or, while
  Redis is away, PostgreSQL) as before: the check is never skipped;
- entries expire with the access tokens they stop (the access-token TTL).

A frozen Redis leaves the subscription silent, not dropped: no revocation can
be made meanwhile either (the mark cannot be set, so the revoking transaction
rolls back), so the copy stays complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from system_under_test.redisguard import AWAY

log = logging.getLogger("atendeai.revocations")

CHANNEL = "atendeai:revoked-families"
MARK_PREFIX = "atendeai:revoked-family:"
#: How long a revocation waits for its own process to hear it back.
SEEN_WAIT_S = 1.0
#: Pause before subscribing again after the subscription dropped.
RESUBSCRIBE_S = 0.5


def revoked_family_key(family: object) -> str:
    return f"{MARK_PREFIX}{family}"


async def publish_revocation(redis: Redis, family: uuid.UUID, reason: str, ttl_s: int) -> None:
    """Set the family's Redis mark and tell every process, in one round trip."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(revoked_family_key(family), reason, ex=ttl_s)
        pipe.publish(CHANNEL, str(family))
        await pipe.execute()


class RevocationWatch:
    """The revoked families this process knows of, while its subscription is live.

    It has a Redis client of its own that never reconnects by itself: a
    subscription silently re-made would have missed what was published
    meanwhile, so a dropped one ends ``live`` and is made again with the marks
    read afresh."""

    def __init__(self, url: str, *, timeout_s: float, ttl_s: float) -> None:
        self.redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,  # not for the subscription's reads: they wait
            retry=Retry(NoBackoff(), 0),
        )
        self.ttl_s = ttl_s
        self.live = False
        self._revoked: dict[uuid.UUID, float] = {}  # family -> when its entry expires
        self._heard: dict[uuid.UUID, asyncio.Event] = {}
        self._task: asyncio.Task | None = None

    def revoked(self, family: uuid.UUID) -> bool | None:
        """Whether ``family`` was signed out; None while the copy cannot be trusted."""
        if not self.live:
            return None
        expires = self._revoked.get(family)
        if expires is None:
            return False
        if time.monotonic() < expires:
            return True
        del self._revoked[family]
        return False

    async def seen(self, family: uuid.UUID) -> bool:
        """Wait (at most ``SEEN_WAIT_S``) until this process heard ``family``'s revocation
        (at once when it is not listening: then nobody here trusts the copy)."""
        if family in self._revoked or not self.live:
            return family in self._revoked
        event = self._heard.setdefault(family, asyncio.Event())
        try:
            async with asyncio.timeout(SEEN_WAIT_S):
                await event.wait()
            return True
        except TimeoutError:
            log.warning("revocation of %s not heard back within %g s", family, SEEN_WAIT_S)
            return False
        finally:
            self._heard.pop(family, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    def _note(self, family: uuid.UUID) -> None:
        now = time.monotonic()
        # entries are kept in the order they expire (one TTL for all): the
        # expired ones are at the front, dropped here so the copy stays bounded
        while self._revoked and next(iter(self._revoked.values())) <= now:
            del self._revoked[next(iter(self._revoked))]
        self._revoked.pop(family, None)  # noted again: to the back, with its new expiry
        self._revoked[family] = now + self.ttl_s
        if (event := self._heard.get(family)) is not None:
            event.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except AWAY as error:
                self._lost(f"{type(error).__name__}: {error}")
            except Exception:  # never leave the copy trusted after a surprise
                log.exception("revocation watch failed")
                self._lost("unexpected error")
            await asyncio.sleep(RESUBSCRIBE_S)

    def _lost(self, why: str) -> None:
        if self.live:
            log.warning("revocation watch lost (%s): asking Redis on every request", why)
        self.live = False

    async def _follow(self) -> None:
        async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(CHANNEL)
            # subscribed first: a revocation made while the marks are read is heard too
            async for key in self.redis.scan_iter(match=f"{MARK_PREFIX}*", count=1000):
                with contextlib.suppress(ValueError):
                    self._note(uuid.UUID(key.removeprefix(MARK_PREFIX)))
            self.live = True
            log.info("revocation watch live (%d revoked families known)", len(self._revoked))
            try:
                # no socket timeout on the subscription: it waits for messages
                while pubsub.connection is not None and pubsub.connection.is_connected:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    with contextlib.suppress(ValueError):
                        self._note(uuid.UUID(message["data"]))
            finally:
                self.live = False


__all__ = [
    "CHANNEL",
    "RevocationWatch",
    "publish_revocation",
    "revoked_family_key",
]
