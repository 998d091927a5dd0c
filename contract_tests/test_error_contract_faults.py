"""Failures nobody planned for keep the error contract (issue 11, item 6).

The module starts a local stack of its own (one instance per service) whose
services run with ``ATENDEAI_FAULTS`` (``system_under_test.faults``): plain
exceptions raised inside handlers, queries PostgreSQL rejects, injected 5xx on
every second request, and slow queries that keep requests inside PostgreSQL
while it is killed under them. Every unexpected-failure answer must be the
one JSON error shape, carry its request id, and show no traceback, SQL, file
path, exception or library name (``assert_clean_failure``). ``/ready`` must
answer 503 while PostgreSQL or Redis is down and 200 once they are back.

Proof: the same check fails on a service variant whose error path leaks its
trace (``leaky_errors`` of ``security/sec_broken_platform.py``), made to crash
by the same fault rule.
"""

from __future__ import annotations

import importlib
import itertools
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from contract_tests.conftest import assert_error, wait_ready
from harness.childenv import child_environment
from harness.processes import wait_until
from harness.providers.local import LocalStackConfig, LocalStackControl, supervised_local_stack
from harness.providers.redis import LocalRedis
from harness.security.instances import extra_service
from harness.stack import Stack
from harness.tenants import ApiSession, ClientAddresses, Tenant, create_tenant, hash_password
from system_under_test.app import common_routes
from system_under_test.config import ConfigError, Settings
from system_under_test.faults import (
    FaultPlan,
    FaultSpecError,
    Outcome,
    parse_plan,
    platform_routes,
    with_faults,
)
from system_under_test.services import users as users_service

BROKEN_PLATFORM = Path(__file__).parent / "security" / "sec_broken_platform.py"
SLOW_QUERY_S = 3.0
FAULTS = "; ".join(
    [
        "GET /users raise",  # a plain exception inside the handler
        "POST /users raise",
        "POST /auth/refresh raise",
        "GET /users/{user_id} raise=database",  # PostgreSQL rejects a query: a driver error
        "PATCH /clinics/me raise=database",
        "GET /status raise=database",
        "GET /clinics/me error=503 every=2",  # planned 5xx, through the normal error path
        # inside PostgreSQL (pg_sleep on a pooled connection) when PostgreSQL dies
        f"GET /auth/me slow_query={int(SLOW_QUERY_S * 1000)}ms",
    ]
)

#: What an error body must never show: traces, file paths, exception and library
#: names, SQL and PostgreSQL's own wording, and what the injected faults carry.
LEAKS = re.compile(
    "|".join(
        [
            r"Traceback",
            r"File \"",
            r"\.py\b",
            r"site-packages",
            r"\bline \d+",
            r"\b(?:psycopg|psycopg_pool|asyncpg|aiohttp|redis|pydantic|uvloop|asyncio)\b",
            r"(?-i:\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Timeout|Crash)\b)",  # class names
            r"\bSELECT\b|\bINSERT\s+INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b|\bWHERE\b",
            r"\batendeai\.\w+",
            r"relation \"",
            r"syntax error",
            r"\bLINE \d+:",
            r"fault_injection_no_such_table",
        ]
    ),
    re.IGNORECASE,
)


def assert_clean_failure(response: httpx.Response, status: int | None = None) -> dict:
    """A 5xx in the one error shape (``assert_error``), with its request id, leaking nothing."""
    assert response.status_code >= 500, f"not a server error: {response.status_code}"
    error = assert_error(response, status or response.status_code)
    assert error["request_id"], "the error carries no request id"
    leaked = sorted({match.group(0) for match in LEAKS.finditer(response.text)})
    assert not leaked, f"the error body shows {leaked}: {response.text[:400]}"
    return error


# --- the spec, without a stack ------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {
        "ATENDEAI_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "ATENDEAI_REDIS_URL": "redis://127.0.0.1:1/0",
        "ATENDEAI_JWT_PUBLIC_KEY_FILE": __file__,  # any readable file: never parsed here
        **extra,
    }


def test_fault_injection_is_off_unless_set():
    assert not Settings.from_env(_env()).faults.enabled
    assert not Settings.from_env(_env(ATENDEAI_FAULTS="  ")).faults.enabled
    routes = users_service.ROUTES
    assert [r.handler for r in with_faults(FaultPlan(), routes)] == [r.handler for r in routes]
    wrapped = with_faults(parse_plan("GET /users raise"), routes)
    changed = [r.path for r, w in zip(routes, wrapped, strict=True) if r.handler != w.handler]
    assert changed == ["/users"]


def test_the_plan_picks_exactly_every_kth_request():
    plan = parse_plan(
        "GET /clinics/me delay=300ms; GET /clinics/me delay=250ms every=4; "
        "GET /clinics/me error=500 every=10; GET /users raise every=3"
    )
    outcomes = [plan.outcome("GET", "/clinics/me", n) for n in range(1, 41)]
    assert [o.delay_ms for o in outcomes].count(550) == 10
    assert [o.delay_ms for o in outcomes].count(300) == 30
    failed = [n for n, o in enumerate(outcomes, start=1) if o.failure is not None]
    assert failed == [10, 20, 30, 40]
    assert plan.outcome("GET", "/users", 3).failure.action == "raise"
    assert plan.outcome("GET", "/users", 4).failure is None
    assert plan.outcome("POST", "/users", 3) == Outcome()
    slow = parse_plan("GET /auth/me slow_query=200ms every=2; GET /auth/me delay=50ms")
    assert [slow.outcome("GET", "/auth/me", n).added_ms for n in (1, 2, 3, 4)] == [50, 250, 50, 250]
    assert slow.outcome("GET", "/auth/me", 2) == Outcome(delay_ms=50, slow_query_ms=200)


def test_a_plan_read_from_the_environment_tolerates_spacing_and_keeps_rule_order():
    text = "  GET /clinics/me   delay=600ms ;GET  /clinics/me error=500  "
    plan = Settings.from_env(_env(ATENDEAI_FAULTS=text)).faults
    assert plan == parse_plan("GET /clinics/me delay=600ms; GET /clinics/me error=500")
    assert [rule.action for rule in plan.rules] == ["delay", "error"]
    # what the live alert tests rely on: every request waits, then fails
    for count in (1, 2, 3, 1000):
        outcome = plan.outcome("GET", "/clinics/me", count)
        assert outcome.delay_ms == 600 and outcome.failure == plan.rules[1]
    assert plan.outcome("PATCH", "/clinics/me", 1) == Outcome()
    assert plan.describe() == (
        "GET /clinics/me delay=600ms every=1; GET /clinics/me error=500 every=1"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("GET /clinic/me raise", "no service has the route GET /clinic/me"),
        ("POST /clinics/me raise", "that route takes GET, PATCH"),
        ("GET /clinics/me delay=3s", "write the time in milliseconds"),
        ("GET /clinics/me slow_query=0ms", "slow_query must be 1..60000 ms"),
        ("GET /clinics/me delay=0ms", "delay must be 1..60000 ms"),
        ("GET /clinics/me error=404", "error must be one of 500, 503"),
        ("GET /clinics/me raise every=0", "every must be 1..1000000"),
        ("GET /clinics/me raise often", "'often' is not every=K"),
        ("GET /clinics/me raise=segfault", "raise=segfault is unknown"),
        ("get /clinics/me raise", "unknown method 'get'"),
        ("GET /clinics/me", "2 words"),
        ("GET /clinics/me raise;", "rule 2 (''): the rule is empty"),
        ("GET /clinics/me explode", "unknown action 'explode'"),
        ("GET", "1 words"),
        ("GET /clinics/me delay=1ms every=2 twice", "5 words"),
        ("GET clinics/me raise", "the route must be a template starting with '/'"),
        # a concrete path is no route: rules name templates, as the histogram's label does
        ("GET /users/123 raise", "routes are templates such as /users/{user_id}"),
        ("GET /clinics/me delay=60001ms", "delay must be 1..60000 ms, not 60001"),
        ("GET /clinics/me delay=soon", "write the time in milliseconds"),
        ("GET /clinics/me error=500 every=many", "'every=many' is not every=K"),
        # the syntax of the random, single-route mechanism this one replaced
        ("GET /clinics/me delay_ms=600", "unknown action 'delay_ms=600'"),
        ("GET /clinics/me error_ratio=1", "unknown action 'error_ratio=1'"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_rule_and_the_problem(text: str, problem: str):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(_env(ATENDEAI_FAULTS=text))
    assert "ATENDEAI_FAULTS rule" in str(raised.value)
    assert problem in str(raised.value)
    with pytest.raises(FaultSpecError, match=re.escape(problem)):
        parse_plan(text, known_routes=platform_routes())


def test_a_service_with_a_bad_spec_does_not_start(tmp_path: Path):
    env = child_environment(
        drop_prefixes=("ATENDEAI_",),
        extra=_env(ATENDEAI_FAULTS="GET /users raise; GET /users delay=fast"),
    )
    started = subprocess.run(
        [sys.executable, "-m", "system_under_test", "users", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stderr
    assert "configuration error: ATENDEAI_FAULTS rule 2 ('GET /users delay=fast')" in (
        started.stderr
    )


# --- a stack of our own, with the faults ------------------------------------------------


@pytest.fixture(scope="module")
def control(request: pytest.FixtureRequest) -> Iterator[LocalStackControl]:
    if request.config.getoption("--stack") == "external":
        pytest.skip("this module starts a local stack of its own (not on --stack=external)")
    config = LocalStackConfig(
        instances_per_service=1,
        service_env=(("ATENDEAI_FAULTS", FAULTS),),
        keep_dir=request.config.getoption("--keep-stack-dir"),
    )
    with supervised_local_stack(config, progress=lambda line: None) as control:
        yield control


@pytest.fixture(scope="module")
def faulty(control: LocalStackControl) -> Stack:
    return control.stack


@pytest.fixture(scope="module")
def clinic(faulty: Stack) -> Iterator[Tenant]:
    api = ApiSession(faulty, ClientAddresses())
    try:
        yield create_tenant(faulty.postgres.owner_dsn, api=api, password_hash=hash_password())
    finally:
        api.close()


def _service_log(stack: Stack, service: str) -> str:
    logs = Path(stack.extra["services_log_dir"])
    return "\n".join(p.read_text(errors="replace") for p in logs.glob(f"{service}*"))


def _new_user() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "name": f"Nova {tag}",
        "email": f"nova-{tag}@x.example",
        "password": "A-good-Passw0rd!",
        "role": "staff",
    }


@pytest.mark.stack  # a stack of its own
def test_a_plain_exception_in_a_handler_answers_the_error_shape(faulty: Stack, clinic: Tenant):
    users = clinic.client("users", "admin")
    auth = clinic.client("auth")
    answers = [
        users.get("/users"),
        users.post("/users", json=_new_user()),
        auth.post("/auth/refresh", json={"refresh_token": "x" * 40}),
    ]
    with httpx.Client(base_url=faulty.haproxy_url or "", timeout=10) as gateway:
        answers.append(
            gateway.get(
                "/users",
                headers={
                    "Authorization": f"Bearer {clinic.access_token('admin')}",
                    "X-Forwarded-For": clinic.client_ip,
                },
            )
        )
    for response in answers:
        error = assert_clean_failure(response, 500)
        assert error["code"] == "internal_error", error
    # The exception really happened (the log keeps the trace the bodies hide).
    assert "InjectedCrash" in _service_log(faulty, "users")
    assert "InjectedCrash" in _service_log(faulty, "auth")


@pytest.mark.stack  # a stack of its own
def test_a_rejected_query_answers_the_error_shape(faulty: Stack, clinic: Tenant):
    answers = [
        clinic.client("users", "admin").get(f"/users/{clinic.user('staff').id}"),
        clinic.client("clinics", "admin").patch("/clinics/me", json={"name": "Outro nome"}),
        httpx.get(f"{faulty.service_url('health')}/status", timeout=10),
    ]
    for response in answers:
        error = assert_clean_failure(response, 500)
        assert error["code"] == "internal_error", error
    for service in ("users", "clinics", "health"):
        assert "UndefinedTable" in _service_log(faulty, service), service


@pytest.mark.stack  # a stack of its own
def test_injected_5xx_hit_exactly_every_second_request_in_the_error_shape(clinic: Tenant):
    clinics = clinic.client("clinics", "staff")
    answers = [clinics.get("/clinics/me") for _ in range(6)]
    statuses = [r.status_code for r in answers]
    assert sorted(statuses) == [200, 200, 200, 503, 503, 503], statuses
    assert all(a != b for a, b in itertools.pairwise(statuses)), statuses
    for response in answers:
        if response.status_code == 503:
            assert assert_clean_failure(response, 503)["code"] == "fault_injected"


def _marked_routes(metrics_text: str) -> dict[tuple[str, str], float]:
    """``fault_injection_enabled`` of one /metrics page: ``{(method, route): value}``."""
    found = re.findall(
        r'^fault_injection_enabled\{method="([A-Z]+)",route="([^"]+)"\} (\S+)$',
        metrics_text,
        re.M,
    )
    return {(method, route): float(value) for method, route, value in found}


@pytest.mark.stack  # a stack of its own
def test_each_service_marks_exactly_the_routes_its_rules_name(faulty: Stack):
    """The gauge test_obs_stack finds absent without rules is there with them, per route."""
    named = {(rule.method, rule.route) for rule in parse_plan(FAULTS).rules}
    marked_anywhere: set[tuple[str, str]] = set()
    for service, url in faulty.services.items():
        module = importlib.import_module(f"system_under_test.services.{service}")
        has = {(r.method, r.path) for r in module.ROUTES}
        has |= {(r.method, r.path) for r in common_routes(service, [])}
        marked = _marked_routes(httpx.get(f"{url}/metrics", timeout=10).text)
        assert marked == dict.fromkeys(named & has, 1.0), service
        marked_anywhere |= set(marked)
    assert marked_anywhere == named  # every rule names a route some service has


@pytest.mark.stack  # a stack of its own
def test_postgres_killed_under_requests_in_flight_answers_cleanly(
    control: LocalStackControl, faulty: Stack, clinic: Tenant
):
    """Requests inside PostgreSQL (each in a slow query on its own pooled
    connection) when PostgreSQL is killed: every one of them fails, cleanly."""
    url = faulty.service_url("auth")
    headers = {
        "Authorization": f"Bearer {clinic.access_token('staff')}",
        "X-Forwarded-For": clinic.client_ip,
    }

    def me() -> httpx.Response:
        return httpx.get(f"{url}/auth/me", headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=6) as pool:
        in_flight = [pool.submit(me) for _ in range(6)]
        time.sleep(SLOW_QUERY_S / 2)  # all of them are in pg_sleep by now
        control.kill("postgres")
        try:
            answers = [future.result() for future in in_flight]
        finally:
            control.restart("postgres")
    statuses = [r.status_code for r in answers]
    assert all(s >= 500 for s in statuses), f"PostgreSQL died under them, yet: {statuses}"
    for response in answers:
        assert_clean_failure(response)
    assert "OperationalError" in _service_log(faulty, "auth")  # what the bodies did not say
    wait_until(lambda: me().status_code == 200, timeout=30, what="GET /auth/me to work again")


@pytest.mark.stack  # a stack of its own
def test_ready_is_503_while_postgres_is_down_and_200_once_it_is_back(
    control: LocalStackControl, faulty: Stack
):
    urls = {name: faulty.service_url(name) for name in faulty.services}
    for url in urls.values():
        wait_ready(url, 200)
    control.kill("postgres")
    try:
        for name, url in urls.items():
            body = wait_ready(url, 503, timeout=15)
            assert body["checks"]["postgres"]["status"] == "down", (name, body)
            assert body["checks"]["redis"]["status"] == "ok", (name, body)
    finally:
        control.restart("postgres")
    for url in urls.values():
        wait_ready(url, 200)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(tmp_path / "redis") as redis:
        yield redis


@pytest.mark.stack  # a stack of its own
def test_ready_says_degraded_while_redis_is_down_and_reads_fall_back(
    faulty: Stack, clinic: Tenant, own_redis: LocalRedis, tmp_path: Path
):
    # A clinics instance of our own on a Redis of our own, which we can stop.
    with extra_service(
        faulty, "clinics", log_dir=tmp_path, env={"ATENDEAI_REDIS_URL": own_redis.url}
    ) as instance:
        headers = {
            "Authorization": f"Bearer {clinic.access_token('staff')}",
            "X-Forwarded-For": clinic.client_ip,
        }
        assert httpx.get(f"{instance.url}/clinics/me", headers=headers).status_code == 200
        process = own_redis.process
        assert process is not None
        process.kill()
        try:
            # in rotation still (200), but it says what it lacks
            body = wait_ready(instance.url, 200, timeout=15, says="degraded")
            assert body["checks"]["redis"]["status"] == "down", body
            assert body["checks"]["postgres"]["status"] == "ok", body
            # the session check and the clinic read fall back to PostgreSQL
            read = httpx.get(f"{instance.url}/clinics/me", headers=headers)
            assert read.status_code == 200 and read.headers["X-Cache"] == "MISS", read.text
        finally:
            process.restart()
        wait_ready(instance.url, 200, says="ok")
        assert httpx.get(f"{instance.url}/clinics/me", headers=headers).status_code == 200


# --- proof ----------------------------------------------------------------------------


@pytest.fixture
def leaky_users(faulty: Stack, tmp_path: Path) -> Iterator[str]:
    """A users instance whose error path leaks its trace ("debug mode left on"),
    crashing on ``GET /users`` through the same fault rule."""
    with extra_service(
        faulty,
        "users",
        log_dir=tmp_path,
        env={"ATENDEAI_FAULTS": "GET /users raise"},
        script=BROKEN_PLATFORM,
        script_args=("--defect", "leaky_errors"),
    ) as instance:
        yield instance.url


@pytest.mark.stack  # a stack of its own
def test_proof_the_clean_failure_check_catches_a_leaking_error_path(
    leaky_users: str, clinic: Tenant
):
    headers = {
        "Authorization": f"Bearer {clinic.access_token('admin')}",
        "X-Forwarded-For": clinic.client_ip,
    }
    response = httpx.get(f"{leaky_users}/users", headers=headers, timeout=10)
    assert response.status_code == 500  # the crash happened: the check has its input
    with pytest.raises(AssertionError, match="Traceback"):
        assert_clean_failure(response, 500)


def _leaky_text(text: str) -> Callable[[], httpx.Response]:
    def build() -> httpx.Response:
        request_id = "r-1"
        return httpx.Response(
            500,
            json={"error": {"code": "internal_error", "message": text, "request_id": request_id}},
            headers={"X-Request-ID": request_id},
        )

    return build


@pytest.mark.parametrize(
    "leak",
    [
        'relation "atendeai.fault_injection_no_such_table" does not exist',
        "psycopg.OperationalError: server closed the connection unexpectedly",
        "LINE 1: SELECT id FROM x WHERE id = $1",
        "couldn't get a connection after 30.00 sec (PoolTimeout)",
        "Error 111 connecting to 127.0.0.1:6379. Connection refused. (redis)",
        "fault injected in /srv/app/system_under_test/faults.py",
    ],
)
def test_proof_the_clean_failure_check_catches_what_exceptions_say(leak: str):
    """What ``str(exception)`` of the failures above reads like, as a message."""
    with pytest.raises(AssertionError):
        assert_clean_failure(_leaky_text(leak)())
    assert_clean_failure(_leaky_text("internal error; quote the request id")())
