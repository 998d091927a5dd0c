"""Tenant isolation through the query paths of the known PostgreSQL RLS CVEs
(CVE-2023-2455, CVE-2023-39418, CVE-2024-10976; DESIGN.md 7.13): CTEs and
subqueries, an inlinable SQL function, security_invoker views, MERGE, generic
plans reused across tenant switches, and SET ROLE switches within a session
(``harness.security.rls_paths``).

Every path runs against a scratch database with the helper objects (created
here, never by the platform's migrations); the paths that need no helper and
no new role run against the stack's database too. Each path has a proof: a
realistic defect planted in a fresh scratch database that its check catches.
Where the defect is invisible to the tenant tables read and written directly,
the proof also shows the ``tables`` baseline staying green on it, so the path
is what catches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from harness.security.isolation import IsolationDsns, IsolationViolation
from harness.security.pytest_plugin import Tally
from harness.security.rls_paths import (
    PATHS,
    SHARED_DATABASE_PATHS,
    SwitchRoles,
    TenantWorld,
    check_path,
    helpers_are_as_declared,
    install_helpers,
)
from harness.security.scratch import ScratchCluster, ScratchDatabase
from harness.stack import Stack


def dsns_of(db: ScratchDatabase) -> IsolationDsns:
    return IsolationDsns(db.app_dsn, db.superuser_dsn)


@pytest.fixture(scope="module")
def intact_world(scratch_cluster: ScratchCluster) -> Iterator[TenantWorld]:
    db = scratch_cluster.database("rls_paths")
    install_helpers(db.owner_dsn)
    with TenantWorld(dsns_of(db), switch_roles=True) as world:
        yield world


def test_the_helpers_are_the_paths_they_claim(intact_world: TenantWorld) -> None:
    """The SQL functions are inlined and the views are security_invoker, as the
    service role sees them: else the paths would test something else."""
    assert helpers_are_as_declared(intact_world.dsns.app_dsn) == []


def test_proof_the_helper_check_notices_helpers_that_changed(scratch_db: ScratchDatabase) -> None:
    install_helpers(scratch_db.owner_dsn)
    scratch_db.execute(
        "alter function rls_paths.user_sessions(uuid) set search_path = pg_catalog",
        "alter view rls_paths.clinic_audit reset (security_invoker)",
    )
    problems = helpers_are_as_declared(scratch_db.app_dsn)
    assert len(problems) == 2, problems
    assert "rls_paths.user_sessions is not inlined" in problems[0]
    assert "view rls_paths.clinic_audit is not security_invoker" in problems[1]


@pytest.mark.parametrize("path", PATHS)
def test_path_shows_only_the_context_rows_and_refuses_cross_tenant_writes(
    path: str, intact_world: TenantWorld, security_tally: Tally
) -> None:
    report = check_path(intact_world, path)
    security_tally.add("RLS path statements", report.reads + report.writes, report.summary())
    assert report.reads > 0
    assert report.writes > 0
    if path == "generic_plans":
        # Every execution of every prepared statement ran a generic plan.
        assert report.generic_plans == report.reads + report.writes
        assert report.custom_plans == 0
    if path == "role_switch":
        assert report.role_switches >= 4 * len(intact_world.clinics)
        assert report.roles_reachable == []  # the service role can switch to nothing


def test_shared_paths_hold_on_the_stack(stack: Stack, security_tally: Tally) -> None:
    """The paths without helpers and roles, on the stack's own database (its
    clinics are the world's own, deleted afterwards)."""
    dsns = IsolationDsns(stack.postgres.app_dsn, stack.postgres.superuser_dsn)
    with TenantWorld(dsns) as world:
        for path in SHARED_DATABASE_PATHS:
            report = check_path(world, path)
            assert report.reads > 0 and report.writes > 0
            security_tally.add("RLS path statements (stack)", report.reads + report.writes)


# --- proofs: a planted defect per path, in a fresh scratch database --------------------------

#: The users table's two policies, rewritten with an extra OR (the defect).
USERS_POLICIES_OR = [
    "alter policy tenant_isolation on atendeai.users"
    " using (clinic_id = atendeai.current_clinic_id() or {extra})",
    "alter policy tenant_guard on atendeai.users"
    " using (clinic_id = atendeai.current_clinic_id() or {extra})",
]


@dataclass(frozen=True)
class PathDefect:
    path: str
    #: The statements that plant it, given the world's switch roles.
    plant: Callable[[SwitchRoles], list[str]]
    #: What the violation names (after "<path>: ").
    expected: str
    #: The tenant tables, read and written directly, do not show it.
    invisible_to_tables: bool
    #: Cluster-level: undone with reset_roles() afterwards.
    cluster_level: bool = False


DEFECTS = {
    # Audit rows accepted for any clinic (someone "fixing" a platform admin who
    # acts for another clinic): INSERT ... SELECT from a subquery writes another
    # clinic's trail. (The data-modifying WITH is still refused: its RETURNING
    # checks the new row against the SELECT policy, which is intact.)
    "audit_logs WITH CHECK (true)": PathDefect(
        "cte_and_subqueries",
        lambda roles: [
            "alter policy tenant_isolation on atendeai.audit_logs with check (true)",
            "alter policy tenant_guard on atendeai.audit_logs with check (true)",
        ],
        r"INSERT \.\.\. SELECT from a subquery: .* audit_logs .* -> .*'forged'",
        invisible_to_tables=False,
    ),
    # The report function made SECURITY DEFINER and handed to the BYPASSRLS
    # definer role, like the login lookup, but without a tenant filter: it is no
    # longer inlined and reads every clinic's users.
    "SQL function SECURITY DEFINER, owned by a BYPASSRLS role": PathDefect(
        "sql_function",
        lambda roles: [
            "alter function rls_paths.clinic_staff(text) security definer",
            "alter function rls_paths.clinic_staff(text) owner to atendeai_definer",
        ],
        r"inlined SQL function in FROM under clinic .* rows of other clinics",
        invisible_to_tables=True,
    ),
    # The directory view re-created by hand as the superuser, without
    # security_invoker: it runs with its owner's rights, which bypass RLS.
    "view without security_invoker, owned by the superuser": PathDefect(
        "security_invoker_view",
        lambda roles: [
            "alter view rls_paths.staff_directory reset (security_invoker)",
            "alter view rls_paths.staff_directory owner to current_user",
        ],
        r"security_invoker view under clinic .* rows of other clinics",
        invisible_to_tables=True,
    ),
    # A permissive INSERT policy for a bulk import, and the restrictive guard
    # rewritten per command without one for INSERT: MERGE's NOT MATCHED branch
    # inserts users into another clinic. (On a server with the CVE-2023-39418
    # fix MERGE applies the same policies as INSERT/UPDATE/DELETE, so no schema
    # defect reaches MERGE alone; the check stands for the server's side.)
    "permissive INSERT policy without a restrictive guard": PathDefect(
        "merge",
        lambda roles: [
            "drop policy tenant_guard on atendeai.users",
            *(
                f"create policy tenant_guard_{command} on atendeai.users as restrictive"
                f" for {command} using (clinic_id = atendeai.current_clinic_id())"
                for command in ("select", "update", "delete")
            ),
            "create policy bulk_import on atendeai.users as permissive for insert"
            " with check (true)",
        ],
        r"MERGE \.\.\. WHEN NOT MATCHED THEN INSERT a user into another clinic",
        invisible_to_tables=False,
    ),
    # current_clinic_id() declared IMMUTABLE (so the planner folds it like a
    # constant): a statement's plan keeps the tenant of the moment it was
    # planned, and a generic plan reused after a tenant switch shows the first
    # tenant's rows. One-shot statements, planned each time, look right.
    "current_clinic_id() IMMUTABLE": PathDefect(
        "generic_plans",
        lambda roles: ["alter function atendeai.current_clinic_id() immutable"],
        r"under clinic .* rows of other clinics",
        invisible_to_tables=True,
    ),
    # "Members of the maintenance role see every clinic", written with
    # session_user: SET ROLE does not change session_user, so every request the
    # pooler switches into the service role keeps the maintenance view.
    "policy exempting maintenance by session_user": PathDefect(
        "role_switch",
        lambda roles: [
            statement.format(extra=f"pg_has_role(session_user, '{roles.maintenance}', 'member')")
            for statement in USERS_POLICIES_OR
        ],
        r"under clinic .* \(SET ROLE atendeai_app after .*\): .* rows of other clinics",
        invisible_to_tables=True,
    ),
    # The service role granted the BYPASSRLS definer role (NOINHERIT, so its
    # own queries are unchanged) "to run maintenance": SET ROLE within its
    # session reaches every clinic.
    "service role may SET ROLE to a BYPASSRLS role": PathDefect(
        "role_switch",
        lambda roles: ["grant atendeai_definer to atendeai_app"],
        r"\(the service role did SET ROLE atendeai_definer\)",
        invisible_to_tables=True,
        cluster_level=True,
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_proof_rls_path_catches(
    defect: str, scratch_db: ScratchDatabase, scratch_cluster: ScratchCluster
) -> None:
    case = DEFECTS[defect]
    install_helpers(scratch_db.owner_dsn)
    try:
        with TenantWorld(dsns_of(scratch_db), switch_roles=True) as world:
            assert world.roles is not None
            statements = case.plant(world.roles)
            if case.cluster_level:
                scratch_cluster.execute(*statements)
            else:
                scratch_db.execute(*statements)
            if case.invisible_to_tables:
                check_path(world, "tables")  # first: a caught write would change the world
            with pytest.raises(IsolationViolation, match=rf"^{case.path}: .*{case.expected}"):
                check_path(world, case.path)
    finally:
        if case.cluster_level:
            scratch_cluster.reset_roles()
