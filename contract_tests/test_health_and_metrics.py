"""Liveness, readiness, the platform status and the metrics that make the SLA checkable."""

from __future__ import annotations

import re

import httpx
import pytest

from system_under_test import SERVICES


@pytest.mark.parametrize("service", SERVICES)
def test_health_and_ready(service, stack):
    url = stack.service_url(service)
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "service": service}
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["postgres"]["status"] == "ok" and checks["redis"]["status"] == "ok"


def test_platform_status_sees_every_service(stack):
    status = httpx.get(f"{stack.service_url('health')}/status").json()
    assert status["status"] == "ok"
    assert set(status["services"]) == {"auth", "users", "clinics"}
    assert set(status["dependencies"]) == {"postgres", "redis"}


@pytest.mark.parametrize("service", SERVICES)
def test_latency_histogram_uses_route_templates_and_slo_buckets(service, stack, tenant):
    client = tenant.client(service)
    client.get("/health")
    if service == "users":
        tenant.client("users", "admin").get(f"/users/{tenant.users['staff'].id}")
    text = httpx.get(f"{stack.service_url(service)}/metrics").text
    buckets = set(
        re.findall(r'http_server_request_duration_seconds_bucket\{[^}]*le="([^"]+)"', text)
    )
    for boundary in ("0.1", "0.2", "0.5", "0.05", "0.25"):
        assert boundary in buckets
    assert re.search(
        r'http_server_request_duration_seconds_count\{method="GET",route="/health",status="200"\}',
        text,
    )
    assert "http_server_requests_in_flight" in text and "db_pool_connections" in text
    if service == "users":
        assert 'route="/users/{user_id}"' in text
        assert str(tenant.users["staff"].id) not in text, "raw path leaked into a label"


def test_login_outcomes_and_cache_are_counted(stack, tenant):
    user = tenant.users["staff"]
    tenant.client("auth").post("/auth/login", json=user.login_body(password="nope-nope"))
    tenant.client("clinics", "staff").get("/clinics/me")
    auth_metrics = httpx.get(f"{stack.service_url('auth')}/metrics").text
    assert re.search(r'auth_logins_total\{outcome="invalid_credentials"\} [1-9]', auth_metrics)
    clinic_metrics = httpx.get(f"{stack.service_url('clinics')}/metrics").text
    assert re.search(
        r'cache_requests_total\{cache="clinic",result="(hit|miss)"\} [1-9]', clinic_metrics
    )


def test_security_headers_on_every_response(tenant):
    for response in (
        tenant.client("auth").get("/health"),
        tenant.client("users").get("/users"),  # 401
        tenant.client("clinics").get("/nope"),  # 404
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert response.headers["Server"] == "atendeai"  # not "Python/3.11 aiohttp/3.x"


def test_cors_allows_only_the_allow_list(stack, tenant):
    client = tenant.client("auth")
    allowed = stack.allowed_origins[0]
    ok = client.options(
        "/auth/login",
        headers={"Origin": allowed, "Access-Control-Request-Method": "POST"},
    )
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    evil = client.options(
        "/auth/login",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert evil.status_code == 403 and "Access-Control-Allow-Origin" not in evil.headers
    simple = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in simple.headers
    good = client.get("/health", headers={"Origin": allowed})
    assert good.headers["Access-Control-Allow-Origin"] == allowed != "*"
