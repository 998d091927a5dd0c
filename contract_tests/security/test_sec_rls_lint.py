"""The RLS lint (``harness.rls_lint``): clean on the stack, and red for every
defect of DESIGN.md section 7 injected into a scratch cluster.

Database-level defects go into a fresh scratch database each; role-level
defects (roles are cluster-wide) go into the scratch cluster's roles and are
undone with the platform's own ``bootstrap`` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.rls_lint import ERROR, LintError, lint_database, main, server_version_findings
from harness.security.scratch import ScratchCluster, ScratchDatabase
from harness.stack import Stack

# --- the real thing ----------------------------------------------------------------


def test_stack_database_passes_the_lint(stack: Stack) -> None:
    # As the service role itself: the lint needs nothing more than to connect.
    report = lint_database(stack.postgres.app_dsn)
    assert report.ok, report.render()
    assert set(report.tables) == {"audit_logs", "clinics", "sessions", "users"}
    # The two SECURITY DEFINER lookups are reported for review, not as errors.
    executable = {f.object for f in report.by_check("definer_executable")}
    assert executable == {
        "function atendeai.find_user_for_login(text)",
        "function atendeai.platform_list_clinics(integer,integer)",
    }


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
    "policy without WITH CHECK": (
        [
            "drop policy tenant_guard on atendeai.sessions",
            "create policy tenant_guard on atendeai.sessions as restrictive for all"
            " using (clinic_id = atendeai.current_clinic_id())",
        ],
        "policy_without_check",
        "policy tenant_guard on atendeai.sessions",
        "WITH CHECK",
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
        ["alter function atendeai.find_user_for_login(text) set search_path = public, pg_catalog"],
        "definer_search_path",
        "function atendeai.find_user_for_login(text)",
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
        [sys.executable, "-m", "harness.rls_lint", "--dsn", scratch_db.superuser_dsn],
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
