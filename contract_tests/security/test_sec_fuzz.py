"""Fuzzing every service from its OpenAPI document (schemathesis): zero 5xx, every
answer documented and matching its schema. Default: 25 cases per operation and
mode (positive, and negative for operations with parameters or a body);
``--deep``: 250. The proofs run the same fuzzer against broken instances.

Each case comes from its own client address (so login rate limits do not turn
the fuzzer into a 429 generator) and carries a token for the operation's roles:
the tenant's admin, or the platform admin for platform routes. ``POST
/auth/logout`` gets a freshly signed token of its own each time (a session
family nobody else uses), so logging out does not revoke the others'.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.security import SecurityCheckFailed
from harness.security.fuzz import HeadersFor, fuzz_service
from harness.security.instances import ServiceInstance
from harness.security.jwt_attacks import TokenForge
from harness.security.pytest_plugin import Budget, Tally
from harness.stack import Stack
from harness.tenants import AccountSession, ApiSession, Tenant


def make_headers_for(
    stack: Stack, api: ApiSession, tenant: Tenant, admin_session: AccountSession
) -> HeadersFor:
    admin = tenant.access_token("admin")
    forge: TokenForge | None = None
    if "jwt_private_key_file" in stack.extra:
        forge = TokenForge(
            admin,
            private_key_pem=Path(stack.extra["jwt_private_key_file"]).read_text(),
            public_key_pem=Path(stack.extra["jwt_public_key_file"]).read_text(),
            issuer=stack.jwt_issuer,
            audience=stack.jwt_audience,
        )
    platform = platform_admin_token(stack, admin_session, forge)

    def headers_for(path: str, roles: tuple[str, ...]) -> dict[str, str]:
        token = admin if "admin" in roles or not roles else platform
        if path == "/auth/logout" and forge is not None:
            token = forge.sign(forge.fresh_claims(sid=str(uuid.uuid4())))
        return {"Authorization": f"Bearer {token}", "X-Forwarded-For": api.addresses.next()}

    return headers_for


def platform_admin_token(
    stack: Stack, admin_session: AccountSession, forge: TokenForge | None
) -> str:
    """Signed for the seeded platform admin without a login when the stack's key is
    at hand; else the session's platform admin token (signed in once per session:
    logins are rate limited per account)."""
    if forge is None:
        return admin_session.access_token()
    admin = stack.platform_admin
    with psycopg.connect(stack.postgres.superuser_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select id, clinic_id from atendeai.find_user_for_login(%s, %s)",
            [admin.clinic_slug, admin.email],
        ).fetchone()
    assert row is not None, "the stack has no platform admin"
    claims = forge.fresh_claims(
        sub=str(row[0]), clinic_id=str(row[1]), role="platform_admin", sid=str(uuid.uuid4())
    )
    return forge.sign(claims)


@pytest.mark.parametrize("service", ["auth", "users", "clinics", "health"])
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(
    service: str,
    stack: Stack,
    api: ApiSession,
    tenant: Tenant,
    platform_admin_session: AccountSession,
    openapi_docs: dict[str, dict[str, Any]],
    security_budget: Budget,
    security_tally: Tally,
) -> None:
    skip = () if "jwt_private_key_file" in stack.extra else ("POST /auth/logout",)
    report = fuzz_service(
        service,
        openapi_docs[service],
        stack.service_url(service),
        headers_for=make_headers_for(stack, api, tenant, platform_admin_session),
        examples=security_budget.examples(25, 250),
        skip=skip,
        derandomize=not security_budget.deep,  # make test is reproducible
    )
    security_tally.add(
        "fuzz cases",
        report.total,
        f"{service} {report.total} over {len(report.cases)} operation-modes",
    )
    assert report.total > 0


# --- proofs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "defect", "expected"),
    [
        ("users", "crash_on_create_user", r"POST /users \(positive\)(.|\n)*Server error"),
        ("auth", "me_schema_drift", r"GET /auth/me \(positive\)(.|\n)*[Ss]chema"),
    ],
    ids=["crash_on_create_user", "me_schema_drift"],
)
def test_proof_fuzzer_catches(
    service: str,
    defect: str,
    expected: str,
    stack: Stack,
    api: ApiSession,
    tenant: Tenant,
    platform_admin_session: AccountSession,
    openapi_docs: dict[str, dict[str, Any]],
    broken_service: Callable[..., ServiceInstance],
) -> None:
    broken = broken_service(service, defect)
    with pytest.raises(SecurityCheckFailed, match=expected):
        fuzz_service(
            service,
            openapi_docs[service],
            broken.url,
            headers_for=make_headers_for(stack, api, tenant, platform_admin_session),
            examples=10,
            derandomize=True,  # a proof finds its defect every time, not by luck
        )
