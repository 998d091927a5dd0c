"""Rate limits under concurrency (two auth instances sharing Redis), CORS,
security headers on every response, error bodies without traces or SQL; and
the proofs that each check turns red on a broken instance.

The rate-limit tests start two auth instances of their own with the stack's
configuration and known limits (per account 4, per client 10, per hour), so
the counts are exact; each burst is three times the limit, fired at once and
split across both instances.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contract_tests.conftest import clear_of_window_edge
from harness.exceptions import ConfigurationError
from harness.security import SecurityCheckFailed
from harness.security.http_checks import (
    LoginAttempt,
    check_cors,
    check_error_bodies,
    check_login_limit_exact,
    check_security_headers,
)
from harness.security.instances import ServiceInstance, extra_service, service_env
from harness.security.pytest_plugin import Tally
from harness.stack import Stack
from harness.tenants import Tenant

ACCOUNT_LIMIT, CLIENT_LIMIT, WINDOW = 4, 10, 3600
LIMIT_ENV = {
    "ATENDEAI_LOGIN_LIMIT_PER_ACCOUNT": f"{ACCOUNT_LIMIT}/{WINDOW}",
    "ATENDEAI_LOGIN_LIMIT_PER_CLIENT": f"{CLIENT_LIMIT}/{WINDOW}",
}
BrokenService = Callable[..., ServiceInstance]


@pytest.fixture(scope="module")
def two_auth_instances(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("auth-instances")
    try:
        service_env(stack, "auth")
    except ConfigurationError as error:
        pytest.skip(f"cannot start auth instances of our own here: {error}")
    with (
        extra_service(stack, "auth", log_dir=logs, env=LIMIT_ENV, label="auth-a") as a,
        extra_service(stack, "auth", log_dir=logs, env=LIMIT_ENV, label="auth-b") as b,
    ):
        yield [a.url, b.url]


def account_burst(urls: list[str], tenant: Tenant, limit: int) -> list[LoginAttempt]:
    """3 x limit logins for one account, each from its own address, across the instances."""
    user = tenant.user("staff")
    return [
        LoginAttempt(
            urls[i % len(urls)],
            user.clinic_slug,
            user.email,
            user.password,
            tenant.api.addresses.next(),
        )
        for i in range(3 * limit)
    ]


def client_burst(urls: list[str], tenant: Tenant, limit: int) -> list[LoginAttempt]:
    """3 x limit logins from one address, each for a different (unknown) account."""
    ip = tenant.api.addresses.next()
    return [
        LoginAttempt(
            urls[i % len(urls)],
            tenant.clinic_slug,
            f"nobody-{uuid.uuid4().hex[:12]}@x.example",
            "pw-12345",
            ip,
        )
        for i in range(3 * limit)
    ]


# --- rate limits -----------------------------------------------------------------------


def test_login_limit_per_account_is_exact_across_two_instances(
    two_auth_instances: list[str], tenant: Tenant, security_tally: Tally
) -> None:
    clear_of_window_edge(WINDOW)
    outcome = check_login_limit_exact(
        account_burst(two_auth_instances, tenant, ACCOUNT_LIMIT),
        limit=ACCOUNT_LIMIT,
        window_seconds=WINDOW,
        check_counts=True,
    )
    assert {r.status_code for r in outcome.admitted} == {200}
    security_tally.add("rate limit bursts", 1, f"per account: {outcome.describe()}")


def test_login_limit_per_client_is_exact_across_two_instances(
    two_auth_instances: list[str], tenant: Tenant, security_tally: Tally
) -> None:
    clear_of_window_edge(WINDOW)
    outcome = check_login_limit_exact(
        client_burst(two_auth_instances, tenant, CLIENT_LIMIT),
        limit=CLIENT_LIMIT,
        window_seconds=WINDOW,
        check_counts=False,  # the headers report the tighter per-account window here
    )
    assert {r.status_code for r in outcome.admitted} == {401}
    security_tally.add("rate limit bursts", 1, f"per client: {outcome.describe()}")


def test_stack_login_limit_headers(stack: Stack, tenant: Tenant) -> None:
    """The stack's own auth: Kong-style and RateLimit-* headers, then 429 + Retry-After."""
    import httpx

    user = tenant.user("admin")
    ip = tenant.api.addresses.next()
    clear_of_window_edge(60, 3.0)  # the stack's own limits are per minute

    answers = []
    for _ in range(30):
        answers.append(
            httpx.post(
                f"{stack.service_url('auth')}/auth/login",
                json=user.login_body(password="Wrong-Password-1"),
                headers={"X-Forwarded-For": ip},
                timeout=10,
            )
        )
        if answers[-1].status_code == 429:
            break
    assert answers[-1].status_code == 429, [a.status_code for a in answers]
    limit = int(answers[0].headers["RateLimit-Limit"])
    assert len(answers) == limit + 1
    remaining = [int(a.headers["RateLimit-Remaining"]) for a in answers]
    assert remaining == [*range(limit - 1, -1, -1), 0]
    unit_headers = [h for h in answers[0].headers if h.lower().startswith("x-ratelimit-limit-")]
    assert unit_headers, answers[0].headers
    retry_after = int(answers[-1].headers["Retry-After"])
    assert 1 <= retry_after <= int(answers[-1].headers["RateLimit-Reset"]) + 1


# --- CORS, headers, error bodies on every service -------------------------------------


def test_cors_allow_list_on_every_service(stack: Stack) -> None:
    if not stack.allowed_origins:
        pytest.skip("this stack allows no origin")
    for service, url in stack.services.items():
        paths = [("GET", "/health")] + ([("POST", "/users")] if service == "users" else [])
        check_cors(url, stack.allowed_origins[0], paths=paths)


def test_security_headers_on_every_response(
    stack: Stack, openapi_docs: dict[str, dict[str, Any]], tenant: Tenant, security_tally: Tally
) -> None:
    total = 0
    for service, url in stack.services.items():
        total += check_security_headers(
            url,
            openapi_docs[service],
            token=tenant.access_token("admin"),
            client_ip=tenant.client_ip,
        )
    security_tally.add("security header responses", total)


def test_error_bodies_carry_no_trace_or_sql(
    stack: Stack, openapi_docs: dict[str, dict[str, Any]], tenant: Tenant, security_tally: Tally
) -> None:
    total = 0
    for service, url in stack.services.items():
        if service == "auth":
            continue  # below, from addresses of its own (login is rate limited)
        total += check_error_bodies(
            url,
            openapi_docs[service],
            token=tenant.access_token("admin"),
            client_ip=tenant.client_ip,
        )
    total += check_error_bodies(
        stack.service_url("auth"),
        openapi_docs["auth"],
        token=tenant.access_token("admin"),
        client_ip=tenant.api.addresses.next(),
    )
    security_tally.add("hostile requests (error bodies)", total)


# --- proofs --------------------------------------------------------------------------------


@pytest.mark.parametrize("defect", ["racy_ratelimit", "local_ratelimit"])
def test_proof_rate_limit_check_catches_over_admission(
    defect: str,
    stack: Stack,
    tenant: Tenant,
    broken_service: BrokenService,
) -> None:
    urls = [broken_service("auth", defect, **LIMIT_ENV).url for _ in range(2)]
    clear_of_window_edge(WINDOW)
    with pytest.raises(SecurityCheckFailed, match="over-admission"):
        check_login_limit_exact(
            account_burst(urls, tenant, ACCOUNT_LIMIT),
            limit=ACCOUNT_LIMIT,
            window_seconds=WINDOW,
            check_counts=True,
        )


@pytest.mark.parametrize("defect", ["cors_reflect_any_origin", "cors_wildcard_with_credentials"])
def test_proof_cors_check_catches(defect: str, stack: Stack, broken_service: BrokenService) -> None:
    broken = broken_service("users", defect)
    with pytest.raises(SecurityCheckFailed, match="CORS"):
        check_cors(broken.url, stack.allowed_origins[0] if stack.allowed_origins else "http://x")


def test_proof_security_header_check_catches_bare_errors(
    openapi_docs: dict[str, dict[str, Any]], tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("users", "headers_missing_on_errors")
    with pytest.raises(SecurityCheckFailed, match="X-Content-Type-Options"):
        check_security_headers(
            broken.url,
            openapi_docs["users"],
            token=tenant.access_token("admin"),
            client_ip=tenant.client_ip,
        )


def test_proof_error_body_check_catches_traces(
    openapi_docs: dict[str, dict[str, Any]], tenant: Tenant, broken_service: BrokenService
) -> None:
    broken = broken_service("users", "leaky_errors")
    with pytest.raises(SecurityCheckFailed, match="Traceback"):
        check_error_bodies(
            broken.url,
            openapi_docs["users"],
            token=tenant.access_token("admin"),
            client_ip=tenant.client_ip,
        )
