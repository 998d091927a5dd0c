"""Fault injection: make chosen routes slow, fail or crash on purpose (off unless set).

For tests only: the error contract under failures nobody planned for, and the
release gate's figures calibrated against a latency and error share known in
advance. Enabled by one environment variable, read once into ``Settings``::

    ATENDEAI_FAULTS="GET /clinics/me delay=300ms; GET /clinics/me error=500 every=50"

Rules are separated by ``;``; each is ``METHOD /route/template ACTION [every=K]``:

- ``delay=Nms``: wait N milliseconds (1..60000) before the handler runs;
- ``slow_query=Nms``: hold a pooled PostgreSQL connection in a query that
  takes N milliseconds (``pg_sleep``) before the handler runs: a slow database,
  and a request that is inside PostgreSQL when PostgreSQL goes away (a query
  longer than ``ATENDEAI_DB_DEADLINE_SECONDS``, 5 s by default, is cut there:
  503 ``database_unavailable``);
- ``slow_cache=Nms`` (the clinic reads only: ``GET /clinics/me`` and
  ``GET /clinics/{clinic_id}``, the routes that read the cache): the request's
  cache read answers N milliseconds late, after its Redis ``GET``, as from a
  slow Redis; a hit's time (``cache_hit_duration_seconds``) includes it;
- ``error=500`` or ``error=503``: answer that status with code ``fault_injected``,
  through the platform's normal error path (the one JSON error shape);
- ``raise``: raise a plain ``RuntimeError`` inside the handler, as a bug would;
- ``raise=database``: run a query PostgreSQL rejects (an unknown table), so a
  real driver exception, with SQL in its text, escapes the handler.

Two DEFECTS, for the resilience drill to prove it can fail (a platform variant
that loses writes, and one that never recovers):

- ``ack_uncommitted`` (write routes only: POST, PUT, PATCH, DELETE): the
  handler runs and answers as usual (201 with the new id...), but every
  transaction of the request is rolled back instead of committed: a write
  acknowledged and then lost;
- ``stuck_after_db_error`` (no ``every``): the route names the service (every
  process serving it); the first time such a process finds the database
  unavailable (a broken connection, the deadline passed, no pooled connection
  in time, on any request or ``/ready``), it closes its connection pool for
  good, as a service that closes its pool on error and never reopens it
  would: from then on every request that needs the database, and ``/ready``,
  answer 503 until the process is restarted. ``GET /ready stuck_after_db_error``
  makes every service so.

``every=K`` (default 1) picks requests by a counter, never by chance: each
service process counts the requests that reach a route's handler (after
authentication and body parsing) from 1, and a rule applies to the K-th,
2K-th, ... of them. The share is exactly known, so a test can compute the true
percentiles and error ratio in advance (``FaultPlan.outcome``). The delays
(and slow queries, and slow cache reads) of every rule that applies add up; then the first
``error``/``raise`` rule that applies (in the order written) fails the request;
an ``ack_uncommitted`` rule that applies discards the request's commits.

The route is the template (``/users/{user_id}``), as in the latency
histogram's ``route`` label; every rule must name a route of the platform.
A malformed value stops the service at start with a message naming the rule
and the problem. When rules are set, each service logs them as a warning at
start and exposes ``fault_injection_enabled{method,route} 1``. Unset or empty,
nothing is wrapped and no request is counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from system_under_test.db import discard_commits
from system_under_test.errors import ApiError, Unavailable
from system_under_test.services.clinics import slow_cache_reads

if TYPE_CHECKING:
    from aiohttp import web

    from system_under_test.routing import Call, Route

ENV_VAR = "ATENDEAI_FAULTS"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ERROR_STATUSES = (500, 503)
RAISE_KINDS = ("exception", "database")
MAX_DELAY_MS = 60_000
MAX_EVERY = 1_000_000
#: The query ``raise=database`` runs: PostgreSQL refuses it (no such table).
FAILING_QUERY = "SELECT id FROM atendeai.fault_injection_no_such_table WHERE id = %s"

log = logging.getLogger("atendeai.faults")

Action = Literal["delay", "slow_query", "slow_cache", "error", "raise", "ack_uncommitted", "stuck"]
#: The methods that write: ``ack_uncommitted`` applies to their routes only.
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: The routes that read the clinic cache: ``slow_cache`` applies to them only.
CACHE_READ_ROUTES = (("GET", "/clinics/me"), ("GET", "/clinics/{clinic_id}"))


class FaultSpecError(ValueError):
    """``ATENDEAI_FAULTS`` is malformed; the message names the rule and the problem."""


class InjectedCrash(RuntimeError):
    """The plain exception ``raise`` throws inside a handler (not an ``ApiError``)."""


class InjectedError(ApiError):
    """``error=500``: an internal error on purpose, answered through the normal path."""

    default_code = "fault_injected"


class InjectedUnavailable(Unavailable):
    """``error=503``: "a dependency is down" on purpose."""

    default_code = "fault_injected"


@dataclass(frozen=True)
class FaultRule:
    """One rule: what happens to every ``every``-th request of ``method route``."""

    method: str
    route: str
    action: Action
    delay_ms: int = 0  # delay, slow_query, slow_cache
    status: int = 0  # error
    kind: str = ""  # raise: "exception" or "database"
    every: int = 1

    def applies_to(self, count: int) -> bool:
        """Whether the ``count``-th request (from 1) of the route is one of this rule's."""
        return count % self.every == 0

    def describe(self) -> str:
        action = {
            "delay": f"delay={self.delay_ms}ms",
            "slow_query": f"slow_query={self.delay_ms}ms",
            "slow_cache": f"slow_cache={self.delay_ms}ms",
            "error": f"error={self.status}",
            "raise": "raise" if self.kind == "exception" else f"raise={self.kind}",
            "ack_uncommitted": "ack_uncommitted",
            "stuck": "stuck_after_db_error",
        }[self.action]
        if self.action == "stuck":  # the whole process's: no every (parse_plan refuses one)
            return f"{self.method} {self.route} {action}"
        return f"{self.method} {self.route} {action} every={self.every}"


@dataclass(frozen=True)
class Outcome:
    """What the plan does to one request: the waits, then a failure or not."""

    delay_ms: int = 0  # in the service
    slow_query_ms: int = 0  # in PostgreSQL
    failure: FaultRule | None = None
    discard_commits: bool = False  # ack_uncommitted: answered as saved, rolled back
    slow_cache_ms: int = 0  # in the cache read (while Redis answers)

    @property
    def added_ms(self) -> int:
        """The latency the plan adds to the request (``slow_cache``: while Redis answers)."""
        return self.delay_ms + self.slow_query_ms + self.slow_cache_ms


@dataclass(frozen=True)
class FaultPlan:
    """Every rule of ``ATENDEAI_FAULTS``; empty (the default) means off."""

    rules: tuple[FaultRule, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def rules_for(self, method: str, route: str) -> tuple[FaultRule, ...]:
        return tuple(r for r in self.rules if (r.method, r.route) == (method, route))

    def outcome(self, method: str, route: str, count: int) -> Outcome:
        """What happens to the ``count``-th request (from 1) of ``method route``."""
        if count < 1:
            raise ValueError(f"requests are counted from 1, not {count}")
        chosen = [r for r in self.rules_for(method, route) if r.applies_to(count)]
        delay = sum(r.delay_ms for r in chosen if r.action == "delay")
        slow_query = sum(r.delay_ms for r in chosen if r.action == "slow_query")
        slow_cache = sum(r.delay_ms for r in chosen if r.action == "slow_cache")
        failure = next((r for r in chosen if r.action in ("error", "raise")), None)
        discard = any(r.action == "ack_uncommitted" for r in chosen)
        return Outcome(delay, slow_query, failure, discard, slow_cache)

    def stuck_after_db_error(self, routes: Iterable[tuple[str, str]]) -> bool:
        """Whether a ``stuck_after_db_error`` rule names one of ``routes`` (a service's)."""
        mine = set(routes)
        return any(r.action == "stuck" and (r.method, r.route) in mine for r in self.rules)

    def describe(self) -> str:
        return "; ".join(rule.describe() for rule in self.rules)


# --- parsing -------------------------------------------------------------------------


_DELAY = re.compile(r"^(delay|slow_query|slow_cache)=(\d+)ms$")
_ERROR = re.compile(r"^error=(\d+)$")
_EVERY = re.compile(r"^every=(\d+)$")
USAGE = (
    "expected rules separated by ';', each 'METHOD /route/template ACTION [every=K]' "
    "with ACTION one of delay=Nms, slow_query=Nms, slow_cache=Nms, error=500, error=503, raise, "
    "raise=database, ack_uncommitted, stuck_after_db_error "
    "(e.g. 'GET /clinics/me delay=300ms every=4; GET /users error=500 every=10')"
)


def parse_plan(text: str, *, known_routes: Iterable[tuple[str, str]] | None = None) -> FaultPlan:
    """The plan ``text`` describes; ``FaultSpecError`` naming the first bad rule.

    ``known_routes`` (``(method, template)`` pairs): every rule must name one.
    """
    if not text.strip():
        return FaultPlan()
    known = None if known_routes is None else frozenset(known_routes)
    rules = []
    for number, part in enumerate(text.split(";"), start=1):
        where = f"{ENV_VAR} rule {number} ({part.strip()!r})"
        if not part.strip():
            raise FaultSpecError(f"{where}: the rule is empty (a stray ';'?); {USAGE}")
        rules.append(_parse_rule(part.split(), where, known))
    return FaultPlan(tuple(rules))


def _parse_rule(
    words: Sequence[str], where: str, known: frozenset[tuple[str, str]] | None
) -> FaultRule:
    if len(words) not in (3, 4):
        raise FaultSpecError(f"{where}: {len(words)} words; {USAGE}")
    method, route, action, *rest = words
    if method not in METHODS:
        raise FaultSpecError(f"{where}: unknown method {method!r} (one of {', '.join(METHODS)})")
    if not route.startswith("/"):
        raise FaultSpecError(f"{where}: the route must be a template starting with '/'")
    if known is not None and (method, route) not in known:
        same_path = sorted(m for m, r in known if r == route)
        hint = (
            f"that route takes {', '.join(same_path)}"
            if same_path
            else "routes are templates such as /users/{user_id}"
        )
        raise FaultSpecError(f"{where}: no service has the route {method} {route} ({hint})")
    every = 1
    if rest:
        match = _EVERY.match(rest[0])
        if match is None:
            raise FaultSpecError(f"{where}: {rest[0]!r} is not every=K; {USAGE}")
        every = int(match.group(1))
        if not 1 <= every <= MAX_EVERY:
            raise FaultSpecError(f"{where}: every must be 1..{MAX_EVERY}, not {every}")
    if match := _DELAY.match(action):
        kind, delay_ms = match.group(1), int(match.group(2))
        if not 1 <= delay_ms <= MAX_DELAY_MS:
            raise FaultSpecError(f"{where}: {kind} must be 1..{MAX_DELAY_MS} ms, not {delay_ms}")
        if kind == "slow_cache" and (method, route) not in CACHE_READ_ROUTES:
            reads = " and ".join(f"{m} {r}" for m, r in CACHE_READ_ROUTES)
            raise FaultSpecError(
                f"{where}: slow_cache slows the cache read: name a route that reads the "
                f"cache ({reads}), not {method} {route}"
            )
        waits: Action = kind  # type: ignore[assignment]  # delay, slow_query, slow_cache
        return FaultRule(method, route, waits, delay_ms=delay_ms, every=every)
    if match := _ERROR.match(action):
        status = int(match.group(1))
        if status not in ERROR_STATUSES:
            raise FaultSpecError(
                f"{where}: error must be one of {', '.join(map(str, ERROR_STATUSES))}, not {status}"
            )
        return FaultRule(method, route, "error", status=status, every=every)
    if action == "raise":
        return FaultRule(method, route, "raise", kind="exception", every=every)
    if action == "ack_uncommitted":
        if method not in WRITE_METHODS:
            raise FaultSpecError(
                f"{where}: ack_uncommitted loses writes: name a write route "
                f"({', '.join(WRITE_METHODS)}), not {method}"
            )
        return FaultRule(method, route, "ack_uncommitted", every=every)
    if action == "stuck_after_db_error":
        if rest:
            raise FaultSpecError(
                f"{where}: stuck_after_db_error takes no every=K "
                "(it is the whole process's, from its first database error on)"
            )
        return FaultRule(method, route, "stuck")
    if action.startswith("raise="):
        kind = action.removeprefix("raise=")
        if kind not in RAISE_KINDS:
            raise FaultSpecError(f"{where}: raise={kind} is unknown (raise, raise=database)")
        return FaultRule(method, route, "raise", kind=kind, every=every)
    if action.startswith(("delay=", "slow_query=", "slow_cache=")):
        raise FaultSpecError(f"{where}: {action!r}: write the time in milliseconds, e.g. 250ms")
    raise FaultSpecError(f"{where}: unknown action {action!r}; {USAGE}")


def platform_routes() -> frozenset[tuple[str, str]]:
    """``(method, template)`` of every route of every service."""
    import importlib

    from system_under_test import SERVICES
    from system_under_test.app import common_routes

    routes = {(r.method, r.path) for r in common_routes("any", [])}
    for service in SERVICES:
        module = importlib.import_module(f"system_under_test.services.{service}")
        routes |= {(r.method, r.path) for r in module.ROUTES}
    return frozenset(routes)


# --- applying -------------------------------------------------------------------------


def with_faults(plan: FaultPlan, routes: Iterable[Route]) -> list[Route]:
    """``routes``, each route a rule names with its handler wrapped (the rest as they are)."""
    wrapped = []
    for route in routes:
        rules = plan.rules_for(route.method, route.path)
        if rules:
            route = dataclasses.replace(route, handler=_faulty(plan, route))
        wrapped.append(route)
    return wrapped


def _faulty(plan: FaultPlan, route: Route):
    counter = itertools.count(1)  # one event loop per process: no lock needed
    handler = route.handler

    async def faulty(call: Call) -> web.StreamResponse:
        count = next(counter)
        outcome = plan.outcome(route.method, route.path, count)
        if outcome.delay_ms:
            await asyncio.sleep(outcome.delay_ms / 1000)
        if outcome.slow_query_ms:
            async with call.platform.db.unscoped() as conn:
                await conn.execute("SELECT pg_sleep(%s)", (outcome.slow_query_ms / 1000,))
        if outcome.slow_cache_ms:  # the handler's cache read answers late
            with slow_cache_reads(outcome.slow_cache_ms / 1000):
                return await _fail_or_handle(call, outcome, count)
        return await _fail_or_handle(call, outcome, count)

    async def _fail_or_handle(call: Call, outcome: Outcome, count: int) -> web.StreamResponse:
        failure = outcome.failure
        if failure is None and outcome.discard_commits:
            log.warning(
                "%s ack_uncommitted: %s %s request %d will be answered as saved and rolled back",
                ENV_VAR,
                route.method,
                route.path,
                count,
            )
            with discard_commits():
                return await handler(call)
        if failure is None:
            return await handler(call)
        reason = f"fault injected on purpose ({ENV_VAR}: {failure.describe()}, request {count})"
        if failure.action == "error":
            raise (InjectedUnavailable if failure.status == 503 else InjectedError)(reason)
        if failure.kind == "database":
            async with call.platform.db.unscoped() as conn:
                await conn.execute(FAILING_QUERY, (count,))
        raise InjectedCrash(reason)

    return faulty


def injected_statuses(plan: FaultPlan, method: str, route: str) -> set[int]:
    """The statuses the plan can make ``method route`` answer (for the metrics' zero series)."""
    statuses = set()
    for rule in plan.rules_for(method, route):
        if rule.action in ("error", "raise"):
            statuses.add(rule.status if rule.action == "error" else 500)
        if rule.action == "stuck":
            statuses.add(503)
    return statuses


def announce(plan: FaultPlan, service: str, routes: Iterable[Route]) -> None:
    """Log, loudly, the rules that make this service misbehave."""
    paths = {(r.method, r.path) for r in routes}
    mine = [r for r in plan.rules if (r.method, r.route) in paths]
    for rule in mine:
        log.warning("FAULT INJECTION ON in %s (%s): %s", service, ENV_VAR, rule.describe())
    log.warning(
        "%s is set: %d of its %d rule(s) apply to %s; requests fail or slow down ON PURPOSE. "
        "Never set it outside a test.",
        ENV_VAR,
        len(mine),
        len(plan.rules),
        service,
    )


__all__ = [
    "ENV_VAR",
    "FaultPlan",
    "FaultRule",
    "FaultSpecError",
    "InjectedCrash",
    "InjectedError",
    "InjectedUnavailable",
    "Outcome",
    "announce",
    "injected_statuses",
    "parse_plan",
    "platform_routes",
    "with_faults",
]
