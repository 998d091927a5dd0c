"""Object-level authorization (OWASP API1): the sweep over every route with an id,
built from the services' OpenAPI documents (``harness.security.bola``), and
the proofs that it turns red on broken instances: one that bypasses RLS, one
with an existence oracle, and one that serves a cached clinic before checking
whose it is (caught only because the sweep warms the caches first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from harness.security import SecurityCheckFailed
from harness.security.bola import check_object_level_authorization, example_body, id_operations
from harness.security.instances import ServiceInstance
from harness.security.pytest_plugin import Tally
from harness.stack import Stack
from harness.tenants import Tenant
from system_under_test.services.clinics import cache_key


def sweep(
    docs: dict[str, dict[str, Any]],
    urls: dict[str, str],
    stack: Stack,
    a: Tenant,
    b: Tenant,
    *,
    warm_up: bool = True,
) -> Any:
    return check_object_level_authorization(
        docs,
        urls,
        token_for=a.access_token,
        attacker=a.clinic_id,
        victim=b.clinic_id,
        superuser_dsn=stack.postgres.superuser_dsn,
        client_ip=a.client_ip,
        victim_token_for=b.access_token,
        victim_client_ip=b.client_ip,
        warm_up=warm_up,
    )


def test_every_id_route_answers_404_for_another_clinics_ids(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
    security_tally: Tally,
) -> None:
    a, b = tenant_factory(), tenant_factory()
    report = sweep(openapi_docs, dict(stack.services), stack, a, b)
    # Today: GET/PATCH/DELETE /users/{user_id}, GET/PATCH /clinics/{clinic_id}.
    assert len(report.operations) >= 5, report.operations
    # B read its own object (2xx, or the sweep fails) before every attempt on it
    assert report.warm_ups >= len(report.operations), report
    security_tally.add(
        "object-level authorization sweep",
        len(report.operations),
        f"operations, {report.requests} requests",
    )


def test_sweep_covers_a_new_route_without_editing_the_test(
    openapi_docs: dict[str, dict[str, Any]],
) -> None:
    # A document that gains a route with an id is swept: the list comes from the document.
    docs = {name: dict(doc) for name, doc in openapi_docs.items()}
    users = dict(docs["users"])
    paths = dict(users["paths"])
    paths["/users/{user_id}/sessions"] = {
        "get": {"x-roles": ["admin"], "parameters": [{"name": "user_id", "in": "path"}]}
    }
    users["paths"] = paths
    docs["users"] = users
    names = [op.name for op in id_operations(docs)]
    assert "users GET /users/{user_id}/sessions" in names


def test_example_bodies_are_valid_for_every_documented_body(
    openapi_docs: dict[str, dict[str, Any]],
) -> None:
    from jsonschema import Draft202012Validator

    for op in id_operations(openapi_docs):
        if op.body_schema is None:
            continue
        body = example_body(op.body_schema, op.components)
        # The documents' $refs point at #/components/schemas/X: give the root one.
        schema = {**op.body_schema, "components": {"schemas": op.components}}
        Draft202012Validator(schema).validate(body)
        assert body, f"{op.name}: an empty update body would do nothing"


# --- proofs ------------------------------------------------------------------------------


def broken_pair(
    broken_service: Callable[..., ServiceInstance], stack: Stack, defect: str | None
) -> dict[str, str]:
    """Users and clinics instances that connect as the superuser (RLS does not apply)."""
    env = {"ATENDEAI_DATABASE_URL": stack.postgres.superuser_dsn}
    urls = dict(stack.services)
    for service in ("users", "clinics"):
        if defect is None or service == "users":
            urls[service] = broken_service(service, defect or "none", **env).url
    return urls


def test_proof_sweep_catches_a_service_that_bypasses_rls(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
    broken_service: Callable[..., ServiceInstance],
) -> None:
    urls = broken_pair(broken_service, stack, None)
    a, b = tenant_factory(), tenant_factory()
    with pytest.raises(SecurityCheckFailed) as caught:
        sweep(openapi_docs, urls, stack, a, b)
    message = str(caught.value)
    assert "users GET /users/{user_id} as admin with clinic B's ids answered 200" in message
    assert "changed clinic B's rows" in message


def test_proof_sweep_catches_an_existence_oracle(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
    broken_service: Callable[..., ServiceInstance],
) -> None:
    urls = broken_pair(broken_service, stack, "existence_oracle")
    a, b = tenant_factory(), tenant_factory()
    with pytest.raises(SecurityCheckFailed, match="existence oracle") as caught:
        sweep(openapi_docs, urls, stack, a, b)
    assert "answered 403" in str(caught.value)
    # The oracle leaks existence, not data: B's rows are untouched.
    assert "changed clinic B's rows" not in str(caught.value)
    assert httpx.get(f"{urls['users']}/health", timeout=5).status_code == 200


def test_proof_sweep_catches_a_cache_read_before_the_ownership_check(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
    broken_service: Callable[..., ServiceInstance],
    redis_client: redis.Redis,
) -> None:
    # Only the clinics read is broken; it runs with the stack's own database role (RLS on).
    urls = dict(stack.services)
    urls["clinics"] = broken_service("clinics", "clinic_cache_before_ownership").url
    a, b = tenant_factory(), tenant_factory()

    # On cold caches the defect is invisible: a sweep of the clinics routes without
    # the warm-up passes it.
    assert redis_client.get(cache_key(b.clinic_id)) is None
    clinics_only = {"clinics": openapi_docs["clinics"]}
    cold = sweep(clinics_only, urls, stack, a, b, warm_up=False)
    assert cold.warm_ups == 0 and "clinics GET /clinics/{clinic_id}" in cold.operations
    assert redis_client.get(cache_key(b.clinic_id)) is None  # nothing cached B's clinic

    # The whole sweep, with its warm-up, reads B's clinic as B first, then as A: caught.
    with pytest.raises(SecurityCheckFailed) as caught:
        sweep(openapi_docs, urls, stack, a, b)
    message = str(caught.value)
    for role in ("admin", "manager", "staff"):
        assert (
            f"clinics GET /clinics/{{clinic_id}} as {role} with clinic B's ids answered 200"
            in message
        ), message
    assert str(b.clinic_id) in message  # B's clinic itself, served to A from the cache
    # the other routes still hold: every problem is the cache-first read
    problems = message.splitlines()[1:]
    assert problems and all(
        line.startswith("clinics GET /clinics/{clinic_id} as ") for line in problems
    ), message
