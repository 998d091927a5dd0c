"""The sign-in story end to end: login → me → refresh → reuse detected →
family revoked; logout; identical failures; passwords past 72 bytes; login
rate limits with their headers."""

from __future__ import annotations

import uuid

import jwt

from contract_tests.conftest import assert_error, clear_of_window_edge


def login(tenant, role: str = "staff", **overrides):
    body = {**tenant.users[role].login_body(), **overrides}
    return tenant.client("auth").post("/auth/login", json=body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_me_refresh_reuse_and_family_revocation(tenant, stack):
    auth = tenant.client("auth")
    first = login(tenant)
    assert first.status_code == 200, first.text
    pair = first.json()
    assert pair["token_type"] == "Bearer" and pair["user"]["id"] == str(tenant.users["staff"].id)
    assert first.headers["Cache-Control"] == "no-store"

    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(tenant.users["staff"].id)
    assert claims["clinic_id"] == str(tenant.clinic_id)
    assert claims["role"] == "staff" and claims["typ"] == "access"
    assert claims["iss"] == stack.jwt_issuer and claims["aud"] == stack.jwt_audience
    assert claims["exp"] > claims["iat"]

    me = auth.get("/auth/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == tenant.users["staff"].email

    second = auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200, second.text
    assert second.headers["Cache-Control"] == "no-store"
    rotated = second.json()
    assert rotated["refresh_token"] != pair["refresh_token"]
    assert auth.get("/auth/me", headers=bearer(rotated["access_token"])).status_code == 200

    # The spent token comes back: it leaked. The whole family is revoked.
    reuse = auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_error(reuse, 401, "invalid_token")
    later = auth.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert_error(later, 401, "invalid_token")
    assert_error(auth.get("/auth/me", headers=bearer(rotated["access_token"])), 401)
    assert_error(auth.get("/auth/me", headers=bearer(pair["access_token"])), 401)

    # A fresh login is a new family and works.
    assert login(tenant).status_code == 200


def test_logout_revokes_access_and_refresh(tenant):
    auth = tenant.client("auth")
    pair = login(tenant, "manager").json()
    other = login(tenant, "manager").json()  # a second, independent session
    assert auth.post("/auth/logout", headers=bearer(pair["access_token"])).status_code == 204
    assert_error(auth.get("/auth/me", headers=bearer(pair["access_token"])), 401)
    refused = auth.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_error(refused, 401, "invalid_token")
    assert auth.get("/auth/me", headers=bearer(other["access_token"])).status_code == 200


def test_unknown_clinic_unknown_user_and_wrong_password_answer_identically(tenant):
    wrong = login(tenant, password="not-the-password")
    unknown_user = login(tenant, email=f"nobody-{uuid.uuid4().hex}@clinic.example")
    unknown_clinic = login(tenant, clinic_slug=f"no-such-clinic-{uuid.uuid4().hex[:12]}")
    volatile = {"date", "x-request-id", "content-length"}
    for response in (wrong, unknown_user, unknown_clinic):
        assert_error(response, 401, "invalid_credentials")
        assert response.json()["error"]["message"] == wrong.json()["error"]["message"]
        assert set(response.headers) - volatile == set(wrong.headers) - volatile


def test_password_longer_than_72_bytes_is_refused_not_truncated(tenant):
    user = tenant.users["staff"]
    # The first 72 bytes are the real password padded: bcrypt would accept it.
    padded = (user.password * 10)[:72] + "tail"
    error = assert_error(
        tenant.client("auth").post("/auth/login", json=user.login_body(password=padded)),
        422,
        "validation_error",
    )
    assert error["details"][0]["field"] == "password"
    # 'ç' is two bytes: 40 of them are 80 bytes but 40 characters.
    admin = tenant.client("users", "admin")
    response = admin.post(
        "/users",
        json={
            "name": "Long",
            "email": f"long-{uuid.uuid4().hex[:8]}@clinic.example",
            "password": "ç" * 40,
            "role": "staff",
        },
    )
    assert assert_error(response, 422)["details"][0]["field"] == "password"


def test_login_is_rate_limited_per_account_with_headers(tenant, stack):
    user = tenant.users["admin"]
    auth = tenant.client("auth")
    clear_of_window_edge(margin=10.0)  # 12 sign-ins within one window
    answers = [
        auth.post("/auth/login", json=user.login_body(password="wrong-password")) for _ in range(12)
    ]
    statuses = [a.status_code for a in answers]
    assert 429 in statuses, statuses
    first_refusal = statuses.index(429)
    assert all(s == 401 for s in statuses[:first_refusal])
    assert all(s == 429 for s in statuses[first_refusal:])
    refused = answers[first_refusal]
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    limit = int(refused.headers["RateLimit-Limit"])
    assert first_refusal == limit
    assert any(h.lower().startswith("x-ratelimit-remaining-") for h in refused.headers)
    # Even the right password is refused while the account is limited.
    assert login(tenant, "admin").status_code == 429


def test_login_is_rate_limited_per_client_address(tenant_factory):
    # Different accounts, one client address: the per-client limit trips.
    tenants = [tenant_factory() for _ in range(2)]
    shared_ip = tenants[0].client_ip
    clear_of_window_edge(margin=15.0)  # 40 sign-ins within one window
    answers = []
    for attempt in range(40):
        t = tenants[attempt % 2]
        user = t.users[("admin", "manager", "staff")[attempt % 3]]
        answers.append(
            t.client("auth").post(
                "/auth/login",
                json=user.login_body(),
                headers={"X-Forwarded-For": shared_ip},
            )
        )
    statuses = [a.status_code for a in answers]
    assert 429 in statuses, statuses
    first_refusal = statuses.index(429)
    refused = answers[first_refusal]
    assert first_refusal == int(refused.headers["RateLimit-Limit"])  # no over-admission
    assert refused.headers["X-RateLimit-Remaining-Minute"] == "0"


def test_bad_tokens_are_refused(tenant):
    client = tenant.client("auth")
    for header in ("Bearer", "Bearer not-a-jwt", "Basic abc", "Token x"):
        assert_error(client.get("/auth/me", headers={"Authorization": header}), 401)
    assert_error(client.get("/auth/me"), 401)


def test_a_sign_out_takes_effect_at_once_on_every_instance_of_every_service(tenant, stack):
    """Each process keeps its own copy of the signed-out sessions (Redis pub/sub)
    and its own verified-token memory: right after the sign-out answers, the
    token is refused by every instance, including those that had just served it."""
    import httpx

    reads = {"auth": "/auth/me", "users": "/users?limit=1", "clinics": "/clinics/me"}
    instances = [
        (url, path)
        for service, path in reads.items()
        for url in stack.service_instances.get(service, (stack.service_url(service),))
    ]
    assert len(instances) >= 3
    with httpx.Client(timeout=10) as http:
        for role in ("admin", "manager", "staff"):
            pair = login(tenant, role).json()
            headers = bearer(pair["access_token"])
            for url, path in instances:  # every process has verified and accepted it
                accepted = http.get(url + path, headers=headers).status_code
                assert accepted == (403 if (role, path[:6]) == ("staff", "/users") else 200)
            signed_out = tenant.client("auth").post("/auth/logout", headers=headers)
            assert signed_out.status_code == 204
            for url, path in instances:
                answer = http.get(url + path, headers=headers)
                assert answer.status_code == 401, (role, url, path, answer.text)
