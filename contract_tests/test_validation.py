"""Bad input gets a 4xx in the one error shape, naming the problem."""

from __future__ import annotations

import uuid

from contract_tests.conftest import assert_error


def test_malformed_json_is_400(tenant):
    response = tenant.client("auth").post(
        "/auth/login", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


def test_wrong_content_type_is_415(tenant):
    response = tenant.client("auth").post(
        "/auth/login",
        content=b"email=a",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type")


def test_a_json_array_is_not_a_body(tenant):
    response = tenant.client("auth").post("/auth/login", json=["a"])
    assert_error(response, 422, "validation_error")


def test_missing_and_unknown_fields_are_named(tenant):
    admin = tenant.client("users", "admin")
    error = assert_error(admin.post("/users", json={"name": "x", "role": "staff"}), 422)
    assert {d["field"] for d in error["details"]} == {"email", "password"}
    error = assert_error(
        admin.post(
            "/users",
            json={
                "name": "x",
                "email": "x@clinic.example",
                "password": "long-enough",
                "role": "staff",
                "is_superuser": True,
            },
        ),
        422,
    )
    assert [d["field"] for d in error["details"]] == ["is_superuser"]


def test_bad_values_are_named(tenant):
    admin = tenant.client("users", "admin")
    error = assert_error(
        admin.post(
            "/users",
            json={"name": "", "email": "not-an-email", "password": "short", "role": "boss"},
        ),
        422,
    )
    assert {d["field"] for d in error["details"]} == {"name", "email", "password", "role"}
    error = assert_error(
        tenant.client("clinics", "admin").patch("/clinics/me", json={"working_hours": "9-5"}), 422
    )
    assert error["details"][0]["field"] == "working_hours"


def test_empty_update_is_refused(tenant):
    assert_error(tenant.client("clinics", "admin").patch("/clinics/me", json={}), 422)
    staff = tenant.users["staff"].id
    assert_error(tenant.client("users", "admin").patch(f"/users/{staff}", json={}), 422)


def test_bad_query_parameters_are_named(tenant):
    admin = tenant.client("users", "admin")
    error = assert_error(admin.get("/users", params={"limit": "0"}), 422)
    assert error["details"][0]["field"] == "limit"
    assert_error(admin.get("/users", params={"offset": "many"}), 422)


def test_body_too_large_is_413(tenant, stack):
    big = {"description": "x" * (200 * 1024)}
    assert_error(tenant.client("clinics", "admin").patch("/clinics/me", json=big), 413)


def test_ids_that_are_not_uuids_are_not_found(tenant):
    manager = tenant.client("users", "manager")
    for bad in ("123", "' OR 1=1 --", uuid.uuid4().hex + "x"):
        assert_error(manager.get(f"/users/{bad}"), 404, "not_found")


def test_unknown_route_and_method(tenant):
    assert_error(tenant.client("users").get("/nope"), 404, "not_found")
    response = tenant.client("users", "admin").put("/users")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_request_id_is_echoed_or_made(tenant):
    client = tenant.client("auth")
    assert (
        client.get("/health", headers={"X-Request-ID": "trace-123"}).headers["X-Request-ID"]
        == "trace-123"
    )
    made = client.get("/health", headers={"X-Request-ID": "bad id<script>"}).headers["X-Request-ID"]
    assert made != "bad id<script>" and len(made) == 32
