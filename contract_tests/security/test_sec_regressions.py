"""Platform bugs the security suites found, kept as plain regressions.

The fuzzer (``test_sec_fuzz.py``) found each of these as a 500; they are fixed
in ``system_under_test/schemas.py`` and ``services/clinics.py``. The fuzzer
would find them again; these tests say precisely what broke.
"""

from __future__ import annotations

import httpx
import pytest

from harness.tenants import Tenant


@pytest.mark.parametrize("field", ["working_hours", "ai_behavior", "department_emails", "status"])
def test_null_for_a_not_null_clinic_column_is_a_422_and_the_clinic_stays_readable(
    tenant: Tenant, field: str
) -> None:
    # Before: JSON null reached the jsonb column (stored as a JSON null, then every
    # read of the clinic failed validation: a permanent 500) or a NOT NULL column.
    clinics = tenant.client("clinics", "admin")
    response = clinics.patch("/clinics/me", json={field: None})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field
    assert clinics.get("/clinics/me").status_code == 200


@pytest.mark.parametrize(
    ("service", "path", "method", "body"),
    [
        ("users", "/users", "post", {"name": "a\u0000b", "email": "nul@clinic.example",
                                    "password": "pass-word-1", "role": "staff"}),
        ("clinics", "/clinics/me", "patch", {"description": "text with \u0000 inside"}),
        ("clinics", "/clinics/me", "patch", {"working_hours": {"mon\u0000": "8-18"}}),
        ("auth", "/auth/login", "post", {"clinic_slug": "a\u0000b", "email": "a\u0000@b.example",
                                         "password": "x"}),
    ],
)  # fmt: skip
def test_nul_characters_are_a_422_not_a_500(
    tenant: Tenant, service: str, path: str, method: str, body: dict
) -> None:
    # PostgreSQL text and jsonb cannot hold U+0000: it used to fail in the database.
    client = tenant.client(service, "admin")
    response = getattr(client, method)(path, json=body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_in_json_objects_are_a_422_not_a_500(
    tenant: Tenant, number: bytes
) -> None:
    # Python's JSON parser accepts them; jsonb has no such numbers.
    client: httpx.Client = tenant.client("clinics", "admin")
    response = client.patch(
        "/clinics/me",
        content=b'{"ai_personality": {"warmth": ' + number + b"}}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert client.get("/clinics/me").status_code == 200
