"""Cache-aside on clinic reads (visible in Redis) and the audit trail."""

from __future__ import annotations

import json
import uuid

from psycopg.rows import dict_row

from system_under_test.services.clinics import cache_key


def test_clinic_read_is_cached_and_writes_invalidate(tenant, redis_client):
    clinics = tenant.client("clinics", "staff")
    key = cache_key(tenant.clinic_id)
    redis_client.delete(key)

    first = clinics.get("/clinics/me")
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    cached = redis_client.get(key)
    assert cached is not None and json.loads(cached)["id"] == str(tenant.clinic_id)
    assert 0 < redis_client.ttl(key) <= 300

    second = clinics.get("/clinics/me")
    assert second.headers["X-Cache"] == "HIT" and second.json() == first.json()

    patched = tenant.client("clinics", "admin").patch(
        "/clinics/me", json={"mission": "Fresh mission", "ai_personality": {"tone": "warm"}}
    )
    assert patched.status_code == 200
    assert redis_client.get(key) is None, "the write did not invalidate the cache"

    third = clinics.get("/clinics/me")
    assert third.headers["X-Cache"] == "MISS"
    assert third.json()["mission"] == "Fresh mission"
    assert third.json()["ai_personality"] == {"tone": "warm"}


def test_cache_is_per_clinic(tenant_factory, redis_client):
    a, b = tenant_factory(), tenant_factory()
    assert a.client("clinics", "staff").get("/clinics/me").json()["id"] == str(a.clinic_id)
    response = b.client("clinics", "staff").get(f"/clinics/{a.clinic_id}")
    assert response.status_code == 404
    assert b.client("clinics", "staff").get("/clinics/me").json()["id"] == str(b.clinic_id)


def _audit_rows(superuser_db, clinic_id, **where):
    conditions = " AND ".join(f"{column} = %({column})s" for column in where)
    with superuser_db.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT * FROM atendeai.audit_logs WHERE clinic_id = %(clinic_id)s"
            + (f" AND {conditions}" if conditions else "")
            + " ORDER BY created_at, id",
            {"clinic_id": clinic_id, **where},
        )
        return cursor.fetchall()


def test_user_writes_are_audited_without_secrets(tenant, superuser_db):
    admin = tenant.client("users", "admin")
    created = admin.post(
        "/users",
        json={
            "name": "Audited",
            "email": f"aud-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": "secret-password-1",
            "role": "staff",
        },
        headers={"User-Agent": "audit-test/1.0"},
    ).json()
    admin.patch(
        f"/users/{created['id']}", json={"name": "Audited Twice", "password": "another-secret-2"}
    )
    admin.delete(f"/users/{created['id']}")

    rows = _audit_rows(superuser_db, tenant.clinic_id, table_name="users", record_id=created["id"])
    assert [r["action"] for r in rows] == ["insert", "update", "delete"]
    insert, update, delete = rows
    assert insert["new_values"]["name"] == "Audited" and insert["old_values"] is None
    assert update["old_values"]["name"] == "Audited"
    assert update["new_values"]["name"] == "Audited Twice"
    assert delete["old_values"]["name"] == "Audited Twice" and delete["new_values"] is None
    for row in rows:
        assert row["user_id"] == tenant.users["admin"].id
        assert str(row["ip_address"]) == tenant.client_ip
        assert row["request_id"]
        text = json.dumps([row["old_values"], row["new_values"]], default=str)
        assert "password" not in text and "secret-password" not in text and "$2b$" not in text
    assert insert["user_agent"] == "audit-test/1.0"


def test_a_hostile_user_agent_is_stored_verbatim_not_run(tenant, superuser_db):
    """The tenant context travels as quoted literals with BEGIN (one round trip):
    quotes, backslashes and statement separators in a header stay data."""
    hostile = "x'); DROP TABLE atendeai.audit_logs; -- \\' \" $$ E'\\x00' ;"
    admin = tenant.client("clinics", "admin")
    answer = admin.patch(
        "/clinics/me", json={"website": "https://ua.example"}, headers={"User-Agent": hostile}
    )
    assert answer.status_code == 200, answer.text
    rows = _audit_rows(superuser_db, tenant.clinic_id, table_name="clinics", action="update")
    assert rows[-1]["user_agent"] == hostile
    assert rows[-1]["new_values"]["website"] == "https://ua.example"


def test_clinic_update_is_audited(tenant, superuser_db):
    tenant.client("clinics", "admin").patch("/clinics/me", json={"website": "https://x.example"})
    rows = _audit_rows(superuser_db, tenant.clinic_id, table_name="clinics", action="update")
    assert rows and rows[-1]["new_values"]["website"] == "https://x.example"
    assert rows[-1]["record_id"] == str(tenant.clinic_id)


def test_auth_events_are_audited_without_tokens(tenant, superuser_db):
    auth = tenant.client("auth")
    user = tenant.users["manager"]
    auth.post("/auth/login", json=user.login_body(password="wrong-password"))
    pair = auth.post("/auth/login", json=user.login_body()).json()
    auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})  # reuse
    # the reuse revoked that family; sign in again to sign out
    again = auth.post("/auth/login", json=user.login_body()).json()
    auth.post("/auth/logout", headers={"Authorization": f"Bearer {again['access_token']}"})

    rows = _audit_rows(superuser_db, tenant.clinic_id, user_id=user.id)
    actions = [r["action"] for r in rows if r["action"].startswith("auth.")]
    assert actions == [
        "auth.login_failed",
        "auth.login_succeeded",
        "auth.refreshed",
        "auth.refresh_reuse_detected",
        "auth.login_succeeded",
        "auth.logout",
    ]
    text = json.dumps([[r["old_values"], r["new_values"]] for r in rows], default=str)
    assert pair["refresh_token"] not in text and pair["access_token"] not in text
    assert "wrong-password" not in text and user.password not in text
