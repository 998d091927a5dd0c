"""Role-based access per role and method: deny by default, 403 for a signed-in
role that may not, and every denial audited."""

from __future__ import annotations

import uuid

import pytest

from contract_tests.conftest import assert_error


def _user_body(role: str = "staff") -> dict:
    return {
        "name": "Someone",
        "email": f"rbac-{uuid.uuid4().hex[:10]}@clinic.example",
        "password": "a-long-password",
        "role": role,
    }


# (service, method, path, body) -> roles allowed; {id} is another user of the same clinic.
MATRIX = [
    ("users", "GET", "/users", None, {"admin", "manager"}),
    ("users", "POST", "/users", "user", {"admin", "manager"}),
    ("users", "GET", "/users/{id}", None, {"admin", "manager"}),
    ("users", "PATCH", "/users/{id}", {"name": "Renamed"}, {"admin", "manager"}),
    ("users", "DELETE", "/users/{id}", None, {"admin"}),
    ("clinics", "GET", "/clinics/me", None, {"admin", "manager", "staff"}),
    ("clinics", "PATCH", "/clinics/me", {"description": "d"}, {"admin"}),
    ("clinics", "GET", "/clinics", None, set()),
    ("clinics", "POST", "/clinics", {"name": "n", "admin": {}}, set()),
    ("auth", "GET", "/auth/me", None, {"admin", "manager", "staff"}),
]


@pytest.mark.parametrize("role", ["admin", "manager", "staff"])
@pytest.mark.parametrize(("service", "method", "path", "body", "allowed"), MATRIX)
def test_role_matrix(service, method, path, body, allowed, role, tenant, superuser_db):
    target = tenant.client("users", "admin").post("/users", json=_user_body()).json()["id"]
    json_body = _user_body() if body == "user" else body
    response = tenant.client(service, role).request(
        method, path.replace("{id}", target), json=json_body
    )
    if role in allowed:
        assert response.status_code in (200, 201, 204), response.text
        return
    assert_error(response, 403, "forbidden")
    row = superuser_db.execute(
        "SELECT count(*) FROM atendeai.audit_logs WHERE clinic_id = %s AND action = 'access.denied'"
        " AND user_id = %s AND new_values->>'method' = %s",
        (tenant.clinic_id, tenant.users[role].id, method),
    ).fetchone()
    assert row[0] >= 1, "the denial was not audited"


def test_manager_cannot_create_or_promote_admins(tenant):
    manager = tenant.client("users", "manager")
    assert_error(manager.post("/users", json=_user_body("admin")), 403)
    staff_id = tenant.users["staff"].id
    assert_error(manager.patch(f"/users/{staff_id}", json={"role": "admin"}), 403)
    assert_error(manager.patch(f"/users/{tenant.users['admin'].id}", json={"name": "Hijack"}), 403)
    ok = manager.patch(f"/users/{staff_id}", json={"role": "manager"})
    assert ok.status_code == 200 and ok.json()["role"] == "manager"


def test_nobody_can_mint_a_platform_admin(tenant):
    response = tenant.client("users", "admin").post("/users", json=_user_body("platform_admin"))
    assert assert_error(response, 422)["details"][0]["field"] == "role"


def test_admin_cannot_delete_itself(tenant):
    admin = tenant.client("users", "admin")
    assert_error(admin.delete(f"/users/{tenant.users['admin'].id}"), 409, "cannot_delete_self")


def test_platform_admin_creates_a_clinic_whose_admin_can_sign_in(platform_admin_client, tenant):
    tag = uuid.uuid4().hex[:10]
    body = {
        "name": f"Clínica {tag}",
        "type": "clinic",
        "address_city": "São Paulo",
        "department_emails": {"billing": f"billing-{tag}@clinic.example"},
        "admin": {"name": "Ana", "email": f"ana-{tag}@clinic.example", "password": "pass-word-1"},
    }
    created = platform_admin_client("clinics").post("/clinics", json=body)
    assert created.status_code == 201, created.text
    clinic = created.json()["clinic"]
    assert clinic["address_city"] == "São Paulo"
    assert created.json()["admin"]["clinic_id"] == clinic["id"]

    # The slug is made from the name; the new admin signs in with it.
    assert clinic["slug"] == f"clinica-{tag}"
    login = tenant.client("auth").post(
        "/auth/login",
        json={
            "clinic_slug": clinic["slug"],
            "email": body["admin"]["email"],
            "password": "pass-word-1",
        },
    )
    assert login.status_code == 200 and login.json()["user"]["role"] == "admin"
    listed = platform_admin_client("clinics").get("/clinics", params={"limit": 100})
    assert listed.status_code == 200
    # the new clinic is listed (newest first or within the first page by creation)
    ids = {c["id"] for c in listed.json()["items"]}
    page = 0
    while clinic["id"] not in ids and len(listed.json()["items"]) == 100:
        page += 1
        listed = platform_admin_client("clinics").get(
            "/clinics", params={"limit": 100, "offset": 100 * page}
        )
        ids = {c["id"] for c in listed.json()["items"]}
    assert clinic["id"] in ids

    # The same name again: the slug gets a part of the new clinic's id.
    again = platform_admin_client("clinics").post("/clinics", json=body)
    assert again.status_code == 201, again.text
    second = again.json()["clinic"]
    assert second["slug"] == f"clinica-{tag}-{uuid.UUID(second['id']).hex[:8]}"
    # A slug asked for by name that another clinic has is a conflict.
    taken = platform_admin_client("clinics").post("/clinics", json={**body, "slug": clinic["slug"]})
    assert_error(taken, 409, "slug_taken")
