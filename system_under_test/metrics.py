"""Prometheus metrics of one service process (DESIGN section 9).

The latency histogram's buckets include the SLO thresholds (0.1, 0.2, 0.5 s)
as boundaries, with neighbours, so ``histogram_quantile`` interpolates inside
narrow buckets instead of reporting 243 ms for a 110 ms p95.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip

REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ("method", "route", "status"),
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge("http_server_requests_in_flight", "HTTP requests being answered now")
DB_POOL_CONNECTIONS = Gauge(
    "db_pool_connections", "PostgreSQL connection pool, by state", ("state",)
)
CACHE_REQUESTS = Counter(
    "cache_requests_total", "Cache look-ups, by cache and result", ("cache", "result")
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Requests refused by a rate limit", ("limit",)
)
LOGINS = Counter("auth_logins_total", "Login attempts, by outcome", ("outcome",))
REFRESHES = Counter("auth_refreshes_total", "Token refreshes, by outcome", ("outcome",))
