"""HAProxy in the local stack: path routing to two instances of each service,
round robin, ``GET /ready`` health checks, the stats page, and what a proxy in
front of the services must not break (client address, route templates)."""

from __future__ import annotations

import httpx
import pytest

from harness.processes import wait_until
from harness.providers.haproxy import GATEWAY_ROUTES, server_checks


@pytest.fixture
def gateway(stack):
    if not stack.haproxy_url:
        pytest.skip("this stack has no HAProxy")
    with httpx.Client(base_url=stack.haproxy_url, timeout=10) as client:
        yield client


def test_haproxy_routes_each_prefix_to_its_service(gateway, tenant):
    token = tenant.access_token("admin")
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": tenant.client_ip}
    assert gateway.get("/auth/me", headers=headers).json()["email"] == tenant.user("admin").email
    assert gateway.get("/users", headers=headers).json()["total"] == 3
    assert gateway.get("/clinics/me", headers=headers).json()["id"] == str(tenant.clinic_id)
    status = gateway.get("/status")
    assert status.status_code == 200 and status.json()["status"] == "ok"
    # A login through HAProxy: the client address survives the extra hop.
    login = gateway.post(
        "/auth/login",
        json=tenant.user("staff").login_body(password="wrong-password"),
        headers={"X-Forwarded-For": tenant.client_ip},
    )
    assert login.status_code == 401


@pytest.mark.parametrize("path", ["/", "/nope", "/authx", "/metrics", "/ready", "/users-admin"])
def test_haproxy_answers_404_for_what_no_service_serves(gateway, path):
    response = gateway.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_haproxy_balances_over_both_instances(stack, gateway):
    stats_csv = f"{stack.haproxy_stats_url};csv"
    before = _sessions_per_server(httpx.get(stats_csv).text)
    for _ in range(8):
        assert gateway.get("/status").status_code == 200
    after = _sessions_per_server(httpx.get(stats_csv).text)
    servers = [name for name in after if name.startswith("health/")]
    assert len(servers) == 2
    for server in servers:
        assert after[server] - before.get(server, 0) >= 3, (before, after)


def _sessions_per_server(csv: str) -> dict[str, int]:
    lines = csv.splitlines()
    header = lines[0][2:].split(",")
    total = header.index("stot")
    sessions = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) > total and fields[1] not in ("FRONTEND", "BACKEND"):
            sessions[f"{fields[0]}/{fields[1]}"] = int(fields[total] or 0)
    return sessions


def test_haproxy_checks_every_instance_on_ready(stack):
    def all_checked() -> dict[str, str] | None:
        checks = server_checks(httpx.get(f"{stack.haproxy_stats_url};csv").text)
        return checks if checks and set(checks.values()) == {"L7OK"} else None

    checks = wait_until(all_checked, timeout=10, what="HAProxy to check every server")
    assert {name.split("/")[0] for name in checks} == set(GATEWAY_ROUTES)
    assert len(checks) == sum(len(urls) for urls in stack.service_instances.values())
    page = httpx.get(stack.haproxy_stats_url)
    assert page.status_code == 200 and "Statistics Report" in page.text


def test_gateway_traffic_is_counted_per_route_template(stack, gateway, prometheus):
    """Requests through HAProxy land in the histogram under the route template."""
    before = prometheus.value(
        'sum(http_server_request_duration_seconds_count{job="health",route="/status"})'
    )
    for _ in range(4):
        gateway.get("/status")

    def counted() -> bool:
        now = prometheus.value(
            'sum(http_server_request_duration_seconds_count{job="health",route="/status"})'
        )
        return now is not None and now >= (before or 0) + 4

    # Two scrapes of every health instance, whatever the interval (1 s locally, 15 s
    # in the compose deployment, where a fixed 10 s sometimes fell between scrapes).
    timeout = 5 + 2 * prometheus.scrape_interval_s()
    wait_until(counted, timeout=timeout, interval=0.25, what="Prometheus to count 4 more /status")
