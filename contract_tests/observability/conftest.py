"""Fixtures of the observability suites: Prometheus, traffic, the compose files."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.prometheus_api import PrometheusClient, wait_for_stack_targets
from harness.providers.prometheus import COMPOSE_DIR
from harness.stack import Stack
from harness.tenants import Tenant


@pytest.fixture(scope="session")
def compose_dir() -> Path:
    return COMPOSE_DIR


@pytest.fixture(scope="session")
def compose_file(compose_dir: Path) -> dict[str, Any]:
    """``compose/docker-compose.yml`` with anchors and merge keys resolved."""
    return yaml.safe_load((compose_dir / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def prometheus(stack: Stack) -> Iterator[PrometheusClient]:
    """A client of the stack's Prometheus, once it has scraped every target."""
    if not stack.prometheus_url:
        pytest.skip("this stack has no Prometheus")
    wait_for_stack_targets(stack, timeout_s=30)
    with PrometheusClient(stack.prometheus_url) as client:
        yield client


@pytest.fixture
def api_traffic(
    stack: Stack, tenant: Tenant, platform_admin_client: Callable[[str], httpx.Client]
) -> Callable[..., None]:
    """``api_traffic(rounds=3, pause_s=1.2)``: see ``drive_api_traffic``."""

    def drive(*, rounds: int = 3, pause_s: float = 1.2) -> None:
        drive_api_traffic(stack, tenant, platform_admin_client, rounds=rounds, pause_s=pause_s)

    return drive


def drive_api_traffic(
    stack: Stack,
    tenant: Tenant,
    platform_admin_client: Callable[[str], httpx.Client],
    *,
    rounds: int = 3,
    pause_s: float = 1.2,
) -> None:
    """Exercise every kind of request the dashboards chart, ``rounds`` times,
    ``pause_s`` apart so the counters change across several scrapes (``rate()``
    ignores a series' first sample)."""
    admin = tenant.client("users", "admin")
    staff_users = tenant.client("users", "staff")
    staff_clinics = tenant.client("clinics", "staff")
    auth = tenant.client("auth")
    platform = platform_admin_client("clinics")
    gateway = httpx.Client(base_url=stack.haproxy_url or "", timeout=10)
    try:
        for round_number in range(rounds):
            tag = f"{time.time_ns()}-{round_number}"
            pair = tenant.login("manager")  # login success, a session
            auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            auth.post("/auth/login", json=tenant.user("staff").login_body(password="wrong-pw"))
            admin.get("/users")
            created = admin.post(
                "/users",
                json={
                    "name": f"Obs {tag}",
                    "email": f"obs-{tag}@clinic.example",
                    "password": "Obs-Passw0rd!",
                    "role": "staff",
                },
            )
            assert created.status_code == 201, created.text
            assert staff_users.get("/users").status_code == 403
            staff_clinics.get("/clinics/me")  # miss or hit
            staff_clinics.get("/clinics/me")  # hit
            made = platform.post(
                "/clinics",
                json={
                    "name": f"Obs Clinic {tag}",
                    "admin": {
                        "name": "Obs Admin",
                        "email": f"obs-admin-{tag}@clinic.example",
                        "password": "Obs-Passw0rd!",
                    },
                },
            )
            assert made.status_code == 201, made.text
            assert gateway.get("/status").status_code == 200
            if round_number < rounds - 1:
                time.sleep(pause_s)
    finally:
        gateway.close()
