"""The spec's "Métricas Atuais" as objectives, each shown able to hold and to fail
(issue 13, section 4).

The default SLO file reads three server-side figures over the load window:
``p95_db_query`` (Database < 50 ms, queries simples), ``p95_cache_hit``
(Cache < 10 ms, hit) and ``gateway_overhead`` (Gateway < 20 ms, roteamento);
``harness/gate/slos/default.yaml`` states each method. Here a local stack of its
own (one instance per service) runs with defects injected on three routes
nothing else in this module uses, and each objective is read the way the gate
reads it (``harness.gate.evidence.read_objectives``, then ``harness.gate.slo.evaluate``
with the evidence: samples and scrape targets' up-ness) over a window of real
requests through HAProxy:

- a normal window (clinic reads answered from the cache, user listings, more
  than 1024 requests through HAProxy): all three objectives PASS, and their
  figures are far below the spec's limits;
- ``GET /users/{user_id} slow_query=80ms``: every such request holds a
  statement 80 ms in PostgreSQL (``pg_sleep``), half the window's statements:
  ``p95_db_query`` FAILS, its figure in the 75-100 ms bucket (or above);
- ``GET /clinics/{clinic_id} slow_cache=30ms``: every hit's Redis read answers
  30 ms late: ``p95_cache_hit`` FAILS, its figure in the 25-40 ms bucket (or above);
- HAProxy with ``maxconn 1`` per instance, and eight clients at once on
  ``GET /auth/me`` (5 ms in the handler, ``delay=5ms``): requests wait in
  HAProxy's queue for the one slot, which no service timer sees:
  ``gateway_overhead`` FAILS, HAProxy's queue time is several times the
  service's own mean time for the route, which its timer sees alone.

Every window is the gate's evidence window (``harness.gate.scrapes``): a scrape
of every target before its first request and after its last, and the windows
follow one another, so each holds only its own requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from harness.gate.evidence import read_objectives
from harness.gate.scrapes import evidence_window, quiet_start
from harness.gate.slo import (
    DEFAULT_SLO_FILE,
    ObjectiveResult,
    SloFile,
    Status,
    evaluate,
    load_slo_file,
)
from harness.prometheus_api import PrometheusClient, wait_for_stack_targets
from harness.providers.haproxy import HAProxySettings
from harness.providers.local import LocalStackConfig, supervised_local_stack
from harness.stack import Stack
from harness.tenants import ApiSession, ClientAddresses, Tenant, create_tenant, hash_password
from system_under_test.faults import FaultSpecError, Outcome, parse_plan, platform_routes

pytestmark = pytest.mark.stack

FAULTS = "; ".join(
    [
        "GET /users/{user_id} slow_query=80ms",
        "GET /clinics/{clinic_id} slow_cache=30ms",
        "GET /auth/me delay=5ms",
    ]
)
#: Requests that pass a backend past the 1024 HAProxy's averages are over.
WARM_UP_REQUESTS = 1100
#: A window's requests through HAProxy: ``gateway_overhead`` needs 1024, with room.
GATEWAY_REQUESTS = 1400
OBJECTIVES = ("p95_db_query", "p95_cache_hit", "gateway_overhead")


@dataclass(frozen=True)
class PerfStack:
    stack: Stack
    tenant: Tenant
    reader: PrometheusClient
    slo: SloFile
    token: str  # the tenant admin's, signed in before any window

    def gateway(self) -> httpx.Client:
        """A client of HAProxy signed in as the tenant's admin."""
        return httpx.Client(
            base_url=self.stack.haproxy_url or "",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def window(self, drive: Callable[[], None]) -> tuple[float, float]:
        """``drive()`` inside the gate's evidence window (``harness.gate.scrapes``: a
        scrape of every target before and after it), at least three scrape intervals
        long. (A window shorter than two scrapes has no ``rate()`` at all: on a fast
        host the 1,400 requests of ``normal_window`` took 1.3 s and every objective
        was "no data".)"""
        start = quiet_start(self.reader, progress=_silent)
        began = time.time()
        drive()
        time.sleep(max(0.0, began + 3 * self.reader.scrape_interval_s() - time.time()))
        return evidence_window(self.reader, start, time.time(), progress=_silent)

    def judge(self, name: str, window: tuple[float, float]) -> ObjectiveResult:
        """The default file's objective ``name`` over ``window``, as the gate judges it."""
        slo = SloFile(version=1, objectives=[o for o in self.slo.objectives if o.name == name])
        readings = read_objectives(slo, self.reader, window)
        assert not readings.notes, readings.notes
        (result,) = evaluate(slo, readings.values, evidence=readings.evidence)
        return result

    def figure(self, promql: str, window: tuple[float, float]) -> float | None:
        seconds = max(1, round(window[1] - window[0]))
        return self.reader.instant(promql.replace("$window", f"{seconds}s"), window[1])


def _silent(line: str) -> None:
    """Progress lines of the gate's waits, not shown in the tests."""


def _get_all(client: httpx.Client, path: str, times: int) -> None:
    for _ in range(times):
        response = client.get(path)
        assert response.status_code == 200, response.text


def test_slow_cache_names_a_route_that_reads_the_cache():
    plan = parse_plan("GET /clinics/me slow_cache=30ms every=2; GET /clinics/me delay=5ms")
    assert plan.outcome("GET", "/clinics/me", 1) == Outcome(delay_ms=5)
    assert plan.outcome("GET", "/clinics/me", 2) == Outcome(delay_ms=5, slow_cache_ms=30)
    assert plan.outcome("GET", "/clinics/me", 2).added_ms == 35
    assert plan.describe() == (
        "GET /clinics/me slow_cache=30ms every=2; GET /clinics/me delay=5ms every=1"
    )
    parse_plan("GET /clinics/{clinic_id} slow_cache=1ms", known_routes=platform_routes())
    for text, problem in (
        ("GET /users slow_cache=30ms", "name a route that reads the cache"),
        ("PATCH /clinics/me slow_cache=30ms", "name a route that reads the cache"),
        ("GET /clinics/me slow_cache=0ms", "slow_cache must be 1..60000 ms"),
        ("GET /clinics/me slow_cache=30", "write the time in milliseconds"),
    ):
        with pytest.raises(FaultSpecError, match=problem):
            parse_plan(text)


@pytest.fixture(scope="module")
def perf(request: pytest.FixtureRequest) -> Iterator[PerfStack]:
    if request.config.getoption("--stack") == "external":
        pytest.skip("starts a local stack of its own, with defects (not on --stack=external)")
    config = LocalStackConfig(
        instances_per_service=1,
        service_env=(("ATENDEAI_FAULTS", FAULTS),),
        haproxy=HAProxySettings(server_maxconn=1),
        keep_dir=request.config.getoption("--keep-stack-dir"),
    )
    with supervised_local_stack(config, progress=lambda line: None) as control:
        stack = control.stack
        api = ApiSession(stack, ClientAddresses())
        tenant = create_tenant(
            stack.postgres.owner_dsn, api=api, password_hash=hash_password(), roles=("admin",)
        )
        wait_for_stack_targets(stack, timeout_s=30)
        reader = PrometheusClient(stack.prometheus_url or "")
        perf = PerfStack(stack, tenant, reader, load_slo_file(), tenant.access_token("admin"))
        # HAProxy 2.6's exporter divides each backend's time sums by 1024 until
        # the backend has served 1024 requests: the normal window's backends are
        # past that before it starts, so their figures are not read low.
        with perf.gateway() as client:
            _get_all(client, "/clinics/me", WARM_UP_REQUESTS)
            _get_all(client, "/users", WARM_UP_REQUESTS)
        try:
            yield perf
        finally:
            api.close()


@pytest.fixture(scope="module")
def normal_window(perf: PerfStack) -> tuple[float, float]:
    """Cache hits and user listings, sequentially, through HAProxy."""

    def drive() -> None:
        with perf.gateway() as client:
            for _ in range(GATEWAY_REQUESTS // 2 + 1):
                assert client.get("/clinics/me").headers["X-Cache"] == "HIT"
                assert client.get("/users").status_code == 200

    return perf.window(drive)


def test_the_default_file_holds_the_spec_s_current_metrics():
    by_name = {o.name: o for o in load_slo_file(DEFAULT_SLO_FILE).objectives}
    for name, threshold in zip(OBJECTIVES, (0.05, 0.01, 0.02), strict=True):
        objective = by_name[name]
        assert (objective.comparator, objective.threshold, objective.unit) == (
            "<",
            threshold,
            "seconds",
        ), name
        assert objective.required_samples, name
    assert by_name["gateway_overhead"].required_samples >= 1024


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_objective_holds_on_a_normal_window(perf, normal_window, name):
    result = perf.judge(name, normal_window)
    assert result.status is Status.PASS, result.reason
    assert result.value is not None and result.value < result.objective.threshold / 2, result


def test_simple_queries_held_80_ms_in_postgresql_fail_the_database_objective(perf, normal_window):
    with perf.gateway() as client:
        user_id = perf.tenant.users["admin"].id
        window = perf.window(lambda: _get_all(client, f"/users/{user_id}", 40))
    result = perf.judge("p95_db_query", window)
    assert result.status is Status.FAIL, result.reason
    # half the statements took 80 ms or more: the p95 is in their bucket (75-100 ms) or above
    assert result.value is not None and result.value > 0.075, result
    # The truth: one pg_sleep(0.08) and one look-up per request, both timed.
    statements = perf.figure(
        'sum(increase(db_query_duration_seconds_count{kind="statement"}[$window]))', window
    )
    assert statements is not None and statements >= 2 * 40 * 0.8, statements


def test_cache_hits_answered_30_ms_late_fail_the_cache_objective(perf, normal_window):
    with perf.gateway() as client:
        path = f"/clinics/{perf.tenant.clinic_id}"

        def drive() -> None:
            for _ in range(60):
                assert client.get(path).headers["X-Cache"] == "HIT"

        window = perf.window(drive)
    result = perf.judge("p95_cache_hit", window)
    assert result.status is Status.FAIL, result.reason
    # every hit took 30 ms or more: the p95 is in their bucket (25-40 ms) or above
    assert result.value is not None and result.value > 0.025, result


def test_requests_queued_in_haproxy_fail_the_gateway_objective(perf, normal_window):
    """Eight clients at once, one slot per instance: HAProxy queues the rest. The
    service's own timer sees its 5 ms and more; only the gateway's figure sees the wait."""
    per_client = GATEWAY_REQUESTS // 8 + 1

    def drive() -> None:
        def one_client(_: int) -> None:
            with perf.gateway() as client:
                _get_all(client, "/auth/me", per_client)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one_client, range(8)))

    window = perf.window(drive)
    result = perf.judge("gateway_overhead", window)
    assert result.status is Status.FAIL, result.reason
    # The wait is HAProxy's queue (seven requests ahead of each, one at a time),
    # which the service's own timer does not see: its mean stays a fraction of it.
    queued = perf.figure(
        'avg_over_time(haproxy_backend_queue_time_average_seconds{proxy="auth"}[$window])', window
    )
    own_mean = perf.figure(
        'sum(increase(http_server_request_duration_seconds_sum{route="/auth/me"}[$window])) / '
        'sum(increase(http_server_request_duration_seconds_count{route="/auth/me"}[$window]))',
        window,
    )
    assert queued is not None and own_mean is not None, (queued, own_mean)
    assert queued > 0.02 and queued > 3 * own_mean, f"queue {queued} s, service {own_mean} s"
