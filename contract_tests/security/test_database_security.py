"""Tenant isolation and the other promises of the database (docs/platform.md "Database").

Each test covers one way row level security fails silently (DESIGN.md section
7) and fails when that defect is present. Fixtures come from the suite's
plugin: ``superuser_db``, ``owner_db`` and ``app_db`` are function-scoped
psycopg connections (autocommit off) as the superuser, ``atendeai_owner`` and
``atendeai_app`` to a fully migrated database. Every test makes its own
clinics with fresh ids (``make_tenant``) and deletes them afterwards, so no
test depends on another or on what is already in the database.
"""

from __future__ import annotations

import collections
import ipaddress
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources

import bcrypt
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from system_under_test.migrate import MigrationError, apply_migrations
from system_under_test.seed import PLATFORM_CLINIC_SLUG, seed_platform_admin

APP_ROLE = "atendeai_app"
TABLES = ("audit_logs", "clinics", "sessions", "users")
# The column that names a row's clinic.
TENANT_COLUMN = {
    "clinics": "id",
    "users": "clinic_id",
    "sessions": "clinic_id",
    "audit_logs": "clinic_id",
}
USER_COLUMNS = (
    "id", "clinic_id", "name", "email", "password_hash", "role", "status",
    "last_login", "created_at", "updated_at",
)  # fmt: skip


@dataclass(frozen=True)
class Tenant:
    clinic_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    session_id: uuid.UUID

    @property
    def slug(self) -> str:
        return f"db-{self.clinic_id.hex}"


def set_context(conn, clinic_id, user_id=None, ip=None, user_agent=None, request_id=None):
    conn.execute(
        "select atendeai.set_request_context(%s, %s, %s, %s, %s)",
        [clinic_id, user_id, ip, user_agent, request_id],
    )


def dsn_of(conn: psycopg.Connection) -> str:
    """The DSN a fixture connection was opened with, password included."""
    params = conn.info.get_parameters()
    if conn.pgconn.password:
        params["password"] = conn.pgconn.password.decode()
    return make_conninfo(**params)


@pytest.fixture
def make_tenant(superuser_db, owner_db, app_db):
    """Factory: a committed clinic with one user and one session, fresh ids every call.

    Asks for owner_db and app_db only to end their transactions before the
    cleanup, which would otherwise wait for their row locks.
    """
    created: list[uuid.UUID] = []

    def make(role: str = "admin", email: str | None = None) -> Tenant:
        email = email or f"user-{uuid.uuid4()}@tenant.test"
        tenant = Tenant(uuid.uuid4(), uuid.uuid4(), email, uuid.uuid4())
        set_context(superuser_db, tenant.clinic_id, tenant.user_id)
        superuser_db.execute(
            "insert into atendeai.clinics (id, slug, name) values (%s, %s, %s)",
            [tenant.clinic_id, tenant.slug, f"Clinic {tenant.clinic_id}"],
        )
        superuser_db.execute(
            "insert into atendeai.users (id, clinic_id, name, email, password_hash, role)"
            " values (%s, %s, 'Original Name', %s, %s, %s)",
            [tenant.user_id, tenant.clinic_id, tenant.email, "$2b$04$not.a.real.hash", role],
        )
        superuser_db.execute(
            "insert into atendeai.sessions (id, clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, %s, %s, %s, %s, %s,"
            " now() + interval '1 hour')",
            [
                tenant.session_id,
                tenant.clinic_id,
                tenant.user_id,
                uuid.uuid4(),
                uuid.uuid4().hex,
                uuid.uuid4().hex,
            ],
        )
        superuser_db.commit()
        created.append(tenant.clinic_id)
        return tenant

    yield make
    for conn in (app_db, owner_db, superuser_db):
        if not conn.closed:
            conn.rollback()
    superuser_db.execute("set local lock_timeout = '10s'")
    # Users, sessions and audit rows go with their clinic (ON DELETE CASCADE).
    superuser_db.execute("delete from atendeai.clinics where id = any(%s)", [created])
    superuser_db.commit()


def count_rows(conn, table: str) -> int:
    return conn.execute(f"select count(*) from atendeai.{table}").fetchone()[0]


# --- the server and the roles -------------------------------------------------


def test_server_has_the_pg15_rls_fixes(superuser_db):
    # CVE-2023-2455 and CVE-2024-10976 (RLS policies applied to the wrong role
    # after a role change) are fixed from 15.3 and 15.9 on.
    version = int(superuser_db.execute("show server_version_num").fetchone()[0])
    assert version >= 150009, f"PostgreSQL {version} lacks RLS security fixes; need >= 150009"


def test_service_role_has_no_privileged_attributes(app_db):
    assert app_db.execute("select current_user").fetchone()[0] == APP_ROLE
    row = app_db.execute(
        "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolinherit"
        " from pg_roles where rolname = current_user"
    ).fetchone()
    assert row == (False, False, False, False, False, False), (
        "atendeai_app must be NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB "
        f"NOREPLICATION NOINHERIT; (super, bypassrls, createrole, createdb, repl, inherit) = {row}"
    )


def test_service_role_is_a_member_of_no_role(superuser_db):
    # A membership is a SET ROLE path to that role's rights (DESIGN.md 7.1).
    memberships = superuser_db.execute(
        "select m.roleid::regrole::text from pg_auth_members m where m.member = %s::regrole",
        [APP_ROLE],
    ).fetchall()
    assert memberships == []


def test_service_role_owns_nothing_in_the_schema(superuser_db):
    # An owner is exempt from non-forced RLS and can change policies (DESIGN.md 7.2).
    owned = superuser_db.execute(
        """
        select 'schema ' || nspname from pg_namespace
         where nspname = 'atendeai' and nspowner = %(role)s::regrole
        union all
        select 'relation ' || relname from pg_class
         where relnamespace = 'atendeai'::regnamespace and relowner = %(role)s::regrole
        union all
        select 'function ' || proname from pg_proc
         where pronamespace = 'atendeai'::regnamespace and proowner = %(role)s::regrole
        union all
        select 'type ' || typname from pg_type
         where typnamespace = 'atendeai'::regnamespace and typowner = %(role)s::regrole
        """,
        {"role": APP_ROLE},
    ).fetchall()
    assert owned == []


def test_tables_belong_to_the_owner_and_the_definer_owns_only_the_lookups(superuser_db):
    table_owners = dict(
        superuser_db.execute(
            "select relname, relowner::regrole::text from pg_class"
            " where relnamespace = 'atendeai'::regnamespace and relkind in ('r', 'p')"
        ).fetchall()
    )
    assert table_owners == dict.fromkeys(TABLES, "atendeai_owner")
    definer_owns = superuser_db.execute(
        "select proname from pg_proc where proowner = 'atendeai_definer'::regrole"
        " union all select relname from pg_class where relowner = 'atendeai_definer'::regrole"
    ).fetchall()
    assert sorted(name for (name,) in definer_owns) == [
        "business_counts",  # atendeai_monitoring, aggregate counts only (0005)
        "find_user_for_login",
        "platform_list_clinics",
    ]


# --- row level security: catalog ------------------------------------------------


def test_every_table_has_rls_enabled_and_forced(superuser_db):
    rows = superuser_db.execute(
        "select relname, relrowsecurity, relforcerowsecurity from pg_class"
        " where relnamespace = 'atendeai'::regnamespace and relkind in ('r', 'p')"
        " order by relname"
    ).fetchall()
    assert [name for name, _, _ in rows] == list(TABLES)
    assert [name for name, enabled, _ in rows if not enabled] == [], "RLS not enabled"
    assert [name for name, _, forced in rows if not forced] == [], "RLS not forced"


def test_every_table_has_exactly_the_two_tenant_policies(superuser_db):
    rows = superuser_db.execute(
        "select tablename, policyname, permissive, roles::text[], cmd, qual, with_check"
        " from pg_policies where schemaname = 'atendeai'"
    ).fetchall()
    policies = collections.defaultdict(dict)
    for table, name, permissive, roles, cmd, qual, with_check in rows:
        policies[table][name] = (permissive, roles, cmd, qual, with_check)
    for table in TABLES:
        predicate = f"({TENANT_COLUMN[table]} = atendeai.current_clinic_id())"
        assert policies[table] == {
            "tenant_isolation": ("PERMISSIVE", ["public"], "ALL", predicate, predicate),
            "tenant_guard": ("RESTRICTIVE", ["public"], "ALL", predicate, predicate),
        }, table


def test_current_clinic_id_is_inlined_into_the_policies(app_db, make_tenant):
    # Inlined, "clinic_id = <setting>" is an index condition; a function call
    # evaluated per row would turn every tenant query into a scan.
    tenant = make_tenant()
    set_context(app_db, tenant.clinic_id)
    plan = "\n".join(
        line
        for (line,) in app_db.execute(
            "explain (costs off) select id from atendeai.users where email = 'x'"
        )
    )
    assert "current_clinic_id" not in plan
    assert "current_setting('atendeai.clinic_id'::text, true)" in plan


# --- row level security: behaviour -----------------------------------------------


def test_fresh_connection_without_context_sees_no_rows(app_db, make_tenant):
    make_tenant()
    setting = app_db.execute("select current_setting('atendeai.clinic_id', true)").fetchone()[0]
    assert setting is None, "precondition: a fresh connection has no atendeai.clinic_id at all"
    assert {table: count_rows(app_db, table) for table in TABLES} == dict.fromkeys(TABLES, 0)


def test_reused_connection_without_context_sees_no_rows(app_db, make_tenant):
    tenant = make_tenant()
    set_context(app_db, tenant.clinic_id)
    assert count_rows(app_db, "users") == 1
    app_db.commit()
    # The setting now exists with value '' (not NULL): it must still mean "no tenant".
    setting = app_db.execute("select current_setting('atendeai.clinic_id', true)").fetchone()[0]
    assert setting == ""
    assert {table: count_rows(app_db, table) for table in TABLES} == dict.fromkeys(TABLES, 0)


def test_owner_is_subject_to_rls_too(owner_db, make_tenant):
    tenant = make_tenant()
    assert {table: count_rows(owner_db, table) for table in TABLES} == dict.fromkeys(TABLES, 0)
    set_context(owner_db, tenant.clinic_id)
    assert count_rows(owner_db, "clinics") == 1


def test_context_shows_only_its_own_clinic(app_db, make_tenant):
    a, b = make_tenant(), make_tenant()
    set_context(app_db, a.clinic_id)
    for table, column in TENANT_COLUMN.items():
        seen = app_db.execute(
            f"select distinct {column} from atendeai.{table} where {column} = any(%s)",
            [[a.clinic_id, b.clinic_id]],
        ).fetchall()
        assert seen == [(a.clinic_id,)], table
    users = app_db.execute(
        "select id from atendeai.users where id = any(%s)", [[a.user_id, b.user_id]]
    ).fetchall()
    assert users == [(a.user_id,)]


def test_cross_tenant_update_and_delete_change_nothing(app_db, superuser_db, make_tenant):
    a, b = make_tenant(), make_tenant()
    set_context(app_db, a.clinic_id, a.user_id)
    statements = [
        ("update atendeai.clinics set name = 'hijacked' where id = %s", b.clinic_id),
        ("update atendeai.users set name = 'hijacked' where id = %s", b.user_id),
        ("update atendeai.sessions set revoked_at = now() where id = %s", b.session_id),
        ("delete from atendeai.sessions where id = %s", b.session_id),
        ("delete from atendeai.users where id = %s", b.user_id),
    ]
    for statement, target in statements:
        assert app_db.execute(statement, [target]).rowcount == 0, statement
    app_db.commit()

    assert superuser_db.execute(
        "select c.name, u.name, s.revoked_at from atendeai.clinics c"
        " join atendeai.users u on u.clinic_id = c.id"
        " join atendeai.sessions s on s.user_id = u.id"
        " where c.id = %s and u.id = %s and s.id = %s",
        [b.clinic_id, b.user_id, b.session_id],
    ).fetchall() == [(f"Clinic {b.clinic_id}", "Original Name", None)]


@pytest.mark.parametrize("table", TABLES)
def test_insert_into_another_clinic_is_refused(app_db, make_tenant, table):
    a, b = make_tenant(), make_tenant()
    inserts = {
        "clinics": ("insert into atendeai.clinics (id, name) values (%s, 'Other')", [b.clinic_id]),
        "users": (
            "insert into atendeai.users (clinic_id, name, email, password_hash, role)"
            " values (%s, 'Intruder', %s, 'x', 'admin')",
            [b.clinic_id, f"intruder-{uuid.uuid4()}@tenant.test"],
        ),
        "sessions": (
            "insert into atendeai.sessions (clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, %s, gen_random_uuid(), 't', %s, now())",
            [b.clinic_id, b.user_id, uuid.uuid4().hex],
        ),
        "audit_logs": (
            "insert into atendeai.audit_logs (clinic_id, action) values (%s, 'forged')",
            [b.clinic_id],
        ),
    }
    statement, params = inserts[table]
    if table == "clinics":
        params = [uuid.uuid4()]  # a brand-new clinic that is not the context's
    set_context(app_db, a.clinic_id, a.user_id)
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_db.execute(statement, params)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("users", "clinic_id = %(other)s where id = %(user)s"),
        ("sessions", "clinic_id = %(other)s where id = %(session)s"),
        ("clinics", "id = %(other)s where id = %(own)s"),
    ],
)
def test_moving_a_row_to_another_clinic_is_refused(app_db, make_tenant, table, change):
    a, b = make_tenant(), make_tenant()
    set_context(app_db, a.clinic_id, a.user_id)
    ids = {"own": a.clinic_id, "other": b.clinic_id, "user": a.user_id, "session": a.session_id}
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        app_db.execute(f"update atendeai.{table} set {change}", ids)


def test_context_does_not_outlive_its_transaction(app_db, make_tenant):
    tenant = make_tenant()
    for end in (app_db.commit, app_db.rollback):
        set_context(app_db, tenant.clinic_id, tenant.user_id)
        assert (
            app_db.execute("select atendeai.current_clinic_id()").fetchone()[0] == tenant.clinic_id
        )
        end()
        assert app_db.execute(
            "select atendeai.current_clinic_id(), current_setting('atendeai.user_id', true)"
        ).fetchone() == (None, "")
        assert count_rows(app_db, "users") == 0
        app_db.rollback()


def test_session_cannot_reference_a_user_of_another_clinic(superuser_db, make_tenant):
    # FK checks run without RLS: only clinic_id inside the FK keeps them in the tenant.
    a, b = make_tenant(), make_tenant()
    with pytest.raises(errors.ForeignKeyViolation):
        superuser_db.execute(
            "insert into atendeai.sessions (clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, %s, gen_random_uuid(), 't', %s, now())",
            [a.clinic_id, b.user_id, uuid.uuid4().hex],
        )


# --- grants and functions -------------------------------------------------------


def test_service_role_grants_are_exactly_the_contract(superuser_db):
    granted = collections.defaultdict(set)
    for table, privilege in superuser_db.execute(
        "select table_name, privilege_type from information_schema.table_privileges"
        " where grantee = %s and table_schema = 'atendeai'",
        [APP_ROLE],
    ):
        granted[table].add(privilege)
    assert dict(granted) == {
        "clinics": {"SELECT", "INSERT", "UPDATE"},
        "users": {"INSERT", "UPDATE", "DELETE"},  # SELECT is granted per column
        "sessions": {"SELECT", "INSERT", "UPDATE", "DELETE"},
        "audit_logs": {"SELECT", "INSERT"},
    }
    readable = {
        column
        for column in USER_COLUMNS
        if superuser_db.execute(
            "select has_column_privilege(%s, 'atendeai.users', %s, 'SELECT')", [APP_ROLE, column]
        ).fetchone()[0]
    }
    assert readable == set(USER_COLUMNS) - {"password_hash"}


def test_service_role_cannot_read_password_hash(app_db, make_tenant):
    tenant = make_tenant()
    set_context(app_db, tenant.clinic_id, tenant.user_id)
    with pytest.raises(errors.InsufficientPrivilege):
        app_db.execute("select password_hash from atendeai.users where id = %s", [tenant.user_id])
    app_db.rollback()
    # ... but it may set one (password change).
    set_context(app_db, tenant.clinic_id, tenant.user_id)
    changed = app_db.execute(
        "update atendeai.users set password_hash = '$2b$04$another' where id = %s", [tenant.user_id]
    )
    assert changed.rowcount == 1


def test_functions_are_executable_only_as_the_contract_says(superuser_db):
    rows = superuser_db.execute(
        "select proname, proacl is null"
        " or exists (select 1 from aclexplode(proacl) a where a.grantee = 0),"
        " has_function_privilege(%s, oid, 'EXECUTE')"
        " from pg_proc where pronamespace = 'atendeai'::regnamespace",
        [APP_ROLE],
    ).fetchall()
    assert [name for name, by_public, _ in rows if by_public] == [], "executable by PUBLIC"
    assert {name for name, _, by_app in rows if by_app} == {
        "current_clinic_id",
        "set_request_context",
        "find_user_for_login",
        "platform_list_clinics",
    }


def test_security_definer_functions_pin_search_path(superuser_db):
    rows = superuser_db.execute(
        "select proname, proowner::regrole::text, proconfig from pg_proc"
        " where pronamespace = 'atendeai'::regnamespace and prosecdef order by proname"
    ).fetchall()
    assert rows == [
        ("find_user_for_login", "atendeai_definer", ["search_path=pg_catalog, pg_temp"]),
        ("platform_list_clinics", "atendeai_definer", ["search_path=pg_catalog, pg_temp"]),
    ]


def test_find_user_for_login_works_for_the_service_role(app_db, make_tenant):
    tenant = make_tenant(role="manager")
    found = app_db.execute(
        "select id, clinic_id, email, name, password_hash, role, status, clinic_status"
        " from atendeai.find_user_for_login(%s, %s)",
        [tenant.slug.upper(), tenant.email.upper()],  # both compare case-insensitively
    ).fetchall()
    assert found == [
        (
            tenant.user_id,
            tenant.clinic_id,
            tenant.email,
            "Original Name",
            "$2b$04$not.a.real.hash",
            "manager",
            "active",
            "active",
        )
    ]
    unknown = f"nobody-{uuid.uuid4()}@tenant.test"
    lookup = "select * from atendeai.find_user_for_login(%s, %s)"
    assert app_db.execute(lookup, [tenant.slug, unknown]).fetchall() == []
    assert app_db.execute(lookup, ["no-such-clinic", tenant.email]).fetchall() == []


def test_one_email_may_have_an_account_in_each_clinic_and_login_names_the_clinic(
    app_db, superuser_db, make_tenant
):
    email = f"shared-{uuid.uuid4()}@tenant.test"
    first, second = make_tenant(email=email), make_tenant(role="staff", email=email.upper())
    lookup = "select id, clinic_id from atendeai.find_user_for_login(%s, %s)"
    assert app_db.execute(lookup, [first.slug, email]).fetchall() == [
        (first.user_id, first.clinic_id)
    ]
    assert app_db.execute(lookup, [second.slug, email]).fetchall() == [
        (second.user_id, second.clinic_id)
    ]
    # Within one clinic the address is still unique, whatever its case.
    set_context(superuser_db, first.clinic_id)
    with pytest.raises(errors.UniqueViolation, match="users_clinic_id_email_lower_key"):
        superuser_db.execute(
            "insert into atendeai.users (clinic_id, name, email, password_hash, role)"
            " values (%s, 'Twin', %s, 'x', 'staff')",
            [first.clinic_id, email.title()],
        )
    superuser_db.rollback()


def test_clinic_slugs_are_unique_and_url_safe(superuser_db, make_tenant):
    tenant = make_tenant()
    for slug, error in (
        (tenant.slug, errors.UniqueViolation),
        ("Upper-Case", errors.CheckViolation),
        ("two--dashes", errors.CheckViolation),
        ("-leading", errors.CheckViolation),
        ("x" * 64, errors.CheckViolation),
    ):
        clinic_id = uuid.uuid4()
        set_context(superuser_db, clinic_id)
        with pytest.raises(error):
            superuser_db.execute(
                "insert into atendeai.clinics (id, slug, name) values (%s, %s, 'Slug test')",
                [clinic_id, slug],
            )
        superuser_db.rollback()


def test_platform_list_clinics_needs_a_platform_admin_context(app_db, superuser_db, make_tenant):
    clinic, platform = make_tenant(role="admin"), make_tenant(role="platform_admin")
    set_context(app_db, clinic.clinic_id, clinic.user_id)
    with pytest.raises(errors.InsufficientPrivilege, match="platform_admin"):
        app_db.execute("select * from atendeai.platform_list_clinics(10, 0)")
    app_db.rollback()

    total = superuser_db.execute("select count(*) from atendeai.clinics").fetchone()[0]
    set_context(app_db, platform.clinic_id, platform.user_id)
    listed = app_db.execute(
        "select id from atendeai.platform_list_clinics(1000, %s)", [max(total - 100, 0)]
    ).fetchall()
    assert {(clinic.clinic_id,), (platform.clinic_id,)} <= set(listed)
    limited = app_db.execute("select id from atendeai.platform_list_clinics(1, 0)").fetchall()
    assert len(limited) == 1


# --- audit trail ----------------------------------------------------------------


def test_audit_trigger_records_the_context_and_never_the_password_hash(
    app_db, superuser_db, make_tenant
):
    tenant = make_tenant()
    new_user, new_clinic = uuid.uuid4(), uuid.uuid4()
    secret = f"$2b$04$SECRET{uuid.uuid4().hex}"
    request_id = f"req-{uuid.uuid4()}"
    context = {"ip": "203.0.113.7", "user_agent": "contract-tests/1.0", "request_id": request_id}

    set_context(app_db, tenant.clinic_id, tenant.user_id, **context)
    app_db.execute(
        "insert into atendeai.users (id, clinic_id, name, email, password_hash, role)"
        " values (%s, %s, 'New Person', %s, %s, 'staff')",
        [new_user, tenant.clinic_id, f"new-{new_user}@tenant.test", secret],
    )
    app_db.execute("update atendeai.users set name = 'Renamed' where id = %s", [new_user])
    app_db.execute(
        "update atendeai.users set password_hash = %s where id = %s", [secret + "2", new_user]
    )
    app_db.execute("update atendeai.users set last_login = now() where id = %s", [new_user])
    app_db.execute(
        "update atendeai.clinics set name = 'Renamed Clinic' where id = %s", [tenant.clinic_id]
    )
    app_db.execute("delete from atendeai.users where id = %s", [new_user])
    app_db.commit()
    # A new clinic is written under its own id as the context.
    set_context(app_db, new_clinic, tenant.user_id, **context)
    app_db.execute("insert into atendeai.clinics (id, name) values (%s, 'Brand New')", [new_clinic])
    app_db.commit()

    try:
        rows = superuser_db.execute(
            "select clinic_id, user_id, action, table_name, record_id, old_values, new_values,"
            " ip_address, user_agent, request_id, row_to_json(a)::text"
            " from atendeai.audit_logs a where request_id = %s",
            [request_id],
        ).fetchall()
        actions = collections.Counter(
            (table, action, record) for _, _, action, table, record, *_ in rows
        )
        assert actions == collections.Counter(
            {
                ("users", "insert", str(new_user)): 1,
                ("users", "update", str(new_user)): 2,  # name, password; not last_login
                ("users", "delete", str(new_user)): 1,
                ("clinics", "update", str(tenant.clinic_id)): 1,
                ("clinics", "insert", str(new_clinic)): 1,
            }
        )
        for clinic_id, user_id, action, table, record, old, new, ip, agent, _, text in rows:
            expected_clinic = new_clinic if record == str(new_clinic) else tenant.clinic_id
            assert clinic_id == expected_clinic, (table, action)
            assert user_id == tenant.user_id
            assert ip == ipaddress.ip_address("203.0.113.7")
            assert agent == "contract-tests/1.0"
            assert "password_hash" not in (old or {}) and "password_hash" not in (new or {})
            assert "SECRET" not in text
            assert (old is None) == (action == "insert") and (new is None) == (action == "delete")
        renamed = [
            (o["name"], n["name"])
            for _, _, a, t, _, o, n, *_ in rows
            if t == "users" and a == "update"
        ]
        assert ("New Person", "Renamed") in renamed
    finally:
        superuser_db.rollback()
        superuser_db.execute("delete from atendeai.clinics where id = %s", [new_clinic])
        superuser_db.commit()


# --- migrations and seed --------------------------------------------------------


def test_migrations_are_idempotent(owner_db):
    assert apply_migrations(dsn_of(owner_db)) == []


def test_changed_applied_migration_is_detected(superuser_db, owner_db):
    (original,) = superuser_db.execute(
        "select checksum from atendeai_meta.schema_migrations where version = '0001'"
    ).fetchone()
    superuser_db.execute(
        "update atendeai_meta.schema_migrations set checksum = %s where version = '0001'",
        ["0" * 64],
    )
    superuser_db.commit()
    try:
        with pytest.raises(MigrationError, match=r"0001_schema\.sql: changed after it was applied"):
            apply_migrations(dsn_of(owner_db))
    finally:
        superuser_db.execute(
            "update atendeai_meta.schema_migrations set checksum = %s where version = '0001'",
            [original],
        )
        superuser_db.commit()
    assert apply_migrations(dsn_of(owner_db)) == []


def test_failing_migration_is_named_and_rolled_back(superuser_db, owner_db, tmp_path):
    for entry in (resources.files("system_under_test") / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            with resources.as_file(entry) as path:
                shutil.copy(path, tmp_path / entry.name)
    (tmp_path / "9999_broken.sql").write_text(
        "create table atendeai.scratch_9999 (id int);\nselect * from atendeai.no_such_table;\n"
    )
    with pytest.raises(MigrationError) as failure:
        apply_migrations(dsn_of(owner_db), directory=tmp_path)
    message = str(failure.value)
    assert message.startswith("9999_broken.sql: line 2:"), message
    assert "42P01" in message and "no_such_table" in message
    assert superuser_db.execute(
        "select to_regclass('atendeai.scratch_9999') is null,"
        " not exists (select 1 from atendeai_meta.schema_migrations where version = '9999')"
    ).fetchone() == (True, True)


def test_seed_platform_admin_is_idempotent(owner_db, superuser_db):
    email = f"platform-{uuid.uuid4()}@atendeai.test"
    dsn = dsn_of(owner_db)
    first = seed_platform_admin(dsn, email, "first password", bcrypt_rounds=4)
    try:
        second = seed_platform_admin(dsn, email.upper(), "second password", bcrypt_rounds=4)
        assert second == first
        row = owner_db.execute(
            "select clinic_id, role, password_hash from atendeai.find_user_for_login(%s, %s)",
            [PLATFORM_CLINIC_SLUG, email],
        ).fetchone()
        assert (str(row[0]), row[1]) == (first[0], "platform_admin")
        assert bcrypt.checkpw(b"second password", row[2].encode())
        set_context(owner_db, first[0])
        assert owner_db.execute("select name from atendeai.clinics").fetchall() == [
            ("AtendeAI Platform",)
        ]
    finally:
        owner_db.rollback()
        superuser_db.execute("delete from atendeai.users where id = %s", [first[1]])
        superuser_db.commit()
