"""The containers provider, run for real against the Docker engine: the same
stack shape as the local provider, ports on 127.0.0.1 only, a network per
run, a supervisor that kills (a crash Docker's restart policy answers),
freezes and restarts containers, errors with the container's log tail, and a
teardown that leaves nothing. Independent of ``--stack``: it starts a stack
of its own. Needs a Docker engine (skips without one, fails under CI=true).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
import redis

from harness.deployment import redis_key_survives_a_crash
from harness.exceptions import ComponentStartError, FaultNotSupported
from harness.images import ImageConfig
from harness.processes import free_port, wait_until
from harness.prometheus_api import PrometheusClient, wait_for_stack_targets
from harness.providers import RunningStack
from harness.providers.containers import RUN_LABEL, ContainersStackConfig, containers_stack
from harness.providers.haproxy import HAProxySettings, server_rows
from harness.providers.netfaults import prohibited
from harness.tenants import ApiSession, ClientAddresses, create_tenant, hash_password, login_body

pytestmark = [pytest.mark.docker]

SHAPE = {
    "postgres",
    "redis",
    *(f"{name}-{i}" for name in ("auth", "users", "clinics", "health") for i in (1, 2)),
    "postgres-exporter",
    "redis-exporter",
    "haproxy",
    "prometheus",
}


def _say(line: str) -> None:
    print(f"containers: {line}", file=sys.stderr, flush=True)


def _run_leftovers(docker_engine, run_id: str) -> tuple[list, list]:
    label = {"label": f"{RUN_LABEL}={run_id}"}
    return (
        docker_engine.containers.list(all=True, filters=label),
        docker_engine.networks.list(filters=label),
    )


@pytest.fixture(scope="module")
def running(docker_engine) -> Iterator[RunningStack]:
    with containers_stack(ContainersStackConfig(), progress=_say) as stack:
        yield stack
    run_id = stack.stack.extra["run_id"]
    assert _run_leftovers(docker_engine, run_id) == ([], []), "teardown left things behind"


@pytest.fixture
def gateway(running) -> Iterator[httpx.Client]:
    client_ip = ClientAddresses().next()
    with httpx.Client(
        base_url=running.stack.haproxy_url or "",
        headers={"X-Forwarded-For": client_ip},
        timeout=15,
    ) as client:
        yield client


def _token(gateway: httpx.Client, running: RunningStack) -> str:
    admin = running.stack.platform_admin
    answer = gateway.post("/auth/login", json=login_body(admin))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def test_the_stack_has_the_local_shape_on_a_network_of_its_own(running, docker_engine):
    stack = running.stack
    assert stack.provider == "containers"
    assert set(running.supervisor.components) == SHAPE
    containers, networks = _run_leftovers(docker_engine, stack.extra["run_id"])
    assert {c.labels["org.atendeai.component"] for c in containers} == SHAPE
    (network,) = networks
    assert network.name == stack.extra["network"]
    for container in containers:
        assert set(container.attrs["NetworkSettings"]["Networks"]) == {network.name}
        bindings = container.attrs["HostConfig"]["PortBindings"] or {}
        hosts = {b["HostIp"] for binding in bindings.values() for b in binding}
        assert hosts <= {"127.0.0.1"}, f"{container.name} publishes on {hosts}"
    every_url = [
        stack.haproxy_url,
        stack.prometheus_url,
        *stack.services.values(),
        *stack.exporters.values(),
        stack.postgres.app_dsn,
        stack.redis_url,
    ]
    assert all("@127.0.0.1:" in url or "//127.0.0.1:" in url for url in every_url), every_url


def test_the_platform_serves_through_haproxy_and_prometheus_scrapes_everything(running, gateway):
    token = _token(gateway, running)
    me = gateway.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    targets = wait_for_stack_targets(running.stack, timeout_s=30)
    assert len(targets) == int(running.stack.extra["prometheus_targets"]) == 12


def test_prometheus_in_its_container_scrapes_as_often_as_told(running):
    """The gate's load window scrapes as the deployment does: the config in the
    mounted run directory rewritten, ``docker kill --signal HUP`` reloads it."""
    supervisor = running.supervisor
    assert supervisor is not None
    with PrometheusClient(running.stack.prometheus_url or "") as reader:
        try:
            supervisor.scrape_every(15.0)
            assert reader.intervals_s()[0] == 15.0
        finally:
            supervisor.scrape_every(1.0)
        assert reader.intervals_s()[0] == 1.0


def test_rls_holds_in_the_container_database(running):
    with psycopg.connect(running.stack.postgres.app_dsn) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False)
        assert conn.execute("SELECT count(*) FROM atendeai.users").fetchone()[0] == 0


def test_a_crashed_instance_is_restarted_and_haproxy_serves_meanwhile(running, gateway):
    supervisor = running.supervisor
    token = _token(gateway, running)
    before = supervisor.container("auth-1").state()["Pid"]
    killed = supervisor.kill("auth-1")
    assert killed == before
    started = time.monotonic()
    for _ in range(20):  # HAProxy retries the connection on auth-2
        answer = gateway.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    supervisor.restart("auth-1", timeout_s=60)
    state = supervisor.container("auth-1").state()
    assert state["Running"] and state["Pid"] != before

    def auth_1_up() -> bool:
        row = server_rows(httpx.get(f"{running.stack.haproxy_stats_url};csv").text)["auth/auth-1"]
        return row["status"] == "UP"

    wait_until(auth_1_up, timeout=30, what="HAProxy to put auth-1 back", interval=0.2)
    _say(f"auth-1 killed and back in rotation after {time.monotonic() - started:.1f} s")


def test_a_crash_is_answered_by_dockers_restart_policy(running):
    """A process dying on its own (not a kill asked of the engine) is restarted by
    Docker itself, as compose's ``restart: unless-stopped`` does."""
    if os.geteuid() != 0:
        pytest.skip("signalling a container's process from the host needs root")
    target = running.supervisor.container("users-2")
    before = target.state()
    os.kill(before["Pid"], signal.SIGKILL)

    def restarted_by_docker() -> bool:
        docker = target.docker
        docker.reload()
        state = docker.attrs["State"]
        return bool(
            state["Running"] and state["Pid"] != before["Pid"] and docker.attrs["RestartCount"] >= 1
        )

    wait_until(restarted_by_docker, timeout=30, what="Docker to restart users-2", interval=0.2)
    target.wait_ready(30)


def test_postgres_killed_comes_back_on_the_same_data(running, gateway):
    stack, supervisor = running.stack, running.supervisor
    token = _token(gateway, running)
    api = ApiSession(stack, ClientAddresses())
    tenant = create_tenant(stack.postgres.owner_dsn, api=api, password_hash=hash_password())
    api.close()
    supervisor.kill("postgres")
    supervisor.restart("postgres", timeout_s=60)
    with psycopg.connect(stack.postgres.superuser_dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM atendeai.clinics WHERE id = %s", (tenant.clinic_id,)
        ).fetchone()[0]
    assert found == 1

    def serving() -> bool:
        answer = gateway.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        return answer.status_code == 200

    wait_until(serving, timeout=30, what="the platform serving after PostgreSQL's restart")


def test_a_frozen_redis_is_thawed(running):
    supervisor = running.supervisor
    supervisor.pause("redis")
    assert supervisor.container("redis").state()["Paused"]
    supervisor.resume("redis")
    assert not supervisor.container("redis").state()["Paused"]
    assert "redis" in supervisor.evidence("redis")


def _ready_status(url: str) -> int | None:
    """``GET {url}/ready``'s status through the instance's published port (``None``:
    no answer within 5 s)."""
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code
    except httpx.HTTPError:
        return None


@contextmanager
def _requests_meanwhile(client: httpx.Client, path: str, headers: dict) -> Iterator[list]:
    """``GET path`` over and over in a thread while the block runs; ``(status,
    seconds)`` of each (status ``None``: no answer) in the yielded list, complete
    once the block is over."""
    answered: list[tuple[int | None, float]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status: int | None = client.get(path, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            answered.append((status, time.monotonic() - started))
            stop.wait(0.05)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        yield answered
    finally:
        stop.set()
        worker.join(timeout=30)


def _auth_states(stack) -> dict[str, str]:
    rows = server_rows(httpx.get(f"{stack.haproxy_stats_url};csv", timeout=5).text)
    return {name: row["status"] for name, row in rows.items() if name.startswith("auth/")}


def test_an_instance_cut_off_from_postgres_and_redis_leaves_rotation_and_rejoins(running, gateway):
    """Behaviour, not configuration: auth-1 loses PostgreSQL and Redis while auth-2
    keeps them; its /ready turns 503, HAProxy takes exactly it out within the
    stated worst case, users are served by auth-2; rejoined, it is back UP."""
    stack, supervisor = running.stack, running.supervisor
    auth_1, auth_2 = stack.service_instances["auth"]
    headers = {"Authorization": f"Bearer {_token(gateway, running)}"}
    both_up = {"auth/auth-1": "UP", "auth/auth-2": "UP"}
    wait_until(lambda: _auth_states(stack) == both_up, timeout=30, what="auth-1, auth-2 UP")
    stated = HAProxySettings().worst_case_down_s(check_takes_s=2)

    started = time.monotonic()
    supervisor.isolate("auth-1", from_=("postgres", "redis"))
    cut = time.monotonic() - started
    assert supervisor.faults == {"auth-1": "isolated from postgres, redis"}
    assert sorted(prohibited(supervisor.pid("auth-1"), component="auth-1")) == sorted(
        [supervisor.address("postgres"), supervisor.address("redis")]
    )
    wait_until(
        lambda: _ready_status(auth_1) == 503, timeout=15, what="auth-1 /ready 503", interval=0.1
    )
    ready_503 = time.monotonic() - started
    with _requests_meanwhile(gateway, "/auth/me", headers) as answered:
        wait_until(
            lambda: _auth_states(stack) == {"auth/auth-1": "DOWN", "auth/auth-2": "UP"},
            timeout=stated + 10,
            what="HAProxy to mark auth-1 DOWN and keep auth-2 UP",
            interval=0.05,
        )
    down = time.monotonic() - started
    assert _ready_status(auth_2) == 200
    answers = [gateway.get("/auth/me", headers=headers).status_code for _ in range(20)]
    assert answers == [200] * 20, answers
    checks = httpx.get(f"{auth_1}/ready", timeout=5).json()["checks"]
    assert {checks["postgres"]["status"], checks["redis"]["status"]} == {"down"}, checks

    started = time.monotonic()
    supervisor.rejoin("auth-1")
    assert supervisor.faults == {}
    assert prohibited(supervisor.pid("auth-1"), component="auth-1") == []
    wait_until(lambda: _ready_status(auth_1) == 200, timeout=30, what="auth-1 /ready 200")
    ready_again = time.monotonic() - started
    wait_until(lambda: _auth_states(stack) == both_up, timeout=30, what="auth-1 back UP")
    up_again = time.monotonic() - started
    _say(
        f"isolate auth-1: routes in {cut:.2f} s, /ready 503 after {ready_503:.2f} s, "
        f"DOWN in HAProxy after {down:.2f} s (stated worst case {stated:.1f} s); "
        f"meanwhile {len(answered)} requests, answered {Counter(a for a, _ in answered)}, "
        f"the slowest in {max(t for _, t in answered):.2f} s; "
        f"rejoined: /ready 200 after "
        f"{ready_again:.2f} s, UP after {up_again:.2f} s"
    )
    assert down <= stated + 1.0, f"auth-1 DOWN after {down:.2f} s, stated {stated:.1f} s"


def test_delay_adds_latency_or_says_the_kernel_has_no_netem(running):
    supervisor = running.supervisor
    url = running.stack.service_instances["auth"][0]
    try:
        supervisor.delay("auth-1", ms=200)
    except FaultNotSupported as error:
        message = str(error)
        _say(f"delay: {message}")
        assert "netem delay 200ms" in message and "auth-1" in message, message
        # what tc itself answers on a kernel without sch_netem, word for word
        assert "Error: Specified qdisc kind is unknown." in message, message
        assert supervisor.faults == {}
        return
    try:
        started = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert time.monotonic() - started >= 0.2
    finally:
        supervisor.undelay("auth-1")
    assert supervisor.faults == {}


def test_undo_faults_thaws_and_reconnects_what_the_supervisor_broke(running):
    supervisor = running.supervisor
    url = running.stack.service_instances["users"][0]
    supervisor.isolate("users-1", from_=("postgres",))
    supervisor.pause("redis-exporter")
    assert supervisor.faults == {
        "redis-exporter": "paused",
        "users-1": "isolated from postgres",
    }
    assert "isolated from postgres by the supervisor" in supervisor.evidence("users-1")
    pid = supervisor.pid("users-1")
    assert prohibited(pid, component="users-1") == [supervisor.address("postgres")]

    assert sorted(supervisor.undo_faults()) == ["redis-exporter resumed", "users-1 rejoined"]
    assert supervisor.faults == {}
    assert prohibited(pid, component="users-1") == []
    assert not supervisor.container("redis-exporter").state()["Paused"]
    wait_until(lambda: _ready_status(url) == 200, timeout=30, what="users-1 /ready 200")


def test_a_failed_start_names_the_component_with_its_log_and_leaves_nothing(docker_engine):
    config = ContainersStackConfig(
        startup_timeout_s=15,
        instances_per_service=1,
        # below the platform's minimum cost: every service refuses to start
        service_env=(("ATENDEAI_BCRYPT_ROUNDS", "4"),),
    )
    before = {c.id for c in docker_engine.containers.list(all=True)}
    with pytest.raises(ComponentStartError) as failure, containers_stack(config, progress=_say):
        pass
    message = str(failure.value)
    assert "auth-1 failed to start" in message
    assert "ATENDEAI_BCRYPT_ROUNDS" in message  # the container's own log says why
    after = {c.id for c in docker_engine.containers.list(all=True)}
    assert after - before == set()


@pytest.mark.parametrize(("appendonly", "survives"), [("yes", True), ("no", False)])
def test_the_redis_persistence_check_turns_red_without_aof(docker_engine, appendonly, survives):
    """The deployment suite's Redis check, on a Redis of the same image with AOF
    on and off: it must tell them apart, or it proves nothing."""
    port = free_port()
    container = docker_engine.containers.run(
        ImageConfig.from_env().name("redis"),
        command=[
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--appendonly",
            appendonly,
            "--save",
            "",
        ],
        ports={"6379/tcp": ("127.0.0.1", port)},
        labels={"org.atendeai.proof": "redis-aof"},
        detach=True,
    )
    try:
        store = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        wait_until(store.ping, timeout=30, what="Redis up", retry_on=(Exception,))

        def crash() -> None:
            container.kill(signal="SIGKILL")
            container.start()

        assert redis_key_survives_a_crash(store, crash) is survives
    finally:
        container.remove(force=True, v=True)
