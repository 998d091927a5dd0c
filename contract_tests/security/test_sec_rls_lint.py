"""The RLS lint (``harness.security.rls_lint``): clean on the stack, and red for every
defect of DESIGN.md section 7 injected into a scratch cluster.

Database-level defects go into a fresh scratch database each; role-level
defects (roles are cluster-wide) go into the scratch cluster's roles and are
undone with the platform's own ``bootstrap`` afterwards.

The lint must also be right on schemas it has never seen: a foreign-style
schema (``foreign_tenant_schema.sql``: tenant_id, app.current_tenant, an
application role owning nothing) passes it, and problems planted into copies
of it are found.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from harness.cli import main as atendeai
from harness.security.rls_lint import (
    ERROR,
    NOTE,
    Conventions,
    LintError,
    LintReport,
    add_parser,
    build_parser,
    lint_database,
    main,
    server_version_findings,
)
from harness.security.scratch import ScratchCluster, ScratchDatabase
from harness.stack import Stack

FOREIGN_SCHEMA = Path(__file__).with_name("foreign_tenant_schema.sql")
FOREIGN_OPTIONS = ["--schema", "public", "--app-role", "tenant_app", "--tenant-column", "tenant_id"]
FOREIGN = {"schema": "public", "app_role": "tenant_app"}
FOREIGN_CONVENTIONS = Conventions(tenant_column="tenant_id")


def rewrite_function(signature: str, old: str, new: str) -> str:
    """A statement replacing ``old`` with ``new`` in a function's definition (it must be there)."""

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    return (
        "do $plant$ declare d text := pg_get_functiondef("
        f"{literal(signature)}::regprocedure); begin"
        f" if strpos(d, {literal(old)}) = 0 then"
        f" raise exception 'planting failed: % is not in {signature}', {literal(old)}; end if;"
        f" execute replace(d, {literal(old)}, {literal(new)}); end $plant$"
    )


# --- the real thing ----------------------------------------------------------------


def test_stack_database_passes_the_lint(stack: Stack) -> None:
    # As the service role itself: the lint needs nothing more than to connect.
    report = lint_database(stack.postgres.app_dsn)
    assert report.ok, report.render()
    assert set(report.tables) == {"audit_logs", "clinics", "sessions", "users"}
    # What the tenant checks went by, detected from the policies and foreign keys.
    assert (report.tenant_root, report.tenant_settings) == ("clinics", ("atendeai.clinic_id",))
    # The two SECURITY DEFINER lookups are reported for review, not as errors.
    executable = {f.object.split("(")[0] for f in report.by_check("definer_executable")}
    assert executable == {
        "function atendeai.find_user_for_login",
        "function atendeai.platform_list_clinics",
    }
    # The refresh-token digest is unique across clinics: a note (unguessable), not an error.
    assert [f.object for f in report.notes if f.check == "unique_without_tenant"] == [
        "unique index sessions_refresh_token_hash_key on atendeai.sessions"
    ]


def test_lint_command_exits_zero_on_the_stack(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dsn", stack.postgres.superuser_dsn, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["errors"] == 0
    assert stack.postgres.superuser_dsn not in json.dumps(report), "the password must not leak"


# --- proofs: each defect turns the lint red, naming the object and the fix ----------

# name -> (statements run as the superuser in a fresh database, check, object, fix fragment)
DATABASE_DEFECTS: dict[str, tuple[list[str], str, str, str]] = {
    "RLS disabled": (
        ["alter table atendeai.sessions disable row level security"],
        "rls_enabled",
        "table atendeai.sessions",
        "ENABLE ROW LEVEL SECURITY",
    ),
    "RLS not forced": (
        ["alter table atendeai.users no force row level security"],
        "rls_forced",
        "table atendeai.users",
        "FORCE ROW LEVEL SECURITY",
    ),
    "only permissive policies": (
        ["drop policy tenant_guard on atendeai.audit_logs"],
        "policy_not_restrictive",
        "table atendeai.audit_logs",
        "AS RESTRICTIVE",
    ),
    "INSERT policy without WITH CHECK": (
        ["create policy sessions_insert on atendeai.sessions as restrictive for insert"],
        "policy_without_check",
        "policy sessions_insert on atendeai.sessions",
        "WITH CHECK (clinic_id = <tenant context>)",
    ),
    "stray USING (true)": (
        ["create policy stray on atendeai.clinics as permissive for select using (true)"],
        "policy_always_true",
        "policy stray on atendeai.clinics",
        "DROP POLICY stray",
    ),
    "WITH CHECK (1 = 1)": (
        ["alter policy tenant_isolation on atendeai.users with check (1 = 1)"],
        "policy_always_true",
        "policy tenant_isolation on atendeai.users",
        "DROP POLICY",
    ),
    "policy not scoped to the tenant": (
        [
            "create policy by_status on atendeai.users as permissive for select"
            " using (status = 'active')"
        ],
        "policy_not_tenant",
        "policy by_status on atendeai.users",
        "tenant context",
    ),
    "SECURITY DEFINER without search_path": (
        [
            "create function atendeai.count_users(p uuid) returns bigint language sql"
            " security definer as $$ select count(*) from atendeai.users where clinic_id = p $$",
            "revoke all on function atendeai.count_users(uuid) from public",
        ],
        "definer_search_path",
        "function atendeai.count_users(uuid)",
        "SET search_path = pg_catalog, pg_temp",
    ),
    "SECURITY DEFINER with public in its search_path": (
        [
            "alter function atendeai.platform_list_clinics(integer, integer)"
            " set search_path = public, pg_catalog"
        ],
        "definer_search_path",
        "function atendeai.platform_list_clinics(integer,integer)",
        "SET search_path = pg_catalog, pg_temp",
    ),
    "SECURITY DEFINER executable by PUBLIC": (
        ["grant execute on function atendeai.platform_list_clinics(integer, integer) to public"],
        "definer_public",
        "function atendeai.platform_list_clinics(integer,integer)",
        "FROM PUBLIC",
    ),
    "definer audit trigger": (
        ["alter function atendeai.audit_row_change() security definer"],
        "trigger_definer",
        "function atendeai.audit_row_change() (trigger on atendeai.users)",
        "SECURITY INVOKER",
    ),
    "view running as its owner": (
        [
            "create view atendeai.user_names as select id, name from atendeai.users",
            "grant select on atendeai.user_names to atendeai_app",
        ],
        "view_security_invoker",
        "view atendeai.user_names",
        "security_invoker = true",
    ),
    "materialized view": (
        ["create materialized view atendeai.clinic_ids as select id from atendeai.clinics"],
        "materialized_view",
        "materialized view atendeai.clinic_ids",
        "DROP MATERIALIZED VIEW",
    ),
    "TRUNCATE granted": (
        ["grant truncate on atendeai.audit_logs to atendeai_app"],
        "dangerous_grant",
        "table atendeai.audit_logs",
        "REVOKE TRUNCATE",
    ),
    "REFERENCES granted on a column": (
        ["grant references (id) on atendeai.users to atendeai_app"],
        "dangerous_grant",
        "table atendeai.users",
        "REVOKE REFERENCES",
    ),
    "TRIGGER granted to PUBLIC": (
        ["grant trigger on atendeai.clinics to public"],
        "dangerous_grant",
        "table atendeai.clinics",
        "REVOKE TRIGGER",
    ),
    "FK without clinic_id": (
        [
            "alter table atendeai.sessions drop constraint sessions_user_fkey,"
            " add constraint sessions_user_fkey foreign key (user_id)"
            " references atendeai.users (id)"
        ],
        "fk_without_tenant",
        "foreign key sessions_user_fkey on atendeai.sessions",
        "(clinic_id, ...)",
    ),
    "service role owns a table": (
        ["alter table atendeai.sessions owner to atendeai_app"],
        "role_owns",
        "table atendeai.sessions",
        "OWNER TO",
    ),
    "audit table updatable": (
        ["grant update on atendeai.audit_logs to atendeai_app"],
        "audit_writable",
        "table atendeai.audit_logs",
        "REVOKE UPDATE ON atendeai.audit_logs FROM atendeai_app",
    ),
    "audit table column updatable": (
        ["grant update (action) on atendeai.audit_logs to atendeai_app"],
        "audit_writable",
        "table atendeai.audit_logs",
        "REVOKE UPDATE",
    ),
    "audit table deletable": (
        ["grant delete on atendeai.audit_logs to atendeai_app"],
        "audit_writable",
        "table atendeai.audit_logs",
        "REVOKE DELETE",
    ),
    "audit table truncatable by PUBLIC": (
        ["grant truncate on atendeai.audit_logs to public"],
        "audit_writable",
        "table atendeai.audit_logs",
        "REVOKE TRUNCATE",
    ),
    "audit trigger dropped": (
        ["drop trigger users_audit on atendeai.users"],
        "audit_trigger_missing",
        "table atendeai.users",
        "AFTER INSERT OR UPDATE OR DELETE ON atendeai.users FOR EACH ROW EXECUTE FUNCTION "
        "atendeai.audit_row_change()",
    ),
    "audit trigger disabled": (
        ["alter table atendeai.clinics disable trigger clinics_audit"],
        "audit_trigger_missing",
        "table atendeai.clinics",
        "CREATE TRIGGER clinics_audit",
    ),
    "audit trigger without DELETE": (
        [
            "drop trigger users_audit on atendeai.users",
            "create trigger users_audit after insert or update on atendeai.users"
            " for each row execute function atendeai.audit_row_change()",
        ],
        "audit_trigger_missing",
        "table atendeai.users",
        "AFTER INSERT OR UPDATE OR DELETE",
    ),
    "new tenant table without an audit trigger": (
        [
            "create table atendeai.notes (id uuid primary key default gen_random_uuid(),"
            " clinic_id uuid not null references atendeai.clinics (id), body text)",
            "alter table atendeai.notes enable row level security, force row level security",
            "create policy tenant_guard on atendeai.notes as restrictive for all"
            " using (clinic_id = atendeai.current_clinic_id())"
            " with check (clinic_id = atendeai.current_clinic_id())",
        ],
        "audit_trigger_missing",
        "table atendeai.notes",
        "CREATE TRIGGER notes_audit",
    ),
    "audit function records no acting user": (
        [
            rewrite_function(
                "atendeai.audit_row_change()",
                "nullif(current_setting('atendeai.user_id', true), '')::uuid",
                "null::uuid",
            )
        ],
        "audit_no_actor",
        "function atendeai.audit_row_change()",
        "acting user",
    ),
    "context set for the session (set_config false)": (
        [
            rewrite_function(
                "atendeai.set_request_context(uuid,uuid,text,text,text)",
                "coalesce(p_clinic_id::text, ''), true)",
                "coalesce(p_clinic_id::text, ''), false)",
            )
        ],
        "context_session_level",
        "function atendeai.set_request_context(uuid,uuid,text,text,text)",
        "set_config(name, value, true)",
    ),
    "context set for the session (SET without LOCAL)": (
        [
            rewrite_function(
                "atendeai.set_request_context(uuid,uuid,text,text,text)",
                "perform set_config('atendeai.request_id', coalesce(p_request_id, ''), true);",
                "execute format('set atendeai.request_id = %L', coalesce(p_request_id, ''));",
            )
        ],
        "context_session_level",
        "function atendeai.set_request_context(uuid,uuid,text,text,text)",
        "SET LOCAL",
    ),
    "password_hash readable (column grant)": (
        ["grant select (password_hash) on atendeai.users to atendeai_app"],
        "secret_readable",
        "column atendeai.users.password_hash",
        "REVOKE SELECT ON atendeai.users FROM atendeai_app",
    ),
    "password_hash readable (table grant to PUBLIC)": (
        ["grant select on atendeai.users to public"],
        "secret_readable",
        "column atendeai.users.password_hash",
        "GRANT SELECT (<every column but password_hash>)",
    ),
    "e-mail unique across clinics": (
        ["create unique index users_email_global_key on atendeai.users (lower(email))"],
        "unique_without_tenant",
        "unique index users_email_global_key on atendeai.users",
        "CREATE UNIQUE INDEX ON atendeai.users (clinic_id, lower(email))",
    ),
    "unique constraint without clinic_id": (
        ["alter table atendeai.sessions add constraint sessions_family_key unique (family_id)"],
        "unique_without_tenant",
        "unique constraint sessions_family_key on atendeai.sessions",
        "(clinic_id, family_id)",
    ),
}

# name -> (cluster-level statements, check, fix fragment)
ROLE_DEFECTS: dict[str, tuple[list[str], str, str]] = {
    "superuser": (["alter role atendeai_app superuser"], "role_superuser", "NOSUPERUSER"),
    "BYPASSRLS": (["alter role atendeai_app bypassrls"], "role_bypassrls", "NOBYPASSRLS"),
    "CREATEROLE": (["alter role atendeai_app createrole"], "role_createrole", "NOCREATEROLE"),
    "member of a BYPASSRLS role": (
        ["create role lint_sneaky nologin bypassrls", "grant lint_sneaky to atendeai_app"],
        "role_member",
        "REVOKE lint_sneaky FROM atendeai_app",
    ),
    "member of the owner": (
        ["grant atendeai_owner to atendeai_app"],
        "role_member",
        "REVOKE atendeai_owner FROM atendeai_app",
    ),
    "member of a superuser, through another role": (
        [
            "create role lint_root nologin superuser",
            "create role lint_middle nologin",
            "grant lint_root to lint_middle",
            "grant lint_middle to atendeai_app",
        ],
        "role_member",
        "REVOKE lint_root FROM atendeai_app",
    ),
    "member of pg_read_all_data": (
        ["grant pg_read_all_data to atendeai_app"],
        "role_member",
        "REVOKE pg_read_all_data FROM atendeai_app",
    ),
}


def test_proof_lint_is_clean_on_an_intact_scratch_database(scratch_db: ScratchDatabase) -> None:
    """The control: the proofs below start from a database the lint passes."""
    report = lint_database(scratch_db.superuser_dsn)
    assert report.ok, report.render()


@pytest.mark.parametrize("defect", list(DATABASE_DEFECTS))
def test_proof_lint_catches_database_defect(defect: str, scratch_db: ScratchDatabase) -> None:
    statements, check, obj, fix = DATABASE_DEFECTS[defect]
    scratch_db.execute(*statements)
    report = lint_database(scratch_db.superuser_dsn)
    assert not report.ok, f"{defect}: the lint stayed green\n{report.render()}"
    matching = [f for f in report.by_check(check) if f.object == obj and f.severity == ERROR]
    assert matching, f"{defect}: no {check} finding for {obj}\n{report.render()}"
    assert fix in matching[0].fix, matching[0]


@pytest.mark.parametrize("defect", list(ROLE_DEFECTS))
def test_proof_lint_catches_role_defect(
    defect: str, scratch_cluster: ScratchCluster, scratch_db: ScratchDatabase
) -> None:
    statements, check, fix = ROLE_DEFECTS[defect]
    scratch_cluster.execute(*statements)
    try:
        report = lint_database(scratch_db.superuser_dsn)
    finally:
        scratch_cluster.reset_roles()  # restates the attributes, revokes memberships
        scratch_cluster.execute(
            "drop role if exists lint_sneaky",
            "drop role if exists lint_middle",
            "drop role if exists lint_root",
        )
        scratch_cluster.execute("revoke pg_read_all_data from atendeai_app")
    matching = [f for f in report.by_check(check) if f.object == "role atendeai_app"]
    assert matching, f"{defect}: no {check} finding\n{report.render()}"
    assert any(fix in f.fix for f in matching), matching
    assert lint_database(scratch_db.superuser_dsn).ok, "the role defect was not undone"


def test_proof_lint_catches_an_old_server() -> None:
    # The running server cannot be downgraded: the version check is a pure function.
    assert server_version_findings(150020) == []
    assert server_version_findings(160005) == []
    assert server_version_findings(180000) == []
    for old in (150008, 140015, 160004, 170000):
        (finding,) = server_version_findings(old)
        assert finding.check == "server_version" and finding.severity == ERROR
        assert "upgrade PostgreSQL" in finding.fix


def test_proof_lint_checks_the_version_of_the_server_it_reads(
    scratch_db: ScratchDatabase,
) -> None:
    # Demanding more than the scratch server has turns the lint red through the same path.
    report = lint_database(scratch_db.superuser_dsn, min_server_version=990000)
    assert [f.check for f in report.errors] == ["server_version"], report.render()


def test_proof_lint_command_exits_non_zero_with_findings(
    scratch_db: ScratchDatabase,
) -> None:
    scratch_db.execute("alter table atendeai.users no force row level security")
    result = subprocess.run(
        [sys.executable, "-m", "harness.security.rls_lint", "--dsn", scratch_db.superuser_dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rls_forced" in result.stdout and "table atendeai.users" in result.stdout
    assert "ALTER TABLE atendeai.users FORCE ROW LEVEL SECURITY;" in result.stdout
    assert scratch_db.superuser_dsn not in result.stdout, "the password must not be printed"


def test_lint_command_says_when_it_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", "postgresql://nobody:secret@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "secret" not in err
    with pytest.raises(LintError, match="empty DSN"):
        lint_database("  ")


# --- rules that must not raise false alarms --------------------------------------


def test_for_all_policy_without_with_check_is_a_note(scratch_db: ScratchDatabase) -> None:
    # PostgreSQL checks written rows with USING when a FOR ALL policy has no WITH CHECK.
    scratch_db.execute(
        "drop policy tenant_guard on atendeai.sessions",
        "create policy tenant_guard on atendeai.sessions as restrictive for all"
        " using (clinic_id = atendeai.current_clinic_id())",
    )
    report = lint_database(scratch_db.superuser_dsn)
    assert report.ok, report.render()
    (finding,) = report.by_check("policy_without_check")
    assert (finding.severity, finding.object) == (NOTE, "policy tenant_guard on atendeai.sessions")


def test_proof_secret_columns_are_configurable(scratch_db: ScratchDatabase) -> None:
    # The service role reads sessions.token_hash: a secret only if the user says so.
    assert not lint_database(scratch_db.superuser_dsn).by_check("secret_readable")
    report = lint_database(
        scratch_db.superuser_dsn,
        conventions=Conventions(secret_columns=("password_hash", "token_hash")),
    )
    found = [(f.object, f.severity) for f in report.by_check("secret_readable")]
    assert found == [("column atendeai.sessions.token_hash", ERROR)], report.render()


def test_proof_a_named_tenant_setting_replaces_the_detected_one(
    scratch_db: ScratchDatabase,
) -> None:
    # Told the context is another setting, every platform policy is off-context.
    report = lint_database(
        scratch_db.superuser_dsn, conventions=Conventions(tenant_setting="app.current_tenant")
    )
    assert report.tenant_settings == ("app.current_tenant",)
    off_context = {f.object for f in report.by_check("policy_not_tenant")}
    assert "policy tenant_guard on atendeai.users" in off_context, report.render()


def test_proof_names_that_match_nothing_are_reported(scratch_db: ScratchDatabase) -> None:
    # Well-formed names that are not in the schema: each an error naming its option.
    for conventions, obj, option in (
        (Conventions(tenant_column="tenant_id"), "schema atendeai", "--tenant-column"),
        (Conventions(tenant_root="tenants"), "table atendeai.tenants", "--tenant-root"),
        (Conventions(audit_table="audit_log"), "table atendeai.audit_log", "--audit-table"),
    ):
        report = lint_database(scratch_db.superuser_dsn, conventions=conventions)
        (finding,) = report.by_check("name_not_found")
        assert (finding.severity, finding.object) == (ERROR, obj), report.render()
        assert option in finding.fix


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--tenant-column", "tenant-id", "tenant column 'tenant-id' is not a plain SQL name"),
        ("--tenant-column", "1tenant", "tenant column '1tenant' is not a plain SQL name"),
        ("--tenant-root", "tenants;drop", "tenant root 'tenants;drop' is not a plain SQL name"),
        ("--tenant-setting", "current_tenant", "is not a custom setting name"),
        ("--secret-columns", "password_hash,pass word", "secret column 'pass word'"),
        ("--audit-table", "audit log", "audit table 'audit log'"),
    ],
)
def test_lint_command_refuses_bad_option_values(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Through `atendeai lint-rls`: refused before any connection is tried.
    code = atendeai(["lint-rls", "--dsn", "postgresql://x@127.0.0.1:1/x", option, value])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"argument {option}: " in err and message in err, err
    assert "cannot connect" not in err


def test_conventions_refuse_bad_names_too() -> None:
    with pytest.raises(ValueError, match="tenant column 'tenant-id' is not a plain SQL name"):
        Conventions(tenant_column="tenant-id")
    with pytest.raises(ValueError, match="secret column 'pass word'"):
        Conventions(secret_columns=("password_hash", "pass word"))
    with pytest.raises(ValueError, match="is not a custom setting name"):
        Conventions(tenant_setting="app")


def test_lint_command_takes_name_lists(capsys: pytest.CaptureFixture[str]) -> None:
    # A trailing comma and '' are fine: the command goes on to connect (and cannot).
    dsn = "postgresql://x@127.0.0.1:1/x"
    assert atendeai(["lint-rls", "--dsn", dsn, "--unaudited", "sessions,"]) == 2
    assert atendeai(["lint-rls", "--dsn", dsn, "--secret-columns", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot connect") == 2, err


def test_lint_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert atendeai(["lint-rls", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--tenant-column",
        "--tenant-root",
        "--tenant-setting",
        "--secret-columns",
        "--audit-table",
        "--unaudited",
    ):
        assert option in out


def test_add_parser_registers_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    # For `atendeai`'s subcommands: the options and help of main(), and a handler.
    parser = argparse.ArgumentParser(prog="atendeai")
    add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["lint-rls", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == build_parser().format_help()
    dsn = "postgresql://x:secret@127.0.0.1:1/x"
    args = parser.parse_args(["lint-rls", "--dsn", dsn, "--unaudited", "a,b", "--json"])
    assert (args.unaudited, args.json) == (("a", "b"), True)
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "secret" not in err


# --- a schema the lint has never seen ------------------------------------------------

_foreign_numbers = itertools.count(1)


def _create_database(cluster: ScratchCluster, name: str, template: str = "template0") -> str:
    with psycopg.connect(cluster.superuser_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}"'.encode())
        conn.execute(f'create database "{name}" template "{template}"'.encode())
    return make_conninfo(cluster.superuser_dsn, dbname=name)


@pytest.fixture(scope="module")
def foreign_template(scratch_cluster: ScratchCluster) -> Iterator[str]:
    """A database holding the foreign-style schema, to clone (its name)."""
    scratch_cluster.execute(
        "do $$ begin if not exists (select 1 from pg_roles where rolname = 'tenant_app')"
        " then create role tenant_app nologin; end if; end $$"
    )
    dsn = _create_database(scratch_cluster, "foreign_template")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FOREIGN_SCHEMA.read_bytes())
    yield "foreign_template"


@pytest.fixture
def foreign_db(scratch_cluster: ScratchCluster, foreign_template: str) -> str:
    """A fresh copy of the foreign-style schema (its superuser DSN)."""
    return _create_database(
        scratch_cluster, f"foreign_{next(_foreign_numbers)}", template=foreign_template
    )


def _lint_foreign(dsn: str) -> LintReport:
    return lint_database(dsn, **FOREIGN, conventions=FOREIGN_CONVENTIONS)


def test_foreign_schema_passes_the_lint(foreign_db: str) -> None:
    report = _lint_foreign(foreign_db)
    assert report.ok, report.render()
    assert set(report.tables) == {"tenants", "users", "projects", "audit_events"}
    # Detected, not assumed: the table of tenants and the context setting.
    assert (report.tenant_root, report.tenant_settings) == ("tenants", ("app.current_tenant",))
    # The samples' FOR ALL policies without WITH CHECK: notes, one per table.
    notes = {f.object for f in report.notes if f.check == "policy_without_check"}
    assert notes == {
        f"policy tenant_isolation on public.{t}"
        for t in ("tenants", "users", "projects", "audit_events")
    }
    # Nothing else is even a note: no false alarm on policies, the tenant FKs, the keys.
    assert [f for f in report.findings if f.check != "policy_without_check"] == []


def test_lint_command_passes_the_foreign_schema(
    foreign_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert atendeai(["lint-rls", "--dsn", foreign_db, *FOREIGN_OPTIONS]) == 0
    out = capsys.readouterr().out
    assert "tenants: column tenant_id, table tenants, context app.current_tenant" in out
    # Named rather than detected: the same verdict (the tenant FKs are not reported).
    named = ["--tenant-root", "tenants", "--tenant-setting", "app.current_tenant", "--json"]
    assert atendeai(["lint-rls", "--dsn", foreign_db, *FOREIGN_OPTIONS, *named]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["tenant_root"] == "tenants"


# name -> (statements, check, object, fix fragment)
FOREIGN_DEFECTS: dict[str, tuple[list[str], str, str, str]] = {
    "unique constraint without tenant_id": (
        ["alter table public.projects add constraint projects_name_key unique (name)"],
        "unique_without_tenant",
        "unique constraint projects_name_key on public.projects",
        "(tenant_id, name)",
    ),
    "e-mail unique across tenants": (
        ["create unique index users_email_key on public.users (lower(email))"],
        "unique_without_tenant",
        "unique index users_email_key on public.users",
        "(tenant_id, lower(email))",
    ),
    "table without a policy": (
        [
            "create table public.invoices (invoice_id uuid primary key default"
            " gen_random_uuid(), tenant_id uuid not null references public.tenants (tenant_id))",
            "alter table public.invoices enable row level security, force row level security",
        ],
        "policy_not_restrictive",
        "table public.invoices",
        "USING (tenant_id = <tenant context>)",
    ),
    "table without RLS": (
        [
            "create table public.invoices (invoice_id uuid primary key default"
            " gen_random_uuid(), tenant_id uuid not null references public.tenants (tenant_id))"
        ],
        "rls_enabled",
        "table public.invoices",
        "ENABLE ROW LEVEL SECURITY",
    ),
    "policy on another setting": (
        [
            "create policy admins on public.projects for select"
            " using (current_setting('app.is_admin', true) = 'on')"
        ],
        "policy_not_tenant",
        "policy admins on public.projects",
        "compare tenant_id with the tenant context",
    ),
    "FK leaving out tenant_id": (
        [
            "alter table public.projects add column reviewer_id uuid"
            " references public.users (user_id)"
        ],
        "fk_without_tenant",
        "foreign key projects_reviewer_id_fkey on public.projects",
        "(tenant_id, ...)",
    ),
    "FK to the tenants from another column": (
        [
            "alter table public.projects add column billed_to uuid"
            " references public.tenants (tenant_id)"
        ],
        "fk_without_tenant",
        "foreign key projects_billed_to_fkey on public.projects",
        "(tenant_id, ...)",
    ),
    "tenant set for the session": (
        [
            rewrite_function(
                "public.set_tenant(uuid,text)",
                "p_tenant::text, true)",
                "p_tenant::text, false)",
            )
        ],
        "context_session_level",
        "function public.set_tenant(uuid,text)",
        "set_config(name, value, true)",
    ),
    "password_hash readable": (
        ["grant select on public.users to tenant_app"],
        "secret_readable",
        "column public.users.password_hash",
        "REVOKE SELECT ON public.users FROM tenant_app",
    ),
    "audit table deletable": (
        ["grant delete on public.audit_events to tenant_app"],
        "audit_writable",
        "table public.audit_events",
        "REVOKE DELETE",
    ),
    "audit trigger missing": (
        ["drop trigger projects_audit on public.projects"],
        "audit_trigger_missing",
        "table public.projects",
        "EXECUTE FUNCTION public.record_change()",
    ),
    "audit without actor": (
        [
            rewrite_function(
                "public.record_change()",
                "current_setting('app.current_actor', true)",
                "null",
            )
        ],
        "audit_no_actor",
        "function public.record_change()",
        "acting user",
    ),
}


@pytest.mark.parametrize("defect", list(FOREIGN_DEFECTS))
def test_proof_lint_catches_defect_in_the_foreign_schema(defect: str, foreign_db: str) -> None:
    statements, check, obj, fix = FOREIGN_DEFECTS[defect]
    with psycopg.connect(foreign_db, autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement.encode())
    report = _lint_foreign(foreign_db)
    assert not report.ok, f"{defect}: the lint stayed green\n{report.render()}"
    matching = [f for f in report.by_check(check) if f.object == obj and f.severity == ERROR]
    assert matching, f"{defect}: no {check} finding for {obj}\n{report.render()}"
    assert fix in matching[0].fix, matching[0]
