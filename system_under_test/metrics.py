"""Prometheus metrics of one service process (DESIGN section 9).

The latency histogram's buckets include the SLO thresholds (0.1, 0.2, 0.5 s)
as boundaries, with neighbours, so ``histogram_quantile`` interpolates inside
narrow buckets instead of reporting 243 ms for a 110 ms p95.

| metric | type | labels | from |
| --- | --- | --- | --- |
| ``http_server_request_duration_seconds`` | histogram | method, route, status | all |
| ``http_server_requests_in_flight`` | gauge | | every service |
| ``db_pool_connections`` | gauge | state (size, available, waiting) | every service |
| ``db_query_duration_seconds`` | histogram | kind (statement, transaction) | every service |
| ``cache_requests_total`` | counter | cache, result (hit, miss) | clinics |
| ``cache_hit_duration_seconds`` | histogram | cache (clinic) | clinics |
| ``rate_limit_rejections_total`` | counter | limit (login_client, login_account) | auth |
| ``auth_logins_total`` | counter | outcome | auth |
| ``auth_refreshes_total`` | counter | outcome | auth |
| ``password_hashing_cpu_seconds_total`` | counter | operation (hash, verify) | auth, users |
| ``password_hashing_total`` | counter | operation (hash, verify) | auth, users |
| ``password_hashing_duration_seconds`` | histogram | operation, phase | auth, users |
| ``atendeai_service_info`` | gauge (1) | service, version | every service |
| ``fault_injection_enabled`` | gauge | method, route | a service with ``ATENDEAI_FAULTS`` rules |

The business gauges (clinics, users, active sessions) count every tenant's
rows, which no service may see: the PostgreSQL exporter publishes them
(``atendeai_clinics_count``, ``atendeai_users_count``,
``atendeai_sessions_active``; compose/postgres-exporter/queries.yaml).
Process CPU and memory come from prometheus_client's process collector.

The spec's "Database < 50 ms (queries simples)" and "Cache < 10 ms (hit)" are
read from the two store histograms (``STORE_BUCKETS``: fine below 10 ms, and
10 ms and 50 ms as boundaries with neighbours):

- ``db_query_duration_seconds{kind="statement"}``: one *simple query*, i.e.
  one SQL statement a service sends inside a transaction (``Database`` in
  ``db.py``, the one place that times it), from the moment it is sent until
  its whole result has been read: an indexed read or write of one clinic's
  rows (by id, by e-mail, by session family), one page of one clinic's list,
  an audit row. The platform sends no other kind (no joins across tenants, no
  reports). Left out: waiting for a pooled connection, and the statements
  ``db.py`` sends itself (``BEGIN``, ``COMMIT``, ``ROLLBACK``, the tenant
  context, ``/ready``'s ``SELECT 1``). ``kind="transaction"``: a whole
  transaction, from ``BEGIN`` answered to ``COMMIT`` (or ``ROLLBACK``)
  answered: its statements, the tenant context, the service's work between
  them and the commit;
- ``cache_hit_duration_seconds{cache="clinic"}``: a clinic read answered from
  Redis, from asking the Redis client for a connection until the cached JSON
  is in hand (the ``GET`` round trip and its decoding); misses are not timed.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip

#: Round trips to PostgreSQL and Redis: most take well under a millisecond; the
#: spec's cache hit (10 ms) and simple query (50 ms) limits are boundaries with
#: neighbours on both sides, so a p95 near either is interpolated in a narrow bucket.
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: ``kind`` of ``db_query_duration_seconds``.
DB_KINDS = ("statement", "transaction")

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
#: Timed in one place, ``system_under_test/db.py`` (see the module docstring).
DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "PostgreSQL time, by kind. statement: one simple query, i.e. one SQL statement a "
    "service sends inside a transaction (an indexed read or write of one clinic's rows, "
    "one page of a list, an audit row), from sent to its result read; BEGIN, COMMIT, "
    "ROLLBACK, the tenant context and the pool wait left out. transaction: BEGIN answered "
    "to COMMIT or ROLLBACK answered",
    ("kind",),
    buckets=STORE_BUCKETS,
)
CACHE_HIT_DURATION = Histogram(
    "cache_hit_duration_seconds",
    "Time to answer a read from the cache (hits only): a Redis connection, the GET and "
    "its decoding",
    ("cache",),
    buckets=STORE_BUCKETS,
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Requests refused by a rate limit", ("limit",)
)
LOGINS = Counter("auth_logins_total", "Login attempts, by outcome", ("outcome",))
REFRESHES = Counter("auth_refreshes_total", "Token refreshes, by outcome", ("outcome",))
#: bcrypt's CPU on its own (the hashing thread's ``time.thread_time``): a fixed,
#: deliberate cost that would otherwise hide everything else in a service's CPU.
PASSWORD_HASHING_CPU = Counter(
    "password_hashing_cpu_seconds_total",
    "CPU seconds spent in bcrypt, by operation",
    ("operation",),
)
PASSWORD_HASHINGS = Counter(
    "password_hashing_total", "bcrypt hashes computed, by operation", ("operation",)
)
#: Where a hash's time goes (``system_under_test.passwords``): ``queued`` from the
#: request handing it over until the hashing thread starts it (the thread was busy
#: with an earlier one), ``running`` the hash's own wall time (its CPU, plus the
#: time the thread waited for a core). Fine around bcrypt's cost-10 time.
HASHING_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125,
    0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
PASSWORD_HASHING_DURATION = Histogram(
    "password_hashing_duration_seconds",
    "bcrypt's time, by operation and phase. queued: handed over until the hashing "
    "thread starts it; running: the hash's wall time (CPU, and waiting for a core)",
    ("operation", "phase"),
    buckets=HASHING_BUCKETS,
)
SERVICE_INFO = Gauge(
    "atendeai_service_info", "Which service this process is (always 1)", ("service", "version")
)
#: Set by ``app.create_app`` only: 1 for each of the process's routes an
#: ``ATENDEAI_FAULTS`` rule names; no series at all when the variable is unset.
FAULTS_ENABLED = Gauge(
    "fault_injection_enabled",
    "1 while an ATENDEAI_FAULTS rule slows or fails this route of this process",
    ("method", "route"),
)

#: Every label value each counter can take, created at zero when a service
#: starts (``initialise``): a series that appears only with its first
#: increment hides that increment from ``rate()``, and a dashboard panel on a
#: series that does not exist yet shows "no data" instead of 0.
#: ``unavailable``: refused because the rate limits could not be checked (Redis away).
LOGIN_OUTCOMES = ("success", "invalid_credentials", "inactive", "rate_limited", "unavailable")
REFRESH_OUTCOMES = ("success", "invalid", "reuse_detected")
RATE_LIMITS = ("login_client", "login_account")
CACHE_RESULTS = ("hit", "miss")
PASSWORD_OPERATIONS = ("hash", "verify")
HASHING_PHASES = ("queued", "running")


def initialise(
    service: str, version: str, routes: Iterable[tuple[str, str, Iterable[int]]] = ()
) -> None:
    """Create this service's label sets at zero and publish its identity.

    ``routes`` are ``(method, template, statuses)``: their latency series
    exist from the start, so Prometheus sees them rise from zero and a
    ``rate()`` over a window counts the window's first requests too.
    """
    SERVICE_INFO.labels(service, version).set(1)
    for kind in DB_KINDS:
        DB_QUERY_DURATION.labels(kind)
    for operation in PASSWORD_OPERATIONS:
        PASSWORD_HASHING_CPU.labels(operation)
        PASSWORD_HASHINGS.labels(operation)
        for phase in HASHING_PHASES:
            PASSWORD_HASHING_DURATION.labels(operation, phase)
    for method, template, statuses in routes:
        for status in statuses:
            REQUEST_DURATION.labels(method, template, str(status))
    if service == "auth":
        for outcome in LOGIN_OUTCOMES:
            LOGINS.labels(outcome)
        for outcome in REFRESH_OUTCOMES:
            REFRESHES.labels(outcome)
        for limit in RATE_LIMITS:
            RATE_LIMIT_REJECTIONS.labels(limit)
    if service == "clinics":
        for result in CACHE_RESULTS:
            CACHE_REQUESTS.labels("clinic", result)
        CACHE_HIT_DURATION.labels("clinic")
