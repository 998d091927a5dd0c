"""The auth attack catalogue (DESIGN.md section 8), one test per case, and the
proofs: each check, run against a deliberately broken auth (or users)
instance started with the stack's configuration, turns red.

Tokens with bad claims are signed with the stack's real private key
(``stack.extra["jwt_private_key_file"]``), so only the claim is wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.security import SecurityCheckFailed
from harness.security.auth_checks import (
    AuthEndpoint,
    check_bcrypt_cost,
    check_logout_revokes,
    check_long_passwords_refused,
    check_no_secrets_in_audit_and_logs,
    check_no_user_enumeration,
    check_refresh_rotation,
    check_reuse_revokes_family,
    check_token_responses_not_cached,
)
from harness.security.instances import ServiceInstance
from harness.security.jwt_attacks import (
    CLAIM_CASES,
    KEY_CONFUSION_CASES,
    KEY_HEADER_CASES,
    SIGNATURE_CASES,
    TYPE_CASES,
    OutboundListener,
    Target,
    TokenForge,
    attack_cases,
    check_genuine_token_accepted,
    check_token_rejected,
)
from harness.stack import Stack
from harness.tenants import TEST_PASSWORD, Tenant

ALL_CASES = (*SIGNATURE_CASES, *KEY_CONFUSION_CASES, *KEY_HEADER_CASES, *CLAIM_CASES, *TYPE_CASES)
PASSWORD_72 = "Aa1!" * 18  # exactly 72 bytes

BrokenService = Callable[..., ServiceInstance]


def make_forge(stack: Stack, genuine: str) -> TokenForge:
    try:
        private = Path(stack.extra["jwt_private_key_file"]).read_text()
        public = Path(stack.extra["jwt_public_key_file"]).read_text()
    except (KeyError, OSError):
        pytest.skip("this stack does not lend its JWT keys (needs the local provider)")
    return TokenForge(
        genuine,
        private_key_pem=private,
        public_key_pem=public,
        issuer=stack.jwt_issuer,
        audience=stack.jwt_audience,
    )


@pytest.fixture
def listener() -> Iterator[OutboundListener]:
    with OutboundListener() as running:
        yield running


def stack_targets(stack: Stack, client_ip: str) -> list[Target]:
    """One authenticated route per service (an admin may call each)."""
    return [
        Target(stack.service_url("auth"), "/auth/me", client_ip),
        Target(stack.service_url("users"), "/users", client_ip),
        Target(stack.service_url("clinics"), "/clinics/me", client_ip),
    ]


def endpoint(url: str, tenant: Tenant) -> AuthEndpoint:
    return AuthEndpoint(url, tenant.api.addresses.next(), tenant.clinic_slug)


def create_user_with_password(users_url: str, tenant: Tenant, password: str) -> tuple[str, str]:
    """A staff user made through the users API (the platform hashes it); (id, email)."""
    email = f"sec-{uuid.uuid4().hex[:12]}@security.example"
    response = httpx.post(
        f"{users_url}/users",
        json={"name": "Security Test", "email": email, "password": password, "role": "staff"},
        headers={
            "Authorization": f"Bearer {tenant.access_token('admin')}",
            "X-Forwarded-For": tenant.client_ip,
        },
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], email


# --- the catalogue against the stack -------------------------------------------------


def test_attack_catalogue_is_complete(stack: Stack, tenant: Tenant) -> None:
    forge = make_forge(stack, tenant.access_token("admin"))
    assert [case.name for case in attack_cases(forge, "http://127.0.0.1:9")] == list(ALL_CASES)


@pytest.mark.parametrize("case", ALL_CASES)
def test_forged_access_token_is_refused(
    case: str, stack: Stack, tenant: Tenant, listener: OutboundListener
) -> None:
    forge = make_forge(stack, tenant.access_token("admin"))
    listener.jwks = {"keys": [forge.attacker_jwk()]}
    targets = stack_targets(stack, tenant.client_ip)
    check_genuine_token_accepted(targets, forge.genuine)
    token = {c.name: c for c in attack_cases(forge, listener.url)}[case].token()
    check_token_rejected(targets, token, case=case)
    listener.check_no_calls()


def test_refresh_token_is_not_an_access_token_and_back(stack: Stack, tenant: Tenant) -> None:
    pair = tenant.login("staff")
    targets = stack_targets(stack, tenant.client_ip)[:1]
    check_token_rejected(targets, pair["refresh_token"], case="refresh token as Bearer")
    auth = endpoint(stack.service_url("auth"), tenant)
    response = auth.refresh(pair["access_token"][:200])
    assert response.status_code in (401, 422), response.text
    response = auth.refresh(f"rt1.{tenant.clinic_id}.{pair['access_token'].split('.')[2][:60]}")
    assert response.status_code == 401, response.text


def test_refresh_tokens_rotate(stack: Stack, tenant: Tenant) -> None:
    user = tenant.user("staff")
    check_refresh_rotation(endpoint(stack.service_url("auth"), tenant), user.email, user.password)


def test_reusing_a_refresh_token_revokes_the_family(stack: Stack, tenant: Tenant) -> None:
    user = tenant.user("manager")
    auth = endpoint(stack.service_url("auth"), tenant)
    check_reuse_revokes_family(auth, user.email, user.password)


def test_logout_revokes_the_session(stack: Stack, tenant: Tenant) -> None:
    user = tenant.user("admin")
    check_logout_revokes(endpoint(stack.service_url("auth"), tenant), user.email, user.password)


def test_passwords_longer_than_72_bytes_are_refused(stack: Stack, tenant: Tenant) -> None:
    _, email = create_user_with_password(stack.service_url("users"), tenant, PASSWORD_72)
    check_long_passwords_refused(
        endpoint(stack.service_url("auth"), tenant),
        email,
        PASSWORD_72,
        stack.service_url("users"),
        tenant.access_token("admin"),
    )


def test_unknown_clinic_unknown_user_and_wrong_password_answer_identically(
    stack: Stack, tenant: Tenant
) -> None:
    endpoints = [endpoint(stack.service_url("auth"), tenant) for _ in range(9)]
    check_no_user_enumeration(endpoints, tenant.user("staff").email)


def test_passwords_are_stored_with_bcrypt_cost_at_least_10(stack: Stack, tenant: Tenant) -> None:
    user_id, _ = create_user_with_password(stack.service_url("users"), tenant, TEST_PASSWORD)
    assert min(check_bcrypt_cost(stack.postgres.superuser_dsn, [user_id])) >= 10


def test_no_password_or_raw_token_in_audit_rows_or_logs(stack: Stack, tenant: Tenant) -> None:
    user = tenant.user("staff")
    auth = endpoint(stack.service_url("auth"), tenant)
    pair = auth.pair(user.email, user.password)
    refreshed = auth.refresh(pair["refresh_token"]).json()
    auth.login(user.email, "Wrong-Password-123")
    auth.post("/auth/logout", headers={"Authorization": f"Bearer {refreshed['access_token']}"})
    logs = sorted(Path(stack.extra.get("services_log_dir", "/nonexistent")).glob("*.log"))
    if not logs:
        pytest.skip("this stack does not expose its service logs")
    secrets = [user.password, "Wrong-Password-123", *pair.values(), *refreshed.values()]
    check_no_secrets_in_audit_and_logs(
        stack.postgres.superuser_dsn,
        [tenant.clinic_id],
        [s for s in secrets if isinstance(s, str) and len(s) > 8],
        logs,
    )


def test_token_responses_are_not_cacheable(stack: Stack, tenant: Tenant) -> None:
    user = tenant.user("staff")
    auth = endpoint(stack.service_url("auth"), tenant)
    check_token_responses_not_cached(auth, user.email, user.password)


# --- proofs: each check against a broken auth instance turns red ----------------------

TOKEN_DEFECTS = {
    "verify_no_signature": (*SIGNATURE_CASES, *KEY_HEADER_CASES[:2], KEY_HEADER_CASES[4]),
    "hs_rs_confusion": KEY_CONFUSION_CASES,
    "jku_fetch": KEY_HEADER_CASES[2:4],
    "lax_claims": CLAIM_CASES,
    "no_type_check": TYPE_CASES,
}


def test_proof_every_attack_case_has_a_defect() -> None:
    covered = [case for cases in TOKEN_DEFECTS.values() for case in cases]
    assert sorted(covered) == sorted(ALL_CASES)


@pytest.mark.parametrize("defect", list(TOKEN_DEFECTS))
def test_proof_token_checks_catch(
    defect: str,
    stack: Stack,
    tenant: Tenant,
    broken_service: BrokenService,
    listener: OutboundListener,
) -> None:
    broken = broken_service("auth", defect)
    forge = make_forge(stack, tenant.access_token("admin"))
    listener.jwks = {"keys": [forge.attacker_jwk()]}
    targets = [Target(broken.url, "/auth/me", tenant.client_ip)]
    check_genuine_token_accepted(targets, forge.genuine)
    cases = {c.name: c for c in attack_cases(forge, listener.url)}
    missed = []
    for name in TOKEN_DEFECTS[defect]:
        try:
            check_token_rejected(targets, cases[name].token(), case=name)
            if "jku" in name or "x5u" in name:
                listener.check_no_calls()
        except SecurityCheckFailed:
            continue
        missed.append(name)
    assert not missed, f"with the defect {defect!r} these checks stayed green: {missed}"
    if defect == "jku_fetch":
        assert listener.requests, "the listener must have seen the broken verifier's fetch"


AUTH_DEFECTS: dict[str, Callable[[AuthEndpoint, Tenant], None]] = {
    "no_rotation": lambda auth, t: check_refresh_rotation(
        auth, t.user("staff").email, TEST_PASSWORD
    ),
    "no_family_revocation": lambda auth, t: check_reuse_revokes_family(
        auth, t.user("staff").email, TEST_PASSWORD
    ),
    "logout_no_revoke": lambda auth, t: check_logout_revokes(
        auth, t.user("staff").email, TEST_PASSWORD
    ),
    "cacheable_tokens": lambda auth, t: check_token_responses_not_cached(
        auth, t.user("staff").email, TEST_PASSWORD
    ),
    "user_enumeration": lambda auth, t: check_no_user_enumeration(
        [AuthEndpoint(auth.url, t.api.addresses.next(), t.clinic_slug) for _ in range(9)],
        t.user("staff").email,
    ),
}


@pytest.mark.parametrize("defect", list(AUTH_DEFECTS))
def test_proof_auth_checks_catch(
    defect: str, tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("auth", defect)
    with pytest.raises(SecurityCheckFailed):
        AUTH_DEFECTS[defect](endpoint(broken.url, tenant), tenant)


def test_proof_long_password_check_catches_truncation(
    stack: Stack, tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("auth", "truncating_passwords")
    _, email = create_user_with_password(stack.service_url("users"), tenant, PASSWORD_72)
    with pytest.raises(SecurityCheckFailed, match="silently truncated"):
        check_long_passwords_refused(
            endpoint(broken.url, tenant),
            email,
            PASSWORD_72,
            stack.service_url("users"),
            tenant.access_token("admin"),
        )


def test_proof_bcrypt_cost_check_catches_a_cheap_hash(
    stack: Stack, tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("users", "low_bcrypt_cost")
    user_id, _ = create_user_with_password(broken.url, tenant, TEST_PASSWORD)
    with pytest.raises(SecurityCheckFailed, match="cost 4"):
        check_bcrypt_cost(stack.postgres.superuser_dsn, [user_id])


def test_proof_secret_scan_catches_passwords_and_tokens(
    stack: Stack, tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("auth", "secrets_in_audit_and_logs")
    user = tenant.user("staff")
    pair = endpoint(broken.url, tenant).pair(user.email, user.password)
    with pytest.raises(SecurityCheckFailed, match=r"audit row 'debug\.login'.*log ") as caught:
        check_no_secrets_in_audit_and_logs(
            stack.postgres.superuser_dsn,
            [tenant.clinic_id],
            [user.password, pair["access_token"], pair["refresh_token"]],
            [broken.log_path],
        )
    assert user.password not in str(caught.value), "the evidence must not repeat the secret"
