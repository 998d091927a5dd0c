"""Tenant isolation through the query paths behind the known PostgreSQL RLS CVEs.

CVE-2023-2455 (policies of the wrong role after role switches and inlining),
CVE-2023-39418 (MERGE ignoring the UPDATE and SELECT policies) and
CVE-2024-10976 (subqueries, WITH queries, security-invoker views and SQL
functions under role switches) are fixed in the server versions the RLS lint
requires; these checks read and write through the same paths, as the service
role with the context set by ``atendeai.set_request_context`` (as the services
do), so a schema that reopens one of them is caught too:

``tables``                the tenant tables themselves (the baseline);
``cte_and_subqueries``    WITH queries (plain, MATERIALIZED, RECURSIVE,
                          data-modifying), subqueries in FROM, IN, EXISTS,
                          scalar and LATERAL position, INSERT ... SELECT;
``sql_function``          an inlinable SQL function over a tenant table, SQL
                          functions that write;
``security_invoker_view`` views with ``security_invoker``, read, updated,
                          deleted from and inserted into;
``merge``                 MERGE's matched UPDATE / DELETE and not-matched
                          INSERT, and which rows it matches;
``generic_plans``         every statement above prepared once on one
                          connection with ``plan_cache_mode =
                          force_generic_plan`` and reused across tenant
                          switches (the services' psycopg pool prepares a
                          statement after five uses);
``role_switch``           one session of a pooler login that switches
                          between a maintenance role that bypasses RLS and
                          the service role (``SET ROLE``, and ``SET LOCAL
                          ROLE`` per transaction), reusing the same prepared
                          generic plans (the CVE scenario: planned as one
                          role, run as another); and every role the service
                          role itself may ``SET ROLE`` to.

Each path shows every context exactly its own rows (and no context none) and
refuses every cross-tenant write: an UPDATE, DELETE or INSERT of another
clinic's rows, and moving a row of one's own into another clinic. "Refused"
is judged on the data (the superuser's view after the write equals the world
as seeded), so a write that reports zero rows but changed something is caught
too; an error counts as a refusal only when it is an RLS / privilege error or
an integrity error.

``TenantWorld`` seeds the clinics the checks use (as the service role) and
deletes them afterwards, so the paths in ``SHARED_DATABASE_PATHS`` (no helper
objects, no new roles) can run against a database other tests use. The
helper objects (schema ``rls_paths``: SQL functions, views) are created by
``install_helpers`` in a scratch database only, never by the platform's
migrations. ``check_path(world, name)`` returns a ``PathReport`` or raises
``IsolationViolation`` naming the path, the statement and the evidence.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness.security.isolation import IsolationDsns, IsolationViolation
from harness.tenant_rows import CONTEXT_CLINIC, insert_clinic

APP_ROLE = "atendeai_app"
HELPER_SCHEMA = "rls_paths"
KINDS = ("clinics", "users", "sessions", "audit_logs")

#: The helper objects, created as the schema owner (as a migration would). The
#: function bodies are single SELECTs, STABLE, SECURITY INVOKER, without SET
#: clauses: the planner inlines them (``helpers_are_as_declared`` checks it).
HELPERS_SQL = """
create schema rls_paths;
grant usage on schema rls_paths to atendeai_app;

create function rls_paths.clinic_staff(p_name_like text default '%')
returns table (id uuid, clinic_id uuid, name text)
language sql stable
begin atomic
    select u.id, u.clinic_id, u.name from atendeai.users as u where u.name like p_name_like;
end;

create function rls_paths.user_sessions(p_user_id uuid)
returns setof uuid
language sql stable
begin atomic
    select s.id from atendeai.sessions as s where s.user_id = p_user_id;
end;

create function rls_paths.rename_staff(p_user_id uuid, p_name text)
returns bigint
language sql volatile
begin atomic
    with changed as (
        update atendeai.users set name = p_name where id = p_user_id returning 1
    )
    select pg_catalog.count(*) from changed;
end;

create function rls_paths.transfer_staff(p_user_id uuid, p_clinic_id uuid)
returns bigint
language sql volatile
begin atomic
    with moved as (
        update atendeai.users set clinic_id = p_clinic_id where id = p_user_id returning 1
    )
    select pg_catalog.count(*) from moved;
end;

create view rls_paths.staff_directory with (security_invoker = true) as
    select u.id, u.clinic_id, u.name, u.role from atendeai.users as u;

create view rls_paths.session_owners with (security_invoker = true) as
    select s.id as session_id, u.id as user_id, u.clinic_id
      from atendeai.sessions as s
      join atendeai.users as u on u.clinic_id = s.clinic_id and u.id = s.user_id;

create view rls_paths.clinic_audit with (security_invoker = true) as
    select a.id, a.clinic_id, a.action from atendeai.audit_logs as a;

grant execute on all functions in schema rls_paths to atendeai_app;
grant select, update, delete on rls_paths.staff_directory to atendeai_app;
grant select on rls_paths.session_owners to atendeai_app;
grant select, insert on rls_paths.clinic_audit to atendeai_app;
"""

#: What the helpers must be for their paths to be the paths they claim.
HELPER_FUNCTIONS = ("clinic_staff", "user_sessions")
HELPER_VIEWS = ("staff_directory", "session_owners", "clinic_audit")


def install_helpers(owner_dsn: str) -> None:
    """Create schema ``rls_paths`` and its objects (a scratch database only)."""
    with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(HELPERS_SQL.encode())


def helpers_are_as_declared(app_dsn: str) -> list[str]:
    """What is wrong with the helpers (empty when right): every read function is
    inlined (no Function Scan in its plan, as the service role) and every view is
    ``security_invoker``."""
    problems: list[str] = []
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        for name in HELPER_FUNCTIONS:
            # A constant argument: a volatile one would itself prevent inlining.
            call = "clinic_staff()" if name == "clinic_staff" else f"{name}('{uuid.UUID(int=0)}')"
            plan = conn.execute(
                f"explain (format json) select * from {HELPER_SCHEMA}.{call}"
            ).fetchone()[0]
            if "Function Scan" in str(plan):
                problems.append(f"{HELPER_SCHEMA}.{name} is not inlined: {plan}")
        for name in HELPER_VIEWS:
            row = conn.execute(
                "select c.reloptions from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = %s and c.relname = %s",
                [HELPER_SCHEMA, name],
            ).fetchone()
            if row is None or "security_invoker=true" not in (row[0] or []):
                problems.append(f"view {HELPER_SCHEMA}.{name} is not security_invoker: {row}")
    return problems


# --- the world: clinics seeded as the service role ---------------------------------------


@dataclass(frozen=True)
class SeededClinic:
    id: uuid.UUID
    staff: uuid.UUID  # has a session
    newcomer: uuid.UUID  # has no session: the one to try to move (no FK in the way)
    session: uuid.UUID


@dataclass(frozen=True)
class SwitchRoles:
    """Cluster roles of the ``role_switch`` path (created and dropped by ``TenantWorld``)."""

    pooler: str  # LOGIN NOINHERIT, member of the service role and of the maintenance role
    maintenance: str  # NOLOGIN BYPASSRLS: the privileged view
    password: str


Snapshot = dict[str, dict[uuid.UUID, tuple[Any, ...]]]


class TenantWorld:
    """Seeded clinics (a context manager), with the superuser's view of them.

    ``switch_roles=True`` also creates the ``role_switch`` path's pooler and
    maintenance roles (cluster-wide: for a scratch cluster) and drops them on exit.
    """

    def __init__(self, dsns: IsolationDsns, *, clinics: int = 3, switch_roles: bool = False):
        if clinics < 2:
            raise ValueError("a tenant world needs at least 2 clinics (an attacker and a victim)")
        self.dsns = dsns
        self.clinic_count = clinics
        self.with_switch_roles = switch_roles
        self.clinics: list[SeededClinic] = []
        self.seeded: Snapshot = {}
        self.roles: SwitchRoles | None = None
        self._truth: psycopg.Connection[Any] | None = None

    def __enter__(self) -> TenantWorld:
        self._truth = psycopg.connect(self.dsns.superuser_dsn, autocommit=True)
        try:
            if self.with_switch_roles:
                self.roles = self._create_switch_roles()
            with psycopg.connect(self.dsns.app_dsn, autocommit=True) as app:
                for number in range(1, self.clinic_count + 1):
                    self.clinics.append(_seed_clinic(app, number))
            self.seeded = self.snapshot()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        truth = self._truth
        if truth is None:
            return
        try:
            if self.clinics:
                truth.execute("delete from atendeai.clinics where id = any(%s)", [self.clinic_ids])
            if self.roles is not None:
                self._drop_switch_roles(self.roles)
        finally:
            truth.close()
            self._truth = None

    @property
    def clinic_ids(self) -> list[uuid.UUID]:
        return [clinic.id for clinic in self.clinics]

    @property
    def truth(self) -> psycopg.Connection[Any]:
        if self._truth is None:
            raise RuntimeError("TenantWorld is used outside its with block")
        return self._truth

    def snapshot(self) -> Snapshot:
        """The superuser's view of the world's rows: kind -> id -> (clinic, details)."""
        ids = self.clinic_ids
        queries = {
            "clinics": "select id, id, name from atendeai.clinics where id = any(%s)",
            "users": "select id, clinic_id, name from atendeai.users where clinic_id = any(%s)",
            "sessions": "select id, clinic_id, revoked_at is null from atendeai.sessions"
            " where clinic_id = any(%s)",
            "audit_logs": "select id, clinic_id, action from atendeai.audit_logs"
            " where clinic_id = any(%s)",
        }
        return {
            kind: {row[0]: tuple(row[1:]) for row in self.truth.execute(query, [ids])}
            for kind, query in queries.items()
        }

    def rows_of(self, kind: str, clinic: uuid.UUID | None) -> set[uuid.UUID]:
        """The ids of ``kind`` that ``clinic``'s context must see (none without one)."""
        return {row for row, values in self.seeded[kind].items() if values[0] == clinic}

    def every_row(self, kind: str) -> set[uuid.UUID]:
        return set(self.seeded[kind])

    def dsn_of(self, role: str, password: str) -> str:
        return make_conninfo(self.dsns.app_dsn, user=role, password=password)

    # -- the role_switch path's roles

    def _create_switch_roles(self) -> SwitchRoles:
        database = conninfo_to_dict(self.dsns.superuser_dsn).get("dbname") or "postgres"
        suffix = secrets.token_hex(4)
        roles = SwitchRoles(
            pooler=f"rls_paths_pooler_{suffix}",
            maintenance=f"rls_paths_maintenance_{suffix}",
            password=secrets.token_urlsafe(16),
        )
        pooler, maintenance = sql.Identifier(roles.pooler), sql.Identifier(roles.maintenance)
        statements = [
            sql.SQL("create role {} nologin bypassrls").format(maintenance),
            sql.SQL("create role {} login noinherit password {}").format(
                pooler, sql.Literal(roles.password)
            ),
            sql.SQL("grant {}, {} to {}").format(sql.Identifier(APP_ROLE), maintenance, pooler),
            sql.SQL("grant connect on database {} to {}").format(sql.Identifier(database), pooler),
            sql.SQL("grant usage on schema atendeai to {}").format(maintenance),
            sql.SQL("grant select on all tables in schema atendeai to {}").format(maintenance),
        ]
        if _has_helpers(self.truth):
            statements += [
                sql.SQL("grant usage on schema rls_paths to {}").format(maintenance),
                sql.SQL("grant select on all tables in schema rls_paths to {}").format(maintenance),
                sql.SQL("grant execute on all functions in schema rls_paths to {}").format(
                    maintenance
                ),
            ]
        with self.truth.transaction():
            for statement in statements:
                self.truth.execute(statement)
        return roles

    def _drop_switch_roles(self, roles: SwitchRoles) -> None:
        names = sql.SQL(", ").join(
            sql.Identifier(name) for name in (roles.pooler, roles.maintenance)
        )
        with self.truth.transaction():
            self.truth.execute(sql.SQL("drop owned by {}").format(names))
            self.truth.execute(sql.SQL("drop role {}").format(names))


def _has_helpers(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select 1 from pg_namespace where nspname = %s", [HELPER_SCHEMA])
    return row.fetchone() is not None


def set_context(conn: psycopg.Connection[Any], clinic: uuid.UUID | None) -> None:
    """The request context, set as the services set it (this transaction only)."""
    conn.execute(
        "select atendeai.set_request_context(%s, %s, %s, %s, %s)",
        [clinic, None, "198.51.100.9", "rls-paths", f"rls-paths-{uuid.uuid4().hex}"],
        prepare=False,
    )


def _seed_clinic(app: psycopg.Connection[Any], number: int) -> SeededClinic:
    clinic = SeededClinic(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    with app.transaction():
        set_context(app, clinic.id)
        insert_clinic(
            app,
            {"id": clinic.id, "name": f"Paths clinic {number}"},
            [
                {
                    "id": user,
                    "clinic_id": CONTEXT_CLINIC,
                    "name": f"{name} {number}",
                    "email": f"paths-{user}@rls-paths.test",
                    "password_hash": "x",
                    "role": "staff",
                }
                for user, name in ((clinic.staff, "Staff"), (clinic.newcomer, "Newcomer"))
            ],
        )
        app.execute(
            "insert into atendeai.sessions (id, clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, atendeai.current_clinic_id(), %s,"
            " gen_random_uuid(), 't', %s, now() + interval '1 hour')",
            [clinic.session, clinic.staff, uuid.uuid4().hex],
        )
        app.execute(
            "insert into atendeai.audit_logs (clinic_id, action)"
            " values (atendeai.current_clinic_id(), 'rls_paths.note')"
        )
    return clinic


# --- the statements of each path -----------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """A query returning ids of ``kind`` (or, with ``rowcount``, a statement whose
    row count is the number of ``kind`` rows it reached)."""

    label: str
    statement: str
    kind: str
    rowcount: bool = False


@dataclass(frozen=True)
class Write:
    """A cross-tenant write; parameters: ``victim_clinic``, ``victim_staff``,
    ``victim_newcomer``, ``victim_session``, ``own_newcomer``."""

    label: str
    statement: str


TABLES_READS = tuple(
    Read(f"select {kind}", f"select id from atendeai.{kind}", kind) for kind in KINDS
)
TABLES_WRITES = (
    Write(
        "update another clinic's user",
        "update atendeai.users set name = 'Hijacked' where id = %(victim_staff)s",
    ),
    Write(
        "rename another clinic",
        "update atendeai.clinics set name = 'Hijacked' where id = %(victim_clinic)s",
    ),
    Write(
        "delete another clinic's session",
        "delete from atendeai.sessions where id = %(victim_session)s",
    ),
    Write(
        "insert a user into another clinic",
        "insert into atendeai.users (clinic_id, name, email, password_hash, role) values"
        " (%(victim_clinic)s, 'Intruder', 'intruder-' || gen_random_uuid() || '@rls-paths.test',"
        " 'x', 'admin')",
    ),
    Write(
        "insert an audit row into another clinic",
        "insert into atendeai.audit_logs (clinic_id, action) values (%(victim_clinic)s, 'forged')",
    ),
    Write(
        "move one's own user into another clinic",
        "update atendeai.users set clinic_id = %(victim_clinic)s where id = %(own_newcomer)s",
    ),
)

CTE_READS = (
    Read("WITH", "with u as (select id from atendeai.users) select id from u", "users"),
    Read(
        "WITH ... AS MATERIALIZED",
        "with s as materialized (select id from atendeai.sessions) select id from s",
        "sessions",
    ),
    Read(
        "WITH RECURSIVE over the session chain",
        "with recursive chain as (select id from atendeai.sessions where parent_id is null"
        " union all select s.id from atendeai.sessions s join chain on s.parent_id = chain.id)"
        " select id from chain",
        "sessions",
    ),
    Read(
        "subquery in FROM",
        "select id from (select id, clinic_id from atendeai.users) as u",
        "users",
    ),
    Read(
        "IN subquery",
        "select id from atendeai.clinics where id in (select clinic_id from atendeai.audit_logs)",
        "clinics",
    ),
    Read(
        "EXISTS subquery",
        "select u.id from atendeai.users u"
        " where exists (select 1 from atendeai.clinics c where c.id = u.clinic_id)",
        "users",
    ),
    Read(
        "scalar subquery",
        "select unnest((select array_agg(id) from atendeai.audit_logs))",
        "audit_logs",
    ),
    Read(
        "LATERAL subquery",
        "select s.id from atendeai.users u"
        " cross join lateral (select id from atendeai.sessions where user_id = u.id) as s",
        "sessions",
    ),
)
CTE_WRITES = (
    Write(
        "data-modifying WITH: UPDATE another clinic's user",
        "with changed as (update atendeai.users set name = 'Hijacked'"
        " where id = %(victim_staff)s returning id) select count(*) from changed",
    ),
    Write(
        "data-modifying WITH: move one's own user into another clinic",
        "with moved as (update atendeai.users set clinic_id = %(victim_clinic)s"
        " where id = %(own_newcomer)s returning id) select count(*) from moved",
    ),
    Write(
        "data-modifying WITH: INSERT an audit row into another clinic",
        "with added as (insert into atendeai.audit_logs (clinic_id, action)"
        " values (%(victim_clinic)s, 'forged') returning id) select count(*) from added",
    ),
    Write(
        "data-modifying WITH: DELETE another clinic's session",
        "with gone as (delete from atendeai.sessions where id = %(victim_session)s"
        " returning id) select count(*) from gone",
    ),
    Write(
        "UPDATE with a scalar subquery",
        "update atendeai.sessions set revoked_at = now()"
        " where user_id = (select %(victim_staff)s::uuid)",
    ),
    Write(
        "INSERT ... SELECT from a subquery",
        "insert into atendeai.audit_logs (clinic_id, action)"
        " select victim.id, 'forged' from (select %(victim_clinic)s::uuid as id) as victim",
    ),
    Write(
        "DELETE with an IN subquery",
        "delete from atendeai.users where clinic_id in (select %(victim_clinic)s::uuid)",
    ),
)

FUNCTION_READS = (
    Read("inlined SQL function in FROM", "select id from rls_paths.clinic_staff()", "users"),
    Read(
        "inlined SQL function in LATERAL",
        "select s.id from atendeai.users u"
        " cross join lateral rls_paths.user_sessions(u.id) as s(id)",
        "sessions",
    ),
)
FUNCTION_WRITES = (
    Write(
        "SQL function renaming another clinic's user",
        "select rls_paths.rename_staff(%(victim_staff)s, 'Hijacked')",
    ),
    Write(
        "SQL function moving one's own user into another clinic",
        "select rls_paths.transfer_staff(%(own_newcomer)s, %(victim_clinic)s)",
    ),
    Write(
        "UPDATE of the rows an inlined SQL function returns",
        "update atendeai.users set name = 'Hijacked' where id in"
        " (select id from rls_paths.clinic_staff() where clinic_id = %(victim_clinic)s)",
    ),
)

VIEW_READS = (
    Read("security_invoker view", "select id from rls_paths.staff_directory", "users"),
    Read(
        "security_invoker join view", "select session_id from rls_paths.session_owners", "sessions"
    ),
    Read("security_invoker audit view", "select id from rls_paths.clinic_audit", "audit_logs"),
)
VIEW_WRITES = (
    Write(
        "UPDATE another clinic's user through the view",
        "update rls_paths.staff_directory set name = 'Hijacked' where id = %(victim_staff)s",
    ),
    Write(
        "move one's own user into another clinic through the view",
        "update rls_paths.staff_directory set clinic_id = %(victim_clinic)s"
        " where id = %(own_newcomer)s",
    ),
    Write(
        "DELETE another clinic's user through the view",
        "delete from rls_paths.staff_directory where id = %(victim_newcomer)s",
    ),
    Write(
        "INSERT an audit row into another clinic through the view",
        "insert into rls_paths.clinic_audit (clinic_id, action)"
        " values (%(victim_clinic)s, 'forged')",
    ),
)

MERGE_READS = (
    Read(
        "MERGE matches only the context's users",
        "merge into atendeai.users as t using (select unnest(%(world_users)s::uuid[]) as id) as s"
        " on t.id = s.id when matched then update set name = t.name",
        "users",
        rowcount=True,
    ),
    Read(
        "MERGE matches only the context's sessions",
        "merge into atendeai.sessions as t"
        " using (select unnest(%(world_sessions)s::uuid[]) as id) as s"
        " on t.id = s.id when matched then update set used_at = t.used_at",
        "sessions",
        rowcount=True,
    ),
)
MERGE_WRITES = (
    Write(
        "MERGE ... WHEN MATCHED THEN UPDATE another clinic's user",
        "merge into atendeai.users as t using (select %(victim_staff)s::uuid as id) as s"
        " on t.id = s.id when matched then update set name = 'Hijacked'",
    ),
    Write(
        "MERGE ... WHEN MATCHED THEN UPDATE moving one's own user into another clinic",
        "merge into atendeai.users as t using (select %(own_newcomer)s::uuid as id) as s"
        " on t.id = s.id when matched then update set clinic_id = %(victim_clinic)s",
    ),
    Write(
        "MERGE ... WHEN MATCHED THEN DELETE another clinic's session",
        "merge into atendeai.sessions as t using (select %(victim_session)s::uuid as id) as s"
        " on t.id = s.id when matched then delete",
    ),
    Write(
        "MERGE ... WHEN NOT MATCHED THEN INSERT a user into another clinic",
        "merge into atendeai.users as t using (select %(victim_staff)s::uuid as id) as s"
        " on t.id = s.id when matched then update set name = 'Hijacked'"
        " when not matched then insert (clinic_id, name, email, password_hash, role)"
        " values (%(victim_clinic)s, 'Intruder',"
        " 'intruder-' || gen_random_uuid() || '@rls-paths.test', 'x', 'admin')",
    ),
    Write(
        "MERGE ... WHEN NOT MATCHED THEN INSERT an audit row into another clinic",
        "merge into atendeai.audit_logs as t using (select gen_random_uuid() as id) as s"
        " on t.id = s.id when not matched then insert (clinic_id, action)"
        " values (%(victim_clinic)s, 'forged')",
    ),
)


@dataclass(frozen=True)
class PathStatements:
    reads: tuple[Read, ...]
    writes: tuple[Write, ...]
    needs_helpers: bool = False


STATEMENTS = {
    "tables": PathStatements(TABLES_READS, TABLES_WRITES),
    "cte_and_subqueries": PathStatements(CTE_READS, CTE_WRITES),
    "sql_function": PathStatements(FUNCTION_READS, FUNCTION_WRITES, needs_helpers=True),
    "security_invoker_view": PathStatements(VIEW_READS, VIEW_WRITES, needs_helpers=True),
    "merge": PathStatements(MERGE_READS, MERGE_WRITES),
}
#: Every path, in the order the checks run.
PATHS = (*STATEMENTS, "generic_plans", "role_switch")
#: The paths that need neither helper objects nor new cluster roles: these can
#: run against a database other tests use (the stack's).
SHARED_DATABASE_PATHS = ("tables", "cte_and_subqueries", "merge", "generic_plans")


# --- running them ----------------------------------------------------------------------------


@dataclass
class PathReport:
    path: str
    reads: int = 0
    writes: int = 0
    refused_with_error: int = 0
    generic_plans: int = 0
    custom_plans: int = 0
    role_switches: int = 0
    roles_reachable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {self.reads} reads, {self.writes} refused writes"
        if self.generic_plans or self.custom_plans:
            text += f", {self.generic_plans} generic / {self.custom_plans} custom plans"
        if self.role_switches:
            text += f", {self.role_switches} role switches"
        return text


#: Errors that mean "the database refused the write": RLS WITH CHECK and missing
#: privileges (42501), constraint violations (23xxx).
REFUSALS = (errors.InsufficientPrivilege, errors.IntegrityError)


class _Runner:
    """Runs one path's reads and writes on one connection and judges them."""

    def __init__(self, world: TenantWorld, path: str, report: PathReport, *, prepare: bool):
        self.world = world
        self.path = path
        self.report = report
        self.prepare = prepare
        #: (backend, statement) -> (its PREPAREd name, its parameters in $n order)
        self.prepared: dict[tuple[int, str], tuple[str, list[str]]] = {}

    def params(self, attacker: SeededClinic, victim: SeededClinic) -> dict[str, Any]:
        return {
            "victim_clinic": victim.id,
            "victim_staff": victim.staff,
            "victim_newcomer": victim.newcomer,
            "victim_session": victim.session,
            "own_newcomer": attacker.newcomer,
            "world_users": sorted(self.world.every_row("users")),
            "world_sessions": sorted(self.world.every_row("sessions")),
        }

    def _execute(
        self, conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]
    ) -> psycopg.Cursor[Any]:
        # Only the placeholders a statement uses (psycopg sends every one it is given).
        used = {key: value for key, value in params.items() if f"%({key})s" in statement}
        if not self.prepare:
            return conn.execute(statement, used, prepare=False)
        name, order = self._prepare(conn, statement)
        arguments = sql.SQL(", ").join(sql.Literal(used[key]) for key in order)
        call = sql.SQL("execute {}").format(sql.Identifier(name))
        if order:
            call += sql.SQL("({})").format(arguments)
        return conn.execute(call, prepare=False)

    def _prepare(self, conn: psycopg.Connection[Any], statement: str) -> tuple[str, list[str]]:
        """SQL PREPARE, once per connection: psycopg's own prepared statements are
        deallocated on every ROLLBACK (a refused write), which would end the reuse."""
        key = (conn.info.backend_pid, statement)
        if key not in self.prepared:
            order = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement)))
            text = re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m[1]) + 1}", statement)
            name = f"rls_path_{len(self.prepared) + 1}"
            conn.execute(
                sql.SQL("prepare {} as {}").format(sql.Identifier(name), sql.SQL(text)),
                prepare=False,
            )
            self.prepared[key] = (name, order)
        return self.prepared[key]

    def seen(
        self, conn: psycopg.Connection[Any], read: Read, params: dict[str, Any]
    ) -> set[uuid.UUID] | int:
        cursor = self._execute(conn, read.statement, params)
        if read.rowcount:
            return cursor.rowcount
        return {row[0] for row in cursor.fetchall()}

    def read_as(
        self,
        conn: psycopg.Connection[Any],
        clinic: SeededClinic | None,
        reads: Sequence[Read],
        *,
        where: str = "",
        local_role: str | None = None,
    ) -> None:
        """Under ``clinic``'s context (none: no context), every read sees exactly its
        rows; with ``local_role``, after ``SET LOCAL ROLE`` to it in the same transaction."""
        params = self.params(self.world.clinics[0], self.world.clinics[-1])
        with conn.transaction():
            if local_role is not None:
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(local_role)))
            set_context(conn, clinic.id if clinic else None)
            for read in reads:
                seen = self.seen(conn, read, params)
                expected = self.world.rows_of(read.kind, clinic.id if clinic else None)
                self.report.reads += 1
                if seen != (len(expected) if read.rowcount else expected):
                    self.leak(read, clinic, seen, expected, where)

    def leak(
        self,
        read: Read,
        clinic: SeededClinic | None,
        seen: set[uuid.UUID] | int,
        expected: set[uuid.UUID],
        where: str,
    ) -> None:
        context = f"clinic {clinic.id}'s context" if clinic else "no tenant context"
        if isinstance(seen, int):
            evidence = f"reached {seen} {read.kind} row(s), but the context owns {len(expected)}"
        else:
            others = {
                row: self.world.seeded[read.kind].get(row, ("not in the world",))[0]
                for row in seen - expected
            }
            evidence = (
                f"saw {len(seen)} {read.kind} row(s), expected {len(expected)}; "
                f"rows of other clinics: {others}; own rows missing: {sorted(expected - seen)}"
            )
        raise IsolationViolation(
            f"{self.path}: {read.label} under {context}{where}: {evidence} [{read.statement}]"
        )

    def attack(
        self,
        conn: psycopg.Connection[Any],
        attacker: SeededClinic,
        victim: SeededClinic,
        writes: Sequence[Write],
        *,
        where: str = "",
    ) -> None:
        """Every write, under ``attacker``'s context against ``victim``, changes nothing."""
        params = self.params(attacker, victim)
        for write in writes:
            try:
                with conn.transaction():
                    set_context(conn, attacker.id)
                    self._execute(conn, write.statement, params)
            except REFUSALS:
                self.report.refused_with_error += 1
            after = self.world.snapshot()
            self.report.writes += 1
            if after != self.world.seeded:
                raise IsolationViolation(
                    f"{self.path}: {write.label}: under clinic {attacker.id}'s context{where} "
                    f"the service role changed rows of the world: "
                    f"{_difference(self.world.seeded, after)} [{write.statement}]"
                )

    def read_and_attack_everywhere(
        self,
        conn: psycopg.Connection[Any],
        reads: Sequence[Read],
        writes: Sequence[Write],
    ) -> None:
        """Every context reads (then no context), each clinic attacks the next one
        (the last attacks the first, whose context ran first)."""
        clinics = self.world.clinics
        for clinic in clinics:
            self.read_as(conn, clinic, reads)
        self.read_as(conn, None, reads)
        for attacker, victim in zip(clinics, clinics[1:] + clinics[:1], strict=True):
            self.attack(conn, attacker, victim, writes)


def _difference(before: Snapshot, after: Snapshot) -> str:
    changes = []
    for kind in KINDS:
        old, new = before[kind], after[kind]
        for row in sorted(set(old) | set(new), key=str):
            if old.get(row) != new.get(row):
                changes.append(f"{kind} {row}: {old.get(row)} -> {new.get(row)}")
    return "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")


def _path_statements(world: TenantWorld, names: Sequence[str]) -> tuple[list[Read], list[Write]]:
    reads: list[Read] = []
    writes: list[Write] = []
    helpers = _has_helpers(world.truth)
    for name in names:
        statements = STATEMENTS[name]
        if statements.needs_helpers and not helpers:
            continue
        reads += statements.reads
        writes += statements.writes
    return reads, writes


def check_path(world: TenantWorld, path: str) -> PathReport:
    """Run one path against ``world``; raise ``IsolationViolation`` on a leak."""
    if path not in PATHS:
        raise ValueError(f"unknown RLS path {path!r}; the paths are {', '.join(PATHS)}")
    report = PathReport(path)
    if path in STATEMENTS:
        if STATEMENTS[path].needs_helpers and not _has_helpers(world.truth):
            raise ValueError(
                f"path {path} reads through schema {HELPER_SCHEMA}, which this database lacks: "
                "run install_helpers(owner_dsn) first (in a scratch database)"
            )
        with psycopg.connect(world.dsns.app_dsn, autocommit=True) as conn:
            runner = _Runner(world, path, report, prepare=False)
            runner.read_and_attack_everywhere(conn, STATEMENTS[path].reads, STATEMENTS[path].writes)
    elif path == "generic_plans":
        _check_generic_plans(world, report)
    else:
        _check_role_switch(world, report)
    return report


def _plan_counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "select coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
        " from pg_prepared_statements",
        prepare=False,
    ).fetchone()
    return int(row[0]), int(row[1])


def _check_generic_plans(world: TenantWorld, report: PathReport) -> None:
    """Every statement of the other paths, prepared once on one connection and
    reused with a generic plan across every tenant switch."""
    reads, writes = _path_statements(world, list(STATEMENTS))
    with psycopg.connect(world.dsns.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("set plan_cache_mode = force_generic_plan")
        runner = _Runner(world, "generic_plans", report, prepare=True)
        runner.read_and_attack_everywhere(conn, reads, writes)
        # And again, the first clinic last: its plans were made under another tenant.
        for clinic in reversed(world.clinics):
            runner.read_as(conn, clinic, reads, where=" (second round, reversed)")
        report.generic_plans, report.custom_plans = _plan_counts(conn)


def _check_role_switch(world: TenantWorld, report: PathReport) -> None:
    roles = world.roles
    if roles is None:
        raise ValueError(
            "path role_switch needs the pooler and maintenance roles: "
            "TenantWorld(..., switch_roles=True) (creates cluster roles: a scratch cluster)"
        )
    reads, writes = _path_statements(world, list(STATEMENTS))
    app_reads = reads
    # The maintenance role gets SELECT only: the statements it runs are the reads
    # without side effects (MERGE counts rows by updating them).
    plain_reads = [read for read in reads if not read.rowcount]
    runner = _Runner(world, "role_switch", report, prepare=True)
    everything = {kind: world.every_row(kind) for kind in KINDS}
    pooler_dsn = world.dsn_of(roles.pooler, roles.password)
    with psycopg.connect(pooler_dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("set plan_cache_mode = force_generic_plan")
        clinics = world.clinics
        for attacker, victim in zip(clinics, clinics[1:] + clinics[:1], strict=True):
            _set_role(conn, roles.maintenance)
            report.role_switches += 1
            _privileged_view_is_privileged(runner, conn, plain_reads, everything, roles)
            where = f" (SET ROLE {APP_ROLE} after {roles.maintenance}, as {roles.pooler})"
            _set_role(conn, APP_ROLE)
            report.role_switches += 1
            runner.read_as(conn, attacker, app_reads, where=where)
            runner.attack(conn, attacker, victim, writes, where=where)
            conn.execute("reset role")
        # SET LOCAL ROLE: the switch lasts one transaction, as a pooler's per-request
        # switch; in between, the maintenance role plans the same statements again.
        for clinic in clinics:
            _set_role(conn, roles.maintenance)
            _privileged_view_is_privileged(runner, conn, plain_reads, everything, roles)
            conn.execute("reset role")
            runner.read_as(
                conn,
                clinic,
                app_reads,
                where=f" (SET LOCAL ROLE {APP_ROLE} in a session of {roles.pooler})",
                local_role=APP_ROLE,
            )
            report.role_switches += 2
    _check_roles_the_service_role_reaches(world, plain_reads, report)


def _set_role(conn: psycopg.Connection[Any], role: str) -> None:
    conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))


def _privileged_view_is_privileged(
    runner: _Runner,
    conn: psycopg.Connection[Any],
    reads: Sequence[Read],
    everything: dict[str, set[uuid.UUID]],
    roles: SwitchRoles,
) -> None:
    """The maintenance role sees every clinic: else the switch tests nothing."""
    params = runner.params(runner.world.clinics[0], runner.world.clinics[-1])
    for read in reads:
        seen = runner.seen(conn, read, params)
        if isinstance(seen, int) or not everything[read.kind] <= seen:
            raise RuntimeError(
                f"role_switch: {roles.maintenance} (BYPASSRLS) should see every clinic's "
                f"{read.kind} through {read.label}, but saw {seen}: the check cannot run"
            )


def _check_roles_the_service_role_reaches(
    world: TenantWorld, reads: Sequence[Read], report: PathReport
) -> None:
    """Every role the service role may SET ROLE to sees no other clinic's rows
    (or nothing at all: a role without the privileges is refused)."""
    runner = _Runner(world, "role_switch", report, prepare=False)
    with psycopg.connect(world.dsns.app_dsn, autocommit=True) as conn:
        reachable = [
            row[0]
            for row in conn.execute(
                "select rolname from pg_roles where rolname <> current_user"
                " and pg_has_role(current_user, oid, 'member') order by rolname"
            )
        ]
        report.roles_reachable = reachable
        clinic = world.clinics[0]
        for role in reachable:
            with conn.transaction():
                set_context(conn, clinic.id)
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                report.role_switches += 1
                for read in reads:
                    try:
                        with conn.transaction():
                            seen = runner.seen(conn, read, runner.params(clinic, clinic))
                    except errors.InsufficientPrivilege:
                        continue  # the role cannot read it at all: it sees nothing
                    expected = world.rows_of(read.kind, clinic.id)
                    report.reads += 1
                    if not seen <= expected:
                        runner.leak(
                            read, clinic, seen, expected, f" (the service role did SET ROLE {role})"
                        )


__all__ = [
    "HELPERS_SQL",
    "PATHS",
    "SHARED_DATABASE_PATHS",
    "PathReport",
    "SwitchRoles",
    "TenantWorld",
    "check_path",
    "helpers_are_as_declared",
    "install_helpers",
]
