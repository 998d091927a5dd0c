"""The compose deployment, run for real: ``compose/docker-compose.yml`` brought
up with ``docker compose up --wait`` (testcontainers' ``DockerCompose``) and
checked for what the spec promises: health checks, the network, named
volumes, the platform through HAProxy on 127.0.0.1, Prometheus's targets,
persistence across ``down``/``up`` and across a Redis crash (AOF), the
contract suites against it as an external stack, and a teardown that leaves
nothing behind. Needs a Docker engine (skips without one, fails under CI=true).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from harness.deployment import (
    NETWORK,
    PROJECT,
    ComposeDeployment,
    compose_deployment,
    redis_key_survives_a_crash,
)
from harness.processes import wait_until
from harness.prometheus_api import PrometheusClient
from harness.stack import Stack
from harness.tenants import (
    Account,
    ApiSession,
    ClientAddresses,
    create_tenant,
    hash_password,
    login_body,
)

pytestmark = [pytest.mark.docker, pytest.mark.deployment]

#: The spec's shape: every long-running service of the file (Kong and Grafana
#: only with their profiles, which need a registry).
RUNNING = {
    "postgres",
    "redis",
    "auth",
    "users",
    "clinics",
    "health",
    "haproxy",
    "prometheus",
    "postgres-exporter",
    "redis-exporter",
}
UP_WAIT_LIMIT_S = 180.0
#: What the contract suites run against the deployment in `make test` (the
#: whole suite is run by hand; the README gives the figures).
SUITES_AGAINST_COMPOSE = (
    "contract_tests/test_auth_flow.py",
    "contract_tests/test_rbac.py",
    "contract_tests/security/test_database_security.py",
    "contract_tests/test_openapi_contract.py",
    "contract_tests/test_cache_and_audit.py",
    "contract_tests/observability/test_obs_haproxy.py",
    "contract_tests/security/test_sec_bola_sweep.py",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _say(line: str) -> None:
    print(f"deployment: {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def deployment(docker_engine) -> Iterator[ComposeDeployment]:
    with compose_deployment(progress=_say) as running:
        yield running
    # teardown happened: nothing of the project is left
    leftovers = docker_engine.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}
    )
    volumes = docker_engine.volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
    networks = [n for n in docker_engine.networks.list(names=[NETWORK]) if n.name == NETWORK]
    assert (leftovers, volumes, networks) == ([], [], []), "down --volumes left things behind"


@pytest.fixture(scope="module")
def compose_stack(deployment: ComposeDeployment) -> Stack:
    return deployment.stack()


def _containers(docker_engine) -> list:
    return docker_engine.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})


def test_every_service_is_healthy_by_its_own_check_within_the_stated_time(
    deployment, docker_engine
):
    assert deployment.up_seconds < UP_WAIT_LIMIT_S
    containers = _containers(docker_engine)
    services = {c.labels["com.docker.compose.service"] for c in containers}
    assert services == RUNNING
    for container in containers:
        health = container.attrs["State"].get("Health", {}).get("Status")
        assert health == "healthy", f"{container.name}: {health}"
    replicas = [c for c in containers if c.labels["com.docker.compose.service"] == "auth"]
    assert len(replicas) == 2


def test_one_network_with_the_spec_subnet_and_named_volumes(docker_engine):
    network = docker_engine.networks.get(NETWORK)
    (config,) = network.attrs["IPAM"]["Config"]
    assert config["Subnet"] == "172.20.0.0/16"
    attached = set(network.attrs["Containers"])
    for container in _containers(docker_engine):
        assert container.id in attached, container.name
        address = container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network("172.20.0.0/16")
        for binding in (container.attrs["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in binding), container.name
    wanted = {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "prometheus": "/prometheus",
    }
    for container in _containers(docker_engine):
        service = container.labels["com.docker.compose.service"]
        if service not in wanted:
            continue
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        mount = mounts[wanted[service]]
        assert mount["Type"] == "volume" and mount["Name"].startswith(f"{PROJECT}_"), mount


def test_the_versions_the_spec_names_run(compose_stack):
    with psycopg.connect(compose_stack.postgres.superuser_dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
    assert 150009 <= int(version) < 160000
    info = redis.Redis.from_url(compose_stack.redis_url).info("server")
    assert str(info["redis_version"]).startswith("7.")


def test_the_platform_answers_through_haproxy_and_monitoring_answers(compose_stack):
    status = httpx.get(f"{compose_stack.haproxy_url}/status", timeout=10)
    assert status.status_code == 200, status.text
    assert httpx.get(compose_stack.haproxy_url + "/nowhere", timeout=10).status_code == 404
    stats = httpx.get(f"{compose_stack.haproxy_stats_url};csv", timeout=10)
    assert stats.status_code == 200 and "auth-1" in stats.text
    ready = httpx.get(f"{compose_stack.prometheus_url}/-/ready", timeout=10)
    assert ready.status_code == 200


def test_prometheus_has_every_compose_target_up(compose_stack):
    expected = int(compose_stack.extra["prometheus_targets"])

    # the deployment scrapes every 15 s (the spec): give it a few rounds
    with PrometheusClient(compose_stack.prometheus_url or "") as client:
        targets = client.wait_for_targets(expected, timeout=75)
    jobs = {t.job for t in targets}
    assert jobs == {"auth", "users", "clinics", "health", "haproxy", "postgres", "redis"} | {
        "prometheus"
    }


def test_a_clinic_survives_down_and_up_with_the_volumes_kept(deployment):
    stack = deployment.stack()
    api = ApiSession(stack, ClientAddresses())
    tenant = create_tenant(stack.postgres.owner_dsn, api=api, password_hash=hash_password())
    admin = tenant.user("admin")
    new_name = f"Clínica Persistente {time.time_ns()}"
    with _gateway(stack, tenant.client_ip) as gateway:
        token = _sign_in(gateway, admin)
        renamed = gateway.patch(
            "/clinics/me", json={"name": new_name}, headers={"Authorization": f"Bearer {token}"}
        )
        assert renamed.status_code == 200, renamed.text

    deployment.down(volumes=False)
    seconds = deployment.up()
    _say(f"up --wait again after down (volumes kept): {seconds:.1f} s")

    with _gateway(deployment.stack(), tenant.client_ip) as gateway:
        token = _sign_in(gateway, admin)
        again = gateway.get("/clinics/me", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 200, again.text
    assert again.json()["name"] == new_name
    api.close()


def test_a_redis_key_survives_a_crash_of_the_redis_container(deployment, docker_engine):
    stack = deployment.stack()
    store = redis.Redis.from_url(stack.redis_url)
    (container,) = [
        c for c in _containers(docker_engine) if c.labels["com.docker.compose.service"] == "redis"
    ]
    pid = container.attrs["State"]["Pid"]

    def crash() -> None:  # a crash: `restart: unless-stopped` brings it back
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            container.reload()
            state = container.attrs["State"]
            return bool(state["Running"] and state["Pid"] != pid)

        wait_until(restarted, timeout=60, what="Redis restarted by its policy", interval=0.2)

    assert redis_key_survives_a_crash(store, crash)
    assert store.config_get("appendonly") == {"appendonly": "yes"}

    # Leave the deployment as the other tests find it, in any order: healthy by
    # Redis's own check again (it says "starting" for a while after the restart).
    def healthy() -> bool:
        container.reload()
        return container.attrs["State"].get("Health", {}).get("Status") == "healthy"

    wait_until(healthy, timeout=60, what="Redis healthy again after the crash", interval=0.5)


def test_the_contract_suites_pass_against_the_deployment(deployment, tmp_path):
    stack_json = tmp_path / "stack.json"
    # written now: a down/up earlier gave the replicas new ephemeral ports
    deployment.stack().write_json(stack_json)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--stack=external",
        f"--stack-json={stack_json}",
        *SUITES_AGAINST_COMPOSE,
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    tail = "\n".join(result.stdout.splitlines()[-25:])
    _say(f"contract suites against compose: {result.stdout.strip().splitlines()[-1]}")
    assert result.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail


def _gateway(stack: Stack, client_ip: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.haproxy_url or "", headers={"X-Forwarded-For": client_ip}, timeout=15
    )


def _sign_in(gateway: httpx.Client, account: Account) -> str:
    answer = gateway.post("/auth/login", json=login_body(account))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]
