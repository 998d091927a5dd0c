"""The local provider's supervisor, on a local stack of its own: every component
can be killed, frozen, thawed and restarted on the same port and data, the
supervisor remembers what it broke and undoes it (also on Ctrl-C), and the
network faults it cannot inject say so. Real processes throughout: Redis with
its AOF, HAProxy, Prometheus with its TSDB. Not run on ``--stack=external``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from harness.exceptions import FaultNotSupported, WaitTimeout
from harness.processes import process_state, wait_until
from harness.prometheus_api import PrometheusClient
from harness.providers.haproxy import HAProxySettings, server_rows
from harness.providers.local import LocalStackConfig, LocalStackControl, supervised_local_stack
from harness.providers.prometheus import await_scrape_interval
from harness.tenants import ClientAddresses, login_body

pytestmark = [pytest.mark.stack]

REPO = Path(__file__).resolve().parents[2]


def _say(line: str) -> None:
    print(f"supervisor: {line}", file=sys.stderr, flush=True)


#: Two routes slow enough to kill the instance serving them mid-request: a read
#: (safe to replay) and a login (a POST: never replayed once sent).
SLOW_ROUTES = "GET /auth/me delay=1500ms; POST /auth/login delay=1500ms"


@pytest.fixture(scope="module")
def control(request: pytest.FixtureRequest) -> Iterator[LocalStackControl]:
    if request.config.getoption("--stack") == "external":
        pytest.skip("this module starts a local stack of its own (not on --stack=external)")
    config = LocalStackConfig(service_env=(("ATENDEAI_FAULTS", SLOW_ROUTES),))
    with supervised_local_stack(config, progress=_say) as control:
        yield control


@pytest.fixture
def supervisor(control: LocalStackControl) -> Iterator[LocalStackControl]:
    """The stack's supervisor; whatever a test leaves broken is undone after it."""
    yield control
    control.undo_faults()
    assert control.faults == {}


def _redis(control: LocalStackControl, *, timeout_s: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        control.stack.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def test_every_component_is_supervised(supervisor):
    assert set(supervisor.components) == {
        "postgres",
        "redis",
        *(f"{name}-{i}" for name in ("auth", "users", "clinics", "health") for i in (1, 2)),
        "postgres-exporter",
        "redis-exporter",
        "haproxy",
        "prometheus",
    }
    for component in supervisor.components:
        evidence = supervisor.evidence(component)
        assert f"pid {supervisor.pid(component)}" in evidence, evidence
        assert "127.0.0.1:" in evidence


def test_redis_killed_and_restarted_keeps_a_key_written_before(supervisor):
    key, value = f"supervisor-test:{uuid.uuid4().hex}", uuid.uuid4().hex
    store = _redis(supervisor)
    assert store.set(key, value)
    before = supervisor.pid("redis")
    assert supervisor.kill("redis") == before
    assert supervisor.pid("redis") is None
    assert supervisor.faults == {"redis": "killed"}
    with pytest.raises(redis.ConnectionError):
        _redis(supervisor).ping()
    assert "killed by the supervisor" in supervisor.evidence("redis")

    started = time.monotonic()
    supervisor.restart("redis", timeout_s=30)
    _say(f"redis back in {time.monotonic() - started:.2f} s")
    after = _redis(supervisor)
    assert supervisor.pid("redis") not in (None, before)
    assert after.get(key) == value.encode(), "the AOF did not bring the key back"
    assert supervisor.faults == {}


def test_a_frozen_redis_times_out_and_answers_again_once_thawed(supervisor):
    supervisor.pause("redis")
    assert supervisor.faults == {"redis": "paused"}
    assert "frozen (SIGSTOP)" in supervisor.evidence("redis")
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        _redis(supervisor, timeout_s=1.0).ping()
    assert time.monotonic() - started < 5
    supervisor.resume("redis")
    assert _redis(supervisor).ping()
    assert supervisor.faults == {}


def _through_haproxy(gateway: str) -> httpx.Response:
    """A request HAProxy routes to the auth service (401 without a token: the
    service's own error shape, whatever state Redis or PostgreSQL are in)."""
    return httpx.get(f"{gateway}/auth/me", timeout=10)


def test_haproxy_killed_then_restarted_serves_on_the_same_port(supervisor):
    gateway = supervisor.stack.haproxy_url or ""
    answer = _through_haproxy(gateway)
    assert answer.status_code == 401 and "error" in answer.json(), answer.text
    before = supervisor.pid("haproxy")
    assert supervisor.kill("haproxy") == before
    with pytest.raises(httpx.ConnectError):
        _through_haproxy(gateway)

    started = time.monotonic()
    supervisor.restart("haproxy", timeout_s=30)
    _say(f"haproxy back in {time.monotonic() - started:.2f} s")
    assert supervisor.pid("haproxy") not in (None, before)
    assert supervisor.stack.haproxy_url == gateway
    answer = _through_haproxy(gateway)
    assert answer.status_code == 401 and "error" in answer.json(), answer.text
    stats = httpx.get(f"{supervisor.stack.haproxy_stats_url};csv", timeout=5)
    assert stats.status_code == 200 and "auth-1" in stats.text


# --- HAProxy and an instance that dies -------------------------------------------------


def _auth_rows(control: LocalStackControl) -> dict[str, dict[str, str]]:
    csv = httpx.get(f"{control.stack.haproxy_stats_url};csv", timeout=5).text
    return {name: row for name, row in server_rows(csv).items() if name.startswith("auth/")}


def _wait_both_auth_up(control: LocalStackControl) -> None:
    wait_until(
        lambda: {row["status"] for row in _auth_rows(control).values()} == {"UP"},
        timeout=30,
        what="HAProxy to have auth-1 and auth-2 UP",
        interval=0.1,
    )


def _kill_the_instance_serving(control: LocalStackControl, request) -> tuple[str, httpx.Response]:
    """Send ``request`` through HAProxy in a thread, ``kill -9`` the auth instance it
    is in flight on (HAProxy's stats: one current session), and return that
    instance and the answer the client got."""
    _wait_both_auth_up(control)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(request)

        def serving() -> str | None:
            busy = [name for name, row in _auth_rows(control).items() if row["scur"] != "0"]
            return busy[0].removeprefix("auth/") if len(busy) == 1 else None

        instance = wait_until(serving, timeout=5, what="the request to reach an instance")
        control.kill(instance)
        return instance, answer.result(timeout=30)


def test_a_get_in_flight_on_a_killed_instance_is_served_by_the_other(supervisor):
    """``retry-on empty-response`` with ``option redispatch``: the killed instance
    closed the connection without answering; HAProxy replays the GET on its peer."""
    stack = supervisor.stack
    headers = {"X-Forwarded-For": ClientAddresses().next()}
    login = httpx.post(
        f"{stack.haproxy_url}/auth/login",
        json=login_body(stack.platform_admin),
        headers=headers,
        timeout=15,
    )
    assert login.status_code == 200, login.text
    headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    killed, answer = _kill_the_instance_serving(
        supervisor, lambda: httpx.get(f"{stack.haproxy_url}/auth/me", headers=headers, timeout=30)
    )
    assert answer.status_code == 200, f"{killed} killed mid-GET: {answer.status_code} {answer.text}"
    assert answer.json()["email"] == stack.platform_admin.email
    supervisor.restart(killed, timeout_s=30)


def test_a_post_in_flight_on_a_killed_instance_is_never_replayed(supervisor):
    """The login may have reached the killed instance: HAProxy answers 502 rather
    than send it to the other one (``http-request disable-l7-retry`` for every
    method but GET/HEAD/OPTIONS). A replay would have answered 200: without that
    rule it does (``option http-buffer-request`` makes every POST replayable)."""
    stack = supervisor.stack
    headers = {"X-Forwarded-For": ClientAddresses().next()}
    killed, answer = _kill_the_instance_serving(
        supervisor,
        lambda: httpx.post(
            f"{stack.haproxy_url}/auth/login",
            json=login_body(stack.platform_admin),
            headers=headers,
            timeout=30,
        ),
    )
    assert answer.status_code == 502, f"{killed} killed mid-POST: {answer.status_code}"
    supervisor.restart(killed, timeout_s=30)


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_haproxy_takes_a_dead_or_frozen_instance_out_within_the_stated_time(supervisor, fault):
    """A killed instance refuses the check at once; a frozen one lets it time out.
    HAProxy must mark it DOWN within ``HAProxySettings.worst_case_down_s`` (plus
    0.5 s for this poll and the machine), its peer staying UP."""
    settings = HAProxySettings()
    limit = settings.worst_case_down_s(check_takes_s=0 if fault == "kill" else 2) + 0.5
    _wait_both_auth_up(supervisor)
    started = time.monotonic()
    getattr(supervisor, fault)("auth-2")
    wait_until(
        lambda: _auth_rows(supervisor)["auth/auth-2"]["status"].startswith("DOWN"),
        timeout=limit + 10,
        what="HAProxy to mark auth-2 DOWN",
        interval=0.05,
    )
    took = time.monotonic() - started
    _say(f"auth-2 {fault}: DOWN after {took:.2f} s (stated worst case {limit - 0.5:.1f} s)")
    assert _auth_rows(supervisor)["auth/auth-1"]["status"] == "UP"
    assert took <= limit, f"auth-2 DOWN after {took:.2f} s, stated at most {limit:.2f} s"
    supervisor.undo_faults()
    _wait_both_auth_up(supervisor)


def test_no_instance_in_rotation_answers_the_platforms_json_503(supervisor):
    """Both auth instances dead: HAProxy itself answers, in the platform's error
    shape (``no_server_available``, ``Retry-After``), not its HTML page."""
    _wait_both_auth_up(supervisor)
    supervisor.kill("auth-1")
    supervisor.kill("auth-2")
    wait_until(
        lambda: all(row["status"].startswith("DOWN") for row in _auth_rows(supervisor).values()),
        timeout=15,
        what="HAProxy to mark auth-1 and auth-2 DOWN",
        interval=0.1,
    )
    answer = _through_haproxy(supervisor.stack.haproxy_url or "")
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    assert answer.json()["error"]["code"] == "no_server_available", answer.text
    assert answer.headers["retry-after"] == "2"
    supervisor.undo_faults()
    _wait_both_auth_up(supervisor)


def test_prometheus_killed_and_restarted_is_ready_with_its_old_data(supervisor):
    url = supervisor.stack.prometheus_url or ""

    def samples_at(moment: float) -> int:
        answer = httpx.get(
            f"{url}/api/v1/query", params={"query": "count(up)", "time": moment}, timeout=5
        ).json()
        result = answer["data"]["result"]
        return int(result[0]["value"][1]) if result else 0

    wait_until(
        lambda: samples_at(time.time()) > 0,
        timeout=30,
        what="Prometheus's first scrapes",
        interval=0.5,
    )
    scraped = time.time()
    before = samples_at(scraped)
    pid = supervisor.pid("prometheus")
    assert supervisor.kill("prometheus") == pid

    started = time.monotonic()
    supervisor.restart("prometheus", timeout_s=60)
    _say(f"prometheus back in {time.monotonic() - started:.2f} s")
    assert httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    assert supervisor.pid("prometheus") not in (None, pid)
    assert samples_at(scraped) == before, "the TSDB lost what was scraped before the kill"


def test_prometheus_scrapes_as_often_as_told_and_a_restart_keeps_it(supervisor):
    """``scrape_every`` (the gate's load window at the deployment's 15 s) rewrites
    the config and reloads it: Prometheus then scrapes that often, and comes back
    from a restart with it; a reload not taken is an error naming the interval."""
    url = supervisor.stack.prometheus_url or ""
    config = Path(supervisor.stack.extra["run_dir"]) / "prometheus" / "prometheus.yml"
    with PrometheusClient(url) as reader:

        def scrapes_in(seconds: int, at: float | None = None) -> float | None:
            """Scrapes of one auth instance in the ``seconds`` before ``at`` (now)."""
            query = f'max(count_over_time(up{{job="auth"}}[{seconds}s]))'
            return reader.instant(query, at or time.time())

        # scraped every second to begin with (an earlier test may have just restarted it)
        wait_until(lambda: (scrapes_in(3) or 0) >= 3, timeout=30, what="1 s scrapes", interval=0.5)
        try:
            supervisor.scrape_every(3.0)
            switched = time.time()
            assert reader.intervals_s()[0] == 3.0
            assert "scrape_interval: 3s" in config.read_text()
            # each target's first scrape at 3 s comes within 3 s; then one every 3 s
            time.sleep(16)
            assert 3 <= (scrapes_in(12, switched + 15) or 0) <= 5  # 12 at one a second
            supervisor.kill("prometheus")
            supervisor.restart("prometheus", timeout_s=60)
            assert reader.intervals_s()[0] == 3.0
            with pytest.raises(WaitTimeout, match=r"scrape every 7 s.*still scraping every 3 s"):
                await_scrape_interval(url, 7.0, timeout_s=1.0)  # no reload asked for it
        finally:
            supervisor.scrape_every(1.0)
        assert reader.intervals_s()[0] == 1.0
        # every second again (after the restart, once its targets are handed out)
        wait_until(lambda: (scrapes_in(3) or 0) >= 3, timeout=20, what="1 s scrapes", interval=0.5)


def test_undo_faults_thaws_and_restarts_what_the_supervisor_broke(supervisor):
    service = supervisor.stack.service_instances["users"][0]
    supervisor.pause("users-1")
    supervisor.pause("redis")
    killed = supervisor.kill("redis-exporter")
    assert supervisor.faults == {
        "redis-exporter": "killed",
        "redis": "paused",
        "users-1": "paused",
    }
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{service}/health", timeout=1)

    done = supervisor.undo_faults()
    assert sorted(done) == ["redis resumed", "redis-exporter restarted", "users-1 resumed"]
    assert supervisor.faults == {}
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200
    assert _redis(supervisor).ping()
    assert supervisor.pid("redis-exporter") not in (None, killed)
    exporter = httpx.get(supervisor.stack.exporters["redis"], timeout=5).text
    assert "\nredis_up 1" in exporter


def test_network_faults_are_refused_with_the_reason(supervisor):
    with pytest.raises(FaultNotSupported) as isolate:
        supervisor.isolate("auth-1", from_=("postgres", "redis"))
    message = str(isolate.value)
    assert "auth-1" in message and "network namespace" in message
    assert "containers provider" in message
    with pytest.raises(FaultNotSupported, match="containers provider"):
        supervisor.delay("auth-1", ms=200)
    with pytest.raises(FaultNotSupported):
        supervisor.rejoin("auth-1")
    assert supervisor.faults == {}


# --- Ctrl-C in the middle of a fault ---------------------------------------------------

CTRL_C_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from harness.processes import descendants
    from harness.providers.local import LocalStackConfig, supervised_local_stack

    config = LocalStackConfig(instances_per_service=1, keep_dir=True, base_dir=sys.argv[1])
    with supervised_local_stack(config, progress=lambda line: None) as control:
        frozen = []
        for component in ("redis", "postgres"):
            control.pause(component)
            frozen += [control.pid(component), *descendants(control.pid(component))]
        print(json.dumps({"frozen": frozen,
                          "redis_log": control.stack.extra["redis_log"],
                          "postgres_log": control.stack.extra["postgres_log"]}), flush=True)
        time.sleep(600)
    """
)


def test_ctrl_c_during_a_freeze_leaves_nothing_frozen(request):
    """A drill interrupted while Redis and PostgreSQL are frozen: the stack thaws
    them first, so each stops gracefully (Redis flushes its AOF and says bye,
    PostgreSQL shuts down) instead of hanging out its grace period as a stopped
    process, and no stopped process is left behind (PostgreSQL's backends are
    session leaders of their own: a SIGKILL to its group would miss them)."""
    if request.config.getoption("--stack") == "external":
        pytest.skip("starts a local stack of its own (not on --stack=external)")
    # under /tmp itself: PostgreSQL's OS user cannot enter pytest's tmp_path
    base = Path(tempfile.mkdtemp(prefix="atendeai-ctrl-c-"))
    base.chmod(0o711)
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(base)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    where: dict = {}
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, f"the stack did not come up: {child.stderr.read() if child.stderr else ''}"
        where = json.loads(line)
        frozen = where["frozen"]
        assert len(frozen) > 3, f"PostgreSQL's backends were not frozen: {frozen}"
        assert {process_state(pid) for pid in frozen} == {"T"}, "not everything was frozen"
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        logs = {
            name: Path(path).read_text(errors="replace")
            for name, path in where.items()
            if name.endswith("_log")
        }
        shutil.rmtree(base, ignore_errors=True)
    _say(f"Ctrl-C with redis and postgres frozen: stack stopped in {took:.2f} s")
    left = {pid: process_state(pid) for pid in frozen if process_state(pid) not in (None, "Z")}
    assert left == {}, f"processes left behind (pid: state): {left}"
    assert "ready to exit, bye bye" in logs["redis_log"], logs["redis_log"][-2000:]
    assert "database system is shut down" in logs["postgres_log"], logs["postgres_log"][-2000:]
    assert took < 10, f"the stop took {took:.1f} s: something waited out its grace period"
