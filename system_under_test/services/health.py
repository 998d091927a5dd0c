"""Health service: one view of the whole platform.

``GET /status`` asks every other service's ``/health`` and PostgreSQL and
Redis, concurrently, each with a short deadline: ``ok`` when all answer,
``degraded`` when a service is down, ``down`` when a dependency is (503).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from system_under_test.app import _check
from system_under_test.routing import PUBLIC, Call, Route, json_response
from system_under_test.schemas import PlatformStatus

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)


async def status(call: Call) -> web.Response:
    platform = call.platform
    urls = platform.settings.service_urls

    async with aiohttp.ClientSession(timeout=PROBE_TIMEOUT) as session:

        def probe(url: str):
            async def get() -> None:
                async with session.get(f"{url}/health") as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")

            return get

        results = await asyncio.gather(
            *(_check(name, probe(url)) for name, url in sorted(urls.items())),
            _check("postgres", platform.db.ping),
            _check("redis", platform.redis_guard.ping),
        )
    services = dict(results[: len(urls)])
    dependencies = dict(results[len(urls) :])
    if any(r.status != "ok" for r in dependencies.values()):
        overall = "down"
    elif any(r.status != "ok" for r in services.values()):
        overall = "degraded"
    else:
        overall = "ok"
    body = PlatformStatus(status=overall, services=services, dependencies=dependencies)
    return json_response(body, status=200 if overall == "ok" else 503)


ROUTES = [
    Route(
        "GET",
        "/status",
        status,
        "Every service and dependency, with latency",
        PUBLIC,
        responses={200: PlatformStatus, 503: PlatformStatus},
    ),
]
