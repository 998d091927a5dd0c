"""Every route answers as its OpenAPI document says.

The operations come from the services' route tables; a test checks the live
documents list exactly those, so a new route without a scenario here fails
``test_every_operation_has_a_scenario``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from openapi_spec_validator import validate as validate_openapi_document

from contract_tests.conftest import validate_against_openapi
from system_under_test import SERVICES
from system_under_test.app import common_routes
from system_under_test.services import auth, clinics, health, users

ROUTE_TABLES = {
    "auth": auth.ROUTES,
    "users": users.ROUTES,
    "clinics": clinics.ROUTES,
    "health": health.ROUTES,
}
OPERATIONS = sorted(
    (service, route.method, route.path)
    for service in SERVICES
    for route in common_routes(service, ROUTE_TABLES[service]) + ROUTE_TABLES[service]
)


def _login(tenant, role: str) -> httpx.Response:
    return tenant.client("auth").post("/auth/login", json=tenant.users[role].login_body())


def _new_user(tenant) -> dict:
    response = tenant.client("users", "admin").post(
        "/users",
        json={
            "name": "Contract Person",
            "email": f"contract-{uuid.uuid4().hex[:10]}@clinic.example",
            "password": "a-long-password",
            "role": "staff",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def _new_clinic_body() -> dict:
    tag = uuid.uuid4().hex[:10]
    return {
        "name": f"Clinic {tag}",
        "specialty": "dermatology",
        "working_hours": {"mon": "08:00-18:00"},
        "admin": {
            "name": "First Admin",
            "email": f"admin-{tag}@clinic.example",
            "password": "a-long-password",
        },
    }


Scenario = Callable[..., httpx.Response]
HAPPY_PATHS: dict[tuple[str, str, str], Scenario] = {
    ("auth", "POST", "/auth/login"): lambda t, pa: _login(t, "staff"),
    ("auth", "POST", "/auth/refresh"): lambda t, pa: t.client("auth").post(
        "/auth/refresh", json={"refresh_token": _login(t, "staff").json()["refresh_token"]}
    ),
    ("auth", "POST", "/auth/logout"): lambda t, pa: t.client("auth").post(
        "/auth/logout",
        headers={"Authorization": f"Bearer {_login(t, 'staff').json()['access_token']}"},
    ),
    ("auth", "GET", "/auth/me"): lambda t, pa: t.client("auth", "staff").get("/auth/me"),
    ("users", "GET", "/users"): lambda t, pa: t.client("users", "admin").get("/users"),
    ("users", "POST", "/users"): lambda t, pa: t.client("users", "admin").post(
        "/users",
        json={
            "name": "New Person",
            "email": f"new-{uuid.uuid4().hex[:10]}@clinic.example",
            "password": "a-long-password",
            "role": "manager",
        },
    ),
    ("users", "GET", "/users/{user_id}"): lambda t, pa: t.client("users", "manager").get(
        f"/users/{t.users['staff'].id}"
    ),
    ("users", "PATCH", "/users/{user_id}"): lambda t, pa: t.client("users", "admin").patch(
        f"/users/{_new_user(t)['id']}", json={"name": "Renamed"}
    ),
    ("users", "DELETE", "/users/{user_id}"): lambda t, pa: t.client("users", "admin").delete(
        f"/users/{_new_user(t)['id']}"
    ),
    ("clinics", "GET", "/clinics"): lambda t, pa: pa("clinics").get("/clinics"),
    ("clinics", "POST", "/clinics"): lambda t, pa: pa("clinics").post(
        "/clinics", json=_new_clinic_body()
    ),
    ("clinics", "GET", "/clinics/me"): lambda t, pa: t.client("clinics", "staff").get(
        "/clinics/me"
    ),
    ("clinics", "PATCH", "/clinics/me"): lambda t, pa: t.client("clinics", "admin").patch(
        "/clinics/me", json={"mission": "Care, on time"}
    ),
    ("clinics", "GET", "/clinics/{clinic_id}"): lambda t, pa: t.client("clinics", "manager").get(
        f"/clinics/{t.clinic_id}"
    ),
    ("clinics", "PATCH", "/clinics/{clinic_id}"): lambda t, pa: t.client("clinics", "admin").patch(
        f"/clinics/{t.clinic_id}", json={"phone": "+55 11 5555-0000"}
    ),
    ("health", "GET", "/status"): lambda t, pa: t.client("health").get("/status"),
}
for _service in SERVICES:
    for _path in ("/health", "/ready", "/metrics", "/openapi.json"):
        HAPPY_PATHS[(_service, "GET", _path)] = lambda t, pa, s=_service, p=_path: t.client(s).get(
            p
        )

SUCCESS = {"GET": 200, "PATCH": 200, "POST": 200, "DELETE": 204}
CREATED = {("users", "POST", "/users"), ("clinics", "POST", "/clinics")}


@pytest.mark.parametrize("service", SERVICES)
def test_document_is_valid_openapi_and_lists_exactly_the_routes(service, openapi_docs):
    doc = openapi_docs[service]
    validate_openapi_document(doc)
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    expected = {(m, p) for s, m, p in OPERATIONS if s == service}
    assert documented == expected


def test_every_operation_has_a_scenario():
    assert set(OPERATIONS) == set(HAPPY_PATHS)


@pytest.mark.parametrize(("service", "method", "path"), OPERATIONS)
def test_happy_path_matches_the_document(
    service, method, path, tenant, platform_admin_client, openapi_docs
):
    response = HAPPY_PATHS[(service, method, path)](tenant, platform_admin_client)
    expected = 201 if (service, method, path) in CREATED else SUCCESS[method]
    if path == "/auth/logout":
        expected = 204
    assert response.status_code == expected, response.text
    validate_against_openapi(openapi_docs[service], method, path, response)


ERROR_PRONE = sorted(
    (service, route.method, route.path)
    for service in SERVICES
    for route in ROUTE_TABLES[service]
    if not route.public or route.body or "{" in route.path
)


def _client_for(operation: dict, service: str, tenant, platform_admin_client) -> httpx.Client:
    """A signed-in client allowed to call the operation (or anonymous if public)."""
    roles = operation.get("x-roles", [])
    if not roles:
        return tenant.client(service)
    if roles == ["platform_admin"]:
        return platform_admin_client(service)
    return tenant.client(service, next(r for r in ("admin", "manager", "staff") if r in roles))


@pytest.mark.parametrize(("service", "method", "path"), ERROR_PRONE)
def test_error_answers_match_the_document(
    service, method, path, tenant, platform_admin_client, openapi_docs
):
    """Unsigned calls to protected routes, broken bodies and unknown ids all
    answer with a documented status and the documented error shape."""
    doc = openapi_docs[service]
    operation = doc["paths"][path][method.lower()]
    concrete = path.replace("{user_id}", str(uuid.uuid4())).replace(
        "{clinic_id}", str(uuid.uuid4())
    )
    allowed = _client_for(operation, service, tenant, platform_admin_client)
    if operation.get("security"):
        response = tenant.client(service).request(method, concrete)
        assert response.status_code == 401, response.text
        validate_against_openapi(doc, method, path, response)
    if "requestBody" in operation:
        response = allowed.request(
            method, concrete, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        validate_against_openapi(doc, method, path, response)
    if "{" in path:
        body = {"name": "x"} if "requestBody" in operation else None
        response = allowed.request(method, concrete, json=body)
        assert response.status_code == 404, response.text
        validate_against_openapi(doc, method, path, response)
