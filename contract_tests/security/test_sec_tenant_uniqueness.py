"""An e-mail address is unique within its clinic, and no unique constraint is a
cross-tenant existence oracle (docs/security-catalogue.md, "Uniqueness oracle").

- the check, built from the OpenAPI documents and the database's unique
  indexes, against the platform: a value used in another clinic answers like
  a fresh one;
- its proof: the same check against the platform with a platform-wide unique
  constraint on e-mail addresses turns red;
- migration 0006 on data written by the versions before it: slugs made from
  the names, the e-mail index per clinic, the login lookup by slug.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.security import SecurityCheckFailed
from harness.security.pytest_plugin import Tally
from harness.security.scratch import ScratchCluster
from harness.security.uniqueness import check_no_uniqueness_oracle, oracle_probes, unique_columns
from harness.stack import Stack
from harness.tenants import Tenant
from system_under_test.migrate import apply_migrations

#: Addresses of this domain fall under the proof's platform-wide unique index.
PROOF_DOMAIN = "oracle-proof.example"


def _superuser_dsn(stack: Stack) -> str:
    if not stack.postgres.superuser_dsn:
        pytest.skip("this stack gives no superuser DSN: the catalog cannot be read")
    return stack.postgres.superuser_dsn


def test_no_write_is_a_cross_tenant_uniqueness_oracle(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
    security_tally: Tally,
) -> None:
    dsn = _superuser_dsn(stack)
    probes = oracle_probes(openapi_docs, unique_columns(dsn))
    # The discovery itself must find the one write that stores a unique value.
    assert "POST /users email (users.email, index users_clinic_id_email_lower_key)" in [
        p.describe() for p in probes
    ], [p.describe() for p in probes]
    attacker, victim = tenant_factory(), tenant_factory()
    lines = check_no_uniqueness_oracle(probes, docs=openapi_docs, attacker=attacker, victim=victim)
    probed = [line for line in lines if "another clinic's" in line]
    assert any(line.startswith("POST /users email") for line in probed), lines
    security_tally.add("uniqueness oracle probes", len(probed), "; ".join(lines))


def test_an_email_used_in_another_clinic_can_be_registered_and_signs_in_there(
    tenant_factory: Callable[..., Tenant],
) -> None:
    first, second = tenant_factory(), tenant_factory()
    email = f"same-person-{uuid.uuid4().hex[:8]}@clinic.example"
    accounts = [(first, "First-Clinic-1"), (second, "Second-Clinic-1")]
    for tenant, password in accounts:
        body = {"name": "Same Person", "email": email, "password": password, "role": "staff"}
        created = tenant.client("users", "admin").post("/users", json=body)
        assert created.status_code == 201, created.text
    auth = second.client("auth")
    for tenant, password in accounts:
        body = {"clinic_slug": tenant.clinic_slug, "email": email, "password": password}
        signed_in = auth.post("/auth/login", json=body)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["user"]["clinic_id"] == str(tenant.clinic_id)
    # One clinic's password does not open the other clinic's account.
    crossed = auth.post(
        "/auth/login",
        json={"clinic_slug": first.clinic_slug, "email": email, "password": accounts[1][1]},
    )
    assert crossed.status_code == 401


def test_proof_a_platform_wide_unique_email_is_caught(
    stack: Stack,
    openapi_docs: dict[str, dict[str, Any]],
    tenant_factory: Callable[..., Tenant],
) -> None:
    """The defect: e-mail addresses unique across clinics (here for one domain, so
    the index can be built whatever the shared database already holds)."""
    dsn = _superuser_dsn(stack)
    attacker, victim = tenant_factory(), tenant_factory()
    index = f"proof_platform_wide_email_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"create unique index {index} on atendeai.users (lower(email))"
            f" where email like '%%@{PROOF_DOMAIN}'"
        )
        try:
            probes = oracle_probes(openapi_docs, unique_columns(dsn))
            assert any(p.target.index == index for p in probes)
            with pytest.raises(SecurityCheckFailed, match="existence oracle") as caught:
                check_no_uniqueness_oracle(
                    probes,
                    docs=openapi_docs,
                    attacker=attacker,
                    victim=victim,
                    domain=PROOF_DOMAIN,
                )
            assert "POST /users email" in str(caught.value)
            assert "another clinic's 409" in str(caught.value)
        finally:
            conn.execute(f"drop index if exists atendeai.{index}")


def test_migration_0006_gives_existing_clinics_slugs_and_scopes_emails(
    scratch_cluster: ScratchCluster, tmp_path: Path
) -> None:
    database = scratch_cluster.empty_database("upgrade")
    before = tmp_path / "migrations-0005"
    before.mkdir()
    packaged = resources.files("system_under_test") / "migrations"
    for entry in packaged.iterdir():
        if entry.name.endswith(".sql") and entry.name < "0006":
            with resources.as_file(entry) as source:
                shutil.copy(source, before / entry.name)
    assert apply_migrations(database.owner_dsn, directory=before)[-1] == "0005"

    clinics = {
        "first": (uuid.uuid4(), "Clínica São José"),
        "twin": (uuid.uuid4(), "Clinica  Sao Jose!"),
        "symbols": (uuid.uuid4(), "¡¿!"),
        "platform": (uuid.UUID(int=1), "AtendeAI Platform"),
    }
    with psycopg.connect(database.superuser_dsn, autocommit=True) as conn:
        for number, (clinic_id, name) in enumerate(clinics.values()):
            conn.execute(
                "insert into atendeai.clinics (id, name, created_at)"
                " values (%s, %s, now() + %s * interval '1 second')",
                [clinic_id, name, number],
            )
            conn.execute(
                "insert into atendeai.users (clinic_id, name, email, password_hash, role)"
                " values (%s, 'Ana', %s, 'x', 'admin')",
                [clinic_id, f"ana-{number}@clinic.example"],
            )

    assert apply_migrations(database.owner_dsn) == ["0006"]

    with psycopg.connect(database.superuser_dsn, autocommit=True) as conn:
        slugs = dict(conn.execute("select id, slug from atendeai.clinics").fetchall())
        audited = conn.execute(
            "select clinic_id, new_values ->> 'slug' from atendeai.audit_logs"
            " where table_name = 'clinics' and action = 'update'"
        ).fetchall()
        twin_id = clinics["twin"][0]
        assert slugs == {
            clinics["first"][0]: "clinica-sao-jose",
            twin_id: f"clinica-sao-jose-{twin_id.hex[:8]}",
            clinics["symbols"][0]: "clinic",
            clinics["platform"][0]: "atendeai-platform",
        }
        assert sorted(audited) == sorted(slugs.items()), "each slug is in its clinic's trail"
        # The first clinic's address may now have an account in the twin clinic too.
        conn.execute(
            "insert into atendeai.users (clinic_id, name, email, password_hash, role)"
            " values (%s, 'Ana', 'ANA-0@clinic.example', 'x', 'staff')",
            [twin_id],
        )
        found = conn.execute(
            "select clinic_id, role from atendeai.find_user_for_login(%s, %s)",
            [f"clinica-sao-jose-{twin_id.hex[:8]}", "ana-0@clinic.example"],
        ).fetchall()
        assert found == [(twin_id, "staff")]
        forced = conn.execute(
            "select relforcerowsecurity from pg_class where oid = 'atendeai.clinics'::regclass"
        ).fetchone()
        assert forced == (True,), "the backfill must put FORCE ROW LEVEL SECURITY back"
