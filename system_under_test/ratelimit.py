"""Fixed-window rate limits kept in Redis, so every instance shares them.

The counter is incremented before the decision (INCR is atomic), so N
concurrent attempts against a limit of L admit exactly L of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from system_under_test.config import RateLimit

WINDOW_NAMES = {1: "Second", 60: "Minute", 3600: "Hour", 86400: "Day"}


@dataclass(frozen=True)
class RateLimitDecision:
    name: str
    limit: RateLimit
    count: int
    reset_seconds: int

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit.limit - self.count)

    def headers(self) -> dict[str, str]:
        """Kong-style and IETF draft headers (``RateLimit-*``)."""
        unit = WINDOW_NAMES.get(self.limit.window_seconds, f"{self.limit.window_seconds}s")
        headers = {
            f"X-RateLimit-Limit-{unit}": str(self.limit.limit),
            f"X-RateLimit-Remaining-{unit}": str(self.remaining),
            "RateLimit-Limit": str(self.limit.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


async def hit(redis: Redis, name: str, key: str, limit: RateLimit) -> RateLimitDecision:
    """Count one attempt against ``limit`` for ``key`` and say whether it is allowed."""
    now = time.time()
    window = int(now // limit.window_seconds)
    redis_key = f"atendeai:ratelimit:{name}:{key}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(redis_key)
        pipe.expire(redis_key, limit.window_seconds + 1)
        count, _ = await pipe.execute()
    reset = max(1, int((window + 1) * limit.window_seconds - now + 0.999))
    return RateLimitDecision(name, limit, int(count), reset)


def tightest(decisions: list[RateLimitDecision]) -> RateLimitDecision:
    """The decision to report: a refusal if any, else the one with least room left."""
    refused = [d for d in decisions if not d.allowed]
    pool = refused or decisions
    return min(pool, key=lambda d: (d.remaining, -d.reset_seconds))
