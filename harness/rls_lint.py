"""RLS lint: read a live database's catalogs and report every way its row level
security can fail silently (DESIGN.md section 7), each finding with the
object's name and the fix.

It only reads (``pg_catalog`` and privilege functions), so any role that can
connect will do, the service role included: point it at a scratch database,
the local stack or a staging server.

What it checks, by finding ``check`` name:

==========================  ===============================================================
``server_version``          PostgreSQL has the RLS CVE fixes (15.9, 16.5, 17.1 or later; 7.13)
``schema_missing``          the schema exists and has tables
``rls_enabled``             every table has row level security enabled (7.2)
``rls_forced``              ... and forced, so the owner is subject to it too (7.2)
``policy_not_restrictive``  every table has a RESTRICTIVE policy for all commands, so a
                            permissive policy added later cannot widen access (7.6)
``policy_without_check``    every INSERT policy has a WITH CHECK (7.5); for ALL/UPDATE its
                            absence is a note (PostgreSQL checks new rows with USING)
``policy_always_true``      no ``USING (true)`` / ``WITH CHECK (true)`` or other constant (7.6)
``policy_not_tenant``       every policy expression refers to the tenant context (7.6;
                            detected, see below)
``role_missing``            the service role exists
``role_superuser``          the service role is not a superuser (7.1)
``role_bypassrls``          ... has no BYPASSRLS (7.1)
``role_createrole``         ... has no CREATEROLE (it could grant itself any role; 7.1)
``role_member``             ... is not a member of a superuser, BYPASSRLS or CREATEROLE role,
                            of a role owning the schema's objects, or of pg_read/write_all_data
``role_owns``               ... owns nothing in the schema, nor the database (7.2)
``definer_search_path``     SECURITY DEFINER functions pin a safe ``search_path`` (7.4)
``definer_public``          ... are not executable by PUBLIC (7.4)
``definer_executable``      (note) which of them the service role can execute, as whom (7.4)
``trigger_definer``         trigger functions on the tables run as the invoker, so audit rows
                            get the context's clinic and pass RLS (7.12)
``view_security_invoker``   views run with the caller's rights (``security_invoker``; 7.3)
``materialized_view``       no materialized views (they have no RLS at all; 7.3)
``dangerous_grant``         no TRUNCATE, REFERENCES or TRIGGER for the service role (7.11)
``fk_without_tenant``       every FK between tenant tables includes the tenant column (7.10)
``unique_without_tenant``   every unique constraint or index on a tenant table includes the
                            tenant column, or a caller learns whether a value exists in
                            another tenant from a unique violation (7.9; see below)
``context_session_level``   the function that sets the tenant context sets every value for
                            the transaction only (``set_config(.., true)``, ``SET LOCAL``; 7.8)
``secret_readable``         the service role cannot SELECT a secret column (``password_hash``..)
``audit_writable``          the service role cannot UPDATE, DELETE or TRUNCATE the audit table
``audit_trigger_missing``   every tenant table has an enabled audit trigger for INSERT, UPDATE
                            and DELETE (bar ``--unaudited`` ones); a note when no trigger
                            function writes the audit table at all (services may audit)
``audit_no_actor``          every audit function records the acting user
``name_not_found``          the tenant column is some table's, and the tables named with
                            ``--tenant-root`` / ``--audit-table`` exist (else: a wrong option)
==========================  ===============================================================

The tenant context is detected, not assumed: the settings that the policies
compare the tenant column with (``current_setting('app.tenant')`` written in
the policy or read by a function it calls, such as ``current_clinic_id()``).
``--tenant-setting`` names it instead. The table of tenants is the one the
tenant column references (``--tenant-root`` names it instead). Audit tables are
the tables whose name contains ``audit`` (or ``--audit-table``); audit
functions are the trigger functions that insert into one; the acting user is
``current_user``/``session_user`` or a setting or function whose name ends in
user, actor or uid (``app.user_id``, ``current_actor()``; not ``app.user_agent``).

``unique_without_tenant`` leaves out keys whose values the database generates
(a single column with an identity, a sequence default or a random uuid
default): a caller cannot pick another tenant's value to probe with, nor learn
anything from one. Keys of columns named like tokens (``refresh_token_hash``)
are notes: random secrets or their digests cannot be guessed. The table of
tenants itself (its id, its globally unique slug) is not tenant-scoped.

Findings of severity ``error`` make ``main`` exit 1; ``note`` findings are
reported but do not fail the lint.

Command line (wired as ``atendeai lint-rls``)::

    python -m harness.rls_lint --dsn DSN [--app-role atendeai_app] [--schema atendeai]
        [--tenant-column clinic_id] [--tenant-root TABLE] [--tenant-setting NAME]
        [--secret-columns A,B] [--audit-table TABLE] [--unaudited A,B] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness.exceptions import LintError

ERROR = "error"
NOTE = "note"

DEFAULT_APP_ROLE = "atendeai_app"
DEFAULT_SCHEMA = "atendeai"
DEFAULT_TENANT_COLUMN = "clinic_id"
DEFAULT_TENANT_ROOT = "clinics"
#: Columns only a SECURITY DEFINER lookup may read (password hashes by their usual names).
DEFAULT_SECRET_COLUMNS = ("password_hash", "password_digest", "encrypted_password")
#: Tenant tables deliberately left without an audit trigger: the platform's
#: sessions are token bookkeeping (every login and refresh writes one; the
#: services audit those events as ``auth.*`` rows themselves).
DEFAULT_UNAUDITED = ("sessions",)
#: A single-column key whose default is one of these is generated by the database.
GENERATED_DEFAULT = re.compile(r"nextval\(|gen_random_uuid\(|uuid_generate_v4\(|uuidv[47]\(")
#: A setting or function naming who changed the row (``app.user_id``, ``current_actor``,
#: ``auth.uid``; not ``app.user_agent``).
ACTOR = re.compile(r"(^|[._])((user|actor|member|account)(_?id|_?name)?|uid)$", re.I)
#: The first release of each major with the fixes for CVE-2023-2455 and
#: CVE-2024-10976 (RLS policies applied for the wrong role); ``server_version_num``.
MIN_SERVER_VERSION = {15: 150009, 16: 160005, 17: 170001}
#: Predefined roles that read or write every table regardless of grants.
BROAD_PREDEFINED_ROLES = ("pg_read_all_data", "pg_write_all_data")
DANGEROUS_PRIVILEGES = ("TRUNCATE", "REFERENCES", "TRIGGER")


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or fact worth a look (``note``), with its fix."""

    check: str
    severity: str
    object: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.severity.upper():5} {self.check:22} {self.object}: {self.problem}"


@dataclass(frozen=True)
class LintReport:
    target: str
    schema: str
    app_role: str
    server_version: str
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    tables: tuple[str, ...] = field(default_factory=tuple)
    #: What the tenant checks went by (given or detected).
    tenant_column: str = DEFAULT_TENANT_COLUMN
    tenant_root: str = DEFAULT_TENANT_ROOT
    tenant_settings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def notes(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == NOTE)

    @property
    def ok(self) -> bool:
        return not self.errors

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "schema": self.schema,
            "app_role": self.app_role,
            "server_version": self.server_version,
            "tables": list(self.tables),
            "tenant_column": self.tenant_column,
            "tenant_root": self.tenant_root,
            "tenant_settings": list(self.tenant_settings),
            "ok": self.ok,
            "errors": len(self.errors),
            "notes": len(self.notes),
            "findings": [asdict(f) for f in self.findings],
        }

    def render(self) -> str:
        lines = [
            f"rls-lint: {self.target}, schema {self.schema}, service role {self.app_role}, "
            f"PostgreSQL {self.server_version}, {len(self.tables)} table(s)",
            f"tenants: column {self.tenant_column}, table {self.tenant_root}, context "
            f"{', '.join(self.tenant_settings) or '(none detected)'}",
        ]
        for finding in sorted(self.findings, key=lambda f: (f.severity != ERROR, f.check)):
            lines.append(finding.line())
            lines.append(f"      fix: {finding.fix}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {len(self.errors)} error(s), {len(self.notes)} note(s)")
        return "\n".join(lines)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password (URL or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            user = parts.username or ""
            parts = parts._replace(netloc=f"{user}:***@{host}")
        return urlunsplit(parts)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)


def server_version_findings(version_num: int, *, minimum: int | None = None) -> list[Finding]:
    """``server_version_num`` against the first release with the RLS CVE fixes."""
    major = version_num // 10000
    required = minimum
    if required is None:
        if major < min(MIN_SERVER_VERSION):
            required = MIN_SERVER_VERSION[min(MIN_SERVER_VERSION)]
        else:
            required = MIN_SERVER_VERSION.get(major, 0)  # a newer major has the fixes
    if version_num >= required:
        return []
    return [
        Finding(
            "server_version",
            ERROR,
            f"server {_version_text(version_num)}",
            f"server_version_num {version_num} is below {required}: it lacks the fixes "
            "for CVE-2023-2455 / CVE-2024-10976 (RLS policies checked for the wrong role)",
            f"upgrade PostgreSQL to {_version_text(required)} or later",
        )
    ]


def _version_text(num: int) -> str:
    return f"{num // 10000}.{num % 10000}"


# --------------------------------------------------------------------------- lint


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+")


def check_identifier(value: str, what: str) -> str:
    """``value`` if it is a plain SQL name (as the catalogs spell it), else ValueError."""
    if not _IDENTIFIER.fullmatch(value) or len(value.encode()) > 63:
        raise ValueError(
            f"{what} {value!r} is not a plain SQL name (letters, digits, _ and $, not "
            "starting with a digit, at most 63 bytes)"
        )
    return value


def check_setting_name(value: str) -> str:
    """``value`` if it is a custom setting's name (``prefix.name``), else ValueError."""
    if not _SETTING_NAME.fullmatch(value):
        raise ValueError(
            f"tenant setting {value!r} is not a custom setting name (like app.current_tenant: "
            "names of letters, digits and _ joined by dots)"
        )
    return value


@dataclass(frozen=True)
class Conventions:
    """How the schema marks tenants, secrets and its audit trail (``None``: detect)."""

    tenant_column: str = DEFAULT_TENANT_COLUMN
    tenant_root: str | None = None
    tenant_setting: str | None = None
    secret_columns: tuple[str, ...] = DEFAULT_SECRET_COLUMNS
    audit_table: str | None = None
    unaudited: tuple[str, ...] = DEFAULT_UNAUDITED

    def __post_init__(self) -> None:
        check_identifier(self.tenant_column, "tenant column")
        for what, name in (("tenant root", self.tenant_root), ("audit table", self.audit_table)):
            if name is not None:
                check_identifier(name, what)
        for name in self.secret_columns:
            check_identifier(name, "secret column")
        for name in self.unaudited:
            check_identifier(name, "unaudited table")
        if self.tenant_setting is not None:
            check_setting_name(self.tenant_setting)


def lint_database(
    dsn: str,
    *,
    app_role: str = DEFAULT_APP_ROLE,
    schema: str = DEFAULT_SCHEMA,
    conventions: Conventions = Conventions(),
    min_server_version: int | None = None,
) -> LintReport:
    """Connect to ``dsn``, read the catalogs, and return every finding."""
    import psycopg

    if not dsn.strip():
        # libpq would fall back to PG* variables and the default socket: never guess.
        raise LintError("an empty DSN: say which database to check")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as error:
        raise LintError(f"cannot connect to {redact_dsn(dsn)}: {error}".strip()) from error
    with conn:
        try:
            # Names print schema-qualified (functions in public too), and nothing the
            # lint reads resolves through a schema the database's users can write.
            conn.execute("set search_path = pg_catalog")
            return _Linter(
                conn,
                target=redact_dsn(dsn),
                app_role=app_role,
                schema=schema,
                conventions=conventions,
                min_server_version=min_server_version,
            ).run()
        except psycopg.Error as error:
            raise LintError(f"reading the catalogs of {redact_dsn(dsn)} failed: {error}") from error


class _Linter:
    def __init__(
        self,
        conn: Any,
        *,
        target: str,
        app_role: str,
        schema: str,
        conventions: Conventions,
        min_server_version: int | None,
    ) -> None:
        self.conn = conn
        self.target = target
        self.app_role = app_role
        self.schema = schema
        self.conventions = conventions
        self.tenant_column = conventions.tenant_column
        self.tenant_root = conventions.tenant_root or DEFAULT_TENANT_ROOT  # detected in run()
        self.tenant_settings: set[str] = set()  # detected in check_policies()
        self.min_server_version = min_server_version
        self.findings: list[Finding] = []
        self.role_exists = False

    def rows(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
        return list(self.conn.execute(query, params).fetchall())

    def add(self, check: str, obj: str, problem: str, fix: str, severity: str = ERROR) -> None:
        self.findings.append(Finding(check, severity, obj, problem, fix))

    def q(self, name: str) -> str:
        """``schema.name``, quoted like PostgreSQL would print it."""
        return f"{_ident(self.schema)}.{_ident(name)}"

    def run(self) -> LintReport:
        version_text, version_num = self.rows(
            "select current_setting('server_version'), current_setting('server_version_num')::int"
        )[0]
        self.findings += server_version_findings(version_num, minimum=self.min_server_version)
        self.functions = self.load_functions()
        self.tenant_tables = self.find_tenant_tables()
        tables = self.check_tables()
        self.check_role()
        self.check_functions()
        self.check_context_functions()
        self.check_views()
        if self.role_exists:
            self.check_grants()
            self.check_secret_columns()
        self.check_foreign_keys()
        self.check_unique_keys()
        self.check_audit(tables)
        return LintReport(
            target=self.target,
            schema=self.schema,
            app_role=self.app_role,
            server_version=version_text,
            findings=tuple(self.findings),
            tables=tuple(tables),
            tenant_column=self.tenant_column,
            tenant_root=self.tenant_root,
            tenant_settings=tuple(sorted(self.tenant_settings)),
        )

    # -- the schema's conventions: tenant tables, the table of tenants, function bodies

    def find_tenant_tables(self) -> set[str]:
        """Tables with the tenant column; detects the table of tenants it references."""
        tenant_tables = {
            name
            for (name,) in self.rows(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " join pg_attribute a on a.attrelid = c.oid"
                " where n.nspname = %s and c.relkind in ('r', 'p') and a.attname = %s"
                " and not a.attisdropped",
                [self.schema, self.tenant_column],
            )
        }
        tables = {
            name
            for (name,) in self.rows(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = %s and c.relkind in ('r', 'p')",
                [self.schema],
            )
        }
        if tables and not tenant_tables:
            self.add(
                "name_not_found",
                f"schema {_ident(self.schema)}",
                f"no table has a column {self.tenant_column}: the tenant checks have nothing "
                "to check",
                "name the column that holds a row's tenant with --tenant-column",
            )
        if self.conventions.tenant_root is not None:
            if tables and self.tenant_root not in tables:
                self.add(
                    "name_not_found",
                    f"table {self.q(self.tenant_root)}",
                    "the table of tenants given with --tenant-root does not exist",
                    "name the table the tenant column references with --tenant-root",
                )
            return tenant_tables
        referenced = self.rows(
            "select dst.relname from pg_constraint con"
            " join pg_class src on src.oid = con.conrelid"
            " join pg_class dst on dst.oid = con.confrelid"
            " join pg_namespace n on n.oid = src.relnamespace"
            " join pg_attribute a on a.attrelid = con.conrelid and a.attnum = con.conkey[1]"
            " where con.contype = 'f' and n.nspname = %s and cardinality(con.conkey) = 1"
            " and a.attname = %s and dst.relnamespace = src.relnamespace"
            " group by dst.relname order by count(*) desc, dst.relname limit 1",
            [self.schema, self.tenant_column],
        )
        if referenced:
            self.tenant_root = referenced[0][0]
        return tenant_tables

    def load_functions(self) -> list[_Function]:
        """Every function written in SQL or a procedural language, outside the system schemas."""
        return [
            _Function(oid, signature, schema, name, is_trigger, _strip_comments(body or ""))
            for oid, signature, schema, name, is_trigger, body in self.rows(
                "select p.oid, p.oid::regprocedure::text, n.nspname, p.proname,"
                " p.prorettype = 'trigger'::regtype,"
                " case when p.prosrc = '' then pg_get_functiondef(p.oid) else p.prosrc end"
                " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                " join pg_language l on l.oid = p.prolang"
                " where n.nspname not in ('pg_catalog', 'information_schema')"
                " and left(n.nspname, 3) <> 'pg_' and p.prokind in ('f', 'p')"
                " and l.lanname not in ('c', 'internal') order by 2"
            )
        ]

    def settings_read(self, text: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """Settings ``text`` reads with ``current_setting``, itself or in functions it calls."""
        found = set(_SETTING_READ.findall(text))
        called = set(_CALL.findall(text)) - seen
        for function in self.functions:
            if function.name in called:
                found |= self.settings_read(function.body, seen | {function.name})
        return found

    def check_tables(self) -> list[str]:
        exists = self.rows("select 1 from pg_namespace where nspname = %s", [self.schema])
        tables = self.rows(
            "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relkind in ('r', 'p') order by c.relname",
            [self.schema],
        )
        if not exists or not tables:
            what = "does not exist" if not exists else "has no tables"
            self.add(
                "schema_missing",
                f"schema {_ident(self.schema)}",
                f"the schema {what}: nothing to check (wrong --schema or database?)",
                "point --dsn at the platform's database and --schema at its tenant schema",
            )
            return []
        for name, enabled, forced in tables:
            qualified = self.q(name)
            if not enabled:
                self.add(
                    "rls_enabled",
                    f"table {qualified}",
                    "row level security is not enabled: every role with a grant sees every row",
                    f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;",
                )
            elif not forced:
                self.add(
                    "rls_forced",
                    f"table {qualified}",
                    "row level security is enabled but not forced: the table's owner "
                    "(and anything running as it) bypasses every policy",
                    f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY;",
                )
        self.check_policies([name for name, _, _ in tables])
        return [name for name, _, _ in tables]

    def check_policies(self, tables: list[str]) -> None:
        policies = self.rows(
            "select c.relname, p.polname, p.polpermissive, p.polcmd,"
            " pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)"
            " from pg_policy p join pg_class c on c.oid = p.polrelid"
            " join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s"
            " order by c.relname, p.polname",
            [self.schema],
        )
        restrictive_all = {
            table for table, _, permissive, cmd, _, _ in policies if not permissive and cmd == "*"
        }
        for table in tables:
            if table not in restrictive_all:
                qualified = self.q(table)
                self.add(
                    "policy_not_restrictive",
                    f"table {qualified}",
                    "no RESTRICTIVE policy for all commands: permissive policies are OR'ed, "
                    "so any permissive policy added later (a stray USING (true)) widens access",
                    f"CREATE POLICY tenant_guard ON {qualified} AS RESTRICTIVE FOR ALL "
                    f"USING ({self.tenant_column} = <tenant context>) "
                    f"WITH CHECK ({self.tenant_column} = <tenant context>);",
                )
        self.tenant_settings = self.detect_tenant_settings(policies)
        context = (
            f"the tenant context (setting {', '.join(sorted(self.tenant_settings))})"
            if self.tenant_settings
            else f"a tenant context: none was detected (no policy compares {self.tenant_column} "
            "with a current_setting(...), in itself or through a function it calls)"
        )
        commands = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
        for table, name, permissive, cmd, qual, with_check in policies:
            obj = f"policy {_ident(name)} on {self.q(table)}"
            kind = "PERMISSIVE" if permissive else "RESTRICTIVE"
            command = commands.get(cmd, cmd)
            if command == "INSERT" and with_check is None:
                self.add(
                    "policy_without_check",
                    obj,
                    f"{kind} policy for INSERT has no WITH CHECK: it states nothing about what "
                    "may be inserted (as RESTRICTIVE it restricts nothing)",
                    f"ALTER POLICY {_ident(name)} ON {self.q(table)} WITH CHECK "
                    f"({self.tenant_column} = <tenant context>);",
                )
            elif command in ("ALL", "UPDATE") and with_check is None:
                self.add(
                    "policy_without_check",
                    obj,
                    f"{kind} policy for {command} has no WITH CHECK: PostgreSQL checks new "
                    "and changed rows with its USING instead, which is safe while USING stays "
                    "tenant-scoped",
                    f"optional: ALTER POLICY {_ident(name)} ON {self.q(table)} WITH CHECK "
                    "(<the USING predicate>); to say so explicitly",
                    severity=NOTE,
                )
            for clause, expression in (("USING", qual), ("WITH CHECK", with_check)):
                if expression is None:
                    continue
                if _always_true(expression):
                    self.add(
                        "policy_always_true",
                        obj,
                        f"{kind} policy {clause} ({expression}) is always true: "
                        "it lets every row through",
                        f"DROP POLICY {_ident(name)} ON {self.q(table)};  (or scope it "
                        "to the tenant context)",
                    )
                elif not self.settings_read(expression) & self.tenant_settings:
                    self.add(
                        "policy_not_tenant",
                        obj,
                        f"{kind} policy {clause} ({expression}) does not refer to {context}",
                        f"make the {clause} predicate compare {self.tenant_column} with the "
                        "tenant context, or drop the policy"
                        + ("" if self.tenant_settings else "; or name it with --tenant-setting"),
                    )

    def detect_tenant_settings(self, policies: list[tuple]) -> set[str]:
        """``--tenant-setting``, else the settings policies compare the tenant column with."""
        if self.conventions.tenant_setting is not None:
            return {self.conventions.tenant_setting}
        column = re.compile(rf"\b{re.escape(self.tenant_column)}\b")
        return {
            setting
            for _, _, _, _, qual, with_check in policies
            for expression in (qual, with_check)
            if expression is not None and column.search(expression)
            for setting in self.settings_read(expression)
        }

    # -- the service role

    def check_role(self) -> None:
        role = self.rows(
            "select rolsuper, rolbypassrls, rolcreaterole from pg_roles where rolname = %s",
            [self.app_role],
        )
        obj = f"role {_ident(self.app_role)}"
        if not role:
            self.add(
                "role_missing",
                obj,
                "the service role does not exist, so its rights cannot be checked",
                "pass the role the services connect as with --app-role",
            )
            return
        self.role_exists = True
        superuser, bypassrls, createrole = role[0]
        if superuser:
            self.add(
                "role_superuser",
                obj,
                "the service role is a superuser: row level security does not apply to it",
                f"ALTER ROLE {_ident(self.app_role)} NOSUPERUSER;",
            )
        if bypassrls:
            self.add(
                "role_bypassrls",
                obj,
                "the service role has BYPASSRLS: every policy is skipped",
                f"ALTER ROLE {_ident(self.app_role)} NOBYPASSRLS;",
            )
        if createrole:
            self.add(
                "role_createrole",
                obj,
                "the service role has CREATEROLE: it can grant itself membership in "
                "the owner's role and act as it",
                f"ALTER ROLE {_ident(self.app_role)} NOCREATEROLE;",
            )
        owners = {
            owner
            for (owner,) in self.rows(
                "select distinct pg_get_userbyid(owner) from ("
                " select nspowner as owner from pg_namespace where nspname = %(s)s"
                " union all select c.relowner from pg_class c join pg_namespace n"
                "  on n.oid = c.relnamespace where n.nspname = %(s)s"
                " union all select p.proowner from pg_proc p join pg_namespace n"
                "  on n.oid = p.pronamespace where n.nspname = %(s)s) o",
                {"s": self.schema},
            )
        }
        memberships = self.rows(
            "select r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole from pg_roles r"
            " where r.rolname <> %(role)s and pg_has_role(%(role)s, r.oid, 'MEMBER')",
            {"role": self.app_role},
        )
        for name, r_super, r_bypass, r_create, *_ in memberships:
            reasons = []
            if r_super:
                reasons.append("a superuser")
            if r_bypass:
                reasons.append("has BYPASSRLS")
            if r_create:
                reasons.append("has CREATEROLE")
            if name in owners:
                reasons.append(f"owns objects in schema {self.schema}")
            if name in BROAD_PREDEFINED_ROLES:
                reasons.append("reads or writes every table regardless of grants")
            if name == "pg_database_owner":
                continue  # reported as role_owns (the database) below
            if reasons:
                self.add(
                    "role_member",
                    obj,
                    f"the service role is a member of {_ident(name)}, which "
                    f"{' and '.join(reasons)}: SET ROLE {_ident(name)} gets around isolation",
                    f"REVOKE {_ident(name)} FROM {_ident(self.app_role)};",
                )
        owned = self.rows(
            "select kind, name from ("
            " select 'schema' as kind, nspname::text as name from pg_namespace"
            "  where nspname = %(s)s and nspowner = %(role)s::regrole"
            " union all select case c.relkind when 'r' then 'table' when 'p' then 'table'"
            "  when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'"
            "  else 'relation' end, n.nspname || '.' || c.relname from pg_class c"
            "  join pg_namespace n on n.oid = c.relnamespace"
            "  where n.nspname = %(s)s and c.relowner = %(role)s::regrole"
            "   and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')"
            " union all select 'function', n.nspname || '.' || p.proname from pg_proc p"
            "  join pg_namespace n on n.oid = p.pronamespace"
            "  where n.nspname = %(s)s and p.proowner = %(role)s::regrole"
            " union all select 'database', datname::text from pg_database"
            "  where datname = current_database() and datdba = %(role)s::regrole"
            ") o order by kind, name",
            {"s": self.schema, "role": self.app_role},
        )
        for kind, name in owned:
            self.add(
                "role_owns",
                f"{kind} {name}",
                f"owned by the service role {self.app_role}: an owner is exempt from "
                "non-forced RLS and can change or drop the policies",
                f"ALTER {kind.upper()} {name} OWNER TO <the migration owner role>;",
            )

    # -- functions

    def check_functions(self) -> None:
        functions = self.rows(
            "select p.oid, p.oid::regprocedure::text, pg_get_userbyid(p.proowner),"
            " o.rolsuper or o.rolbypassrls, p.proconfig,"
            " coalesce(p.proacl is null or exists (select 1 from aclexplode(p.proacl) a"
            "   where a.grantee = 0 and a.privilege_type = 'EXECUTE'), false)"
            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " join pg_roles o on o.oid = p.proowner"
            " where n.nspname = %s and p.prosecdef order by 2",
            [self.schema],
        )
        writable = {
            name
            for (name,) in self.rows(
                "select nspname from pg_namespace where has_schema_privilege(%s, oid, 'CREATE')"
                " or nspname = 'public'",
                [self.app_role if self.role_exists else "public"],
            )
        }
        for oid, signature, owner, owner_bypasses, config, public_execute in functions:
            obj = f"function {signature}"
            search_path = _search_path(config or [])
            if search_path is None:
                self.add(
                    "definer_search_path",
                    obj,
                    f"SECURITY DEFINER (runs as {owner}) without a pinned search_path: "
                    "the caller can put objects of its own in front of the ones it means",
                    f"ALTER FUNCTION {signature} SET search_path = pg_catalog, pg_temp;",
                )
            else:
                risky = [
                    s
                    for s in search_path
                    if s in writable or s == "$user" or (s != "pg_temp" and s.startswith("pg_temp"))
                ]
                if risky or (search_path and search_path[0] == "pg_temp"):
                    self.add(
                        "definer_search_path",
                        obj,
                        f"SECURITY DEFINER search_path {', '.join(search_path)} contains "
                        f"{', '.join(risky) or 'pg_temp first'}, where the caller can create "
                        "objects",
                        f"ALTER FUNCTION {signature} SET search_path = pg_catalog, pg_temp;",
                    )
            if public_execute:
                self.add(
                    "definer_public",
                    obj,
                    f"SECURITY DEFINER (runs as {owner}) and executable by PUBLIC: every "
                    "role that can connect gets its owner's rights through it",
                    f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC; then GRANT EXECUTE "
                    "to the roles that need it",
                )
            if self.role_exists and self.rows(
                "select 1 where has_function_privilege(%s, %s::oid, 'EXECUTE')",
                [self.app_role, oid],
            ):
                bypass = " (which bypasses RLS)" if owner_bypasses else ""
                self.add(
                    "definer_executable",
                    obj,
                    f"the service role can execute it; it runs as {owner}{bypass}: make sure "
                    "it cannot return or change another tenant's rows for any argument",
                    "review its body; revoke EXECUTE from the service role if it does not need it",
                    severity=NOTE,
                )
        triggers = self.rows(
            "select distinct t.tgfoid::regprocedure::text, c.relname, pg_get_userbyid(p.proowner)"
            " from pg_trigger t join pg_class c on c.oid = t.tgrelid"
            " join pg_namespace n on n.oid = c.relnamespace join pg_proc p on p.oid = t.tgfoid"
            " where n.nspname = %s and not t.tgisinternal and p.prosecdef order by 1, 2",
            [self.schema],
        )
        for signature, table, owner in triggers:
            self.add(
                "trigger_definer",
                f"function {signature} (trigger on {self.q(table)})",
                f"the trigger function is SECURITY DEFINER (runs as {owner}): rows it writes "
                "(audit rows) skip the caller's RLS and can land in any clinic",
                f"ALTER FUNCTION {signature} SECURITY INVOKER;",
            )

    # -- views

    def check_views(self) -> None:
        views = self.rows(
            "select c.relname, c.relkind, coalesce(c.reloptions, '{}') from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relkind in ('v', 'm') order by c.relname",
            [self.schema],
        )
        for name, kind, options in views:
            qualified = self.q(name)
            if kind == "m":
                self.add(
                    "materialized_view",
                    f"materialized view {qualified}",
                    "a materialized view holds a copy of the rows with no row level security",
                    f"DROP MATERIALIZED VIEW {qualified}; (use a security_invoker view)",
                )
                continue
            settings = dict(option.split("=", 1) for option in options if "=" in option)
            if settings.get("security_invoker", "false").lower() not in ("true", "on", "1", "yes"):
                self.add(
                    "view_security_invoker",
                    f"view {qualified}",
                    "the view runs with its owner's rights: the owner's RLS (or none) "
                    "applies, not the caller's",
                    f"ALTER VIEW {qualified} SET (security_invoker = true);",
                )

    # -- grants

    def check_grants(self) -> None:
        relations = self.rows(
            "select c.oid, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm', 'f') order by c.relname",
            [self.schema],
        )
        for oid, name in relations:
            granted = [
                privilege
                for privilege in DANGEROUS_PRIVILEGES
                if self.rows(
                    "select 1 where has_table_privilege(%(role)s, %(oid)s::oid, %(p)s)"
                    " or (%(p)s = 'REFERENCES'"
                    "     and has_any_column_privilege(%(role)s, %(oid)s::oid, %(p)s))",
                    {"role": self.app_role, "oid": oid, "p": privilege},
                )
            ]
            for privilege in granted:
                self.add(
                    "dangerous_grant",
                    f"table {self.q(name)}",
                    f"the service role has {privilege}, which acts outside row level "
                    "security (TRUNCATE empties every tenant; REFERENCES probes other "
                    "tenants' keys; TRIGGER runs code on their rows)",
                    f"REVOKE {privilege} ON {self.q(name)} FROM {_ident(self.app_role)};"
                    " (and from PUBLIC)",
                )

    # -- foreign keys

    def check_foreign_keys(self) -> None:
        keys = self.rows(
            "select con.conname, src.relname, dst.relname,"
            " array(select a.attname from unnest(con.conkey) with ordinality k(n, i)"
            "  join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n order by k.i),"
            " array(select a.attname from unnest(con.confkey) with ordinality k(n, i)"
            "  join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n order by k.i)"
            " from pg_constraint con join pg_class src on src.oid = con.conrelid"
            " join pg_class dst on dst.oid = con.confrelid"
            " join pg_namespace n on n.oid = src.relnamespace"
            " join pg_namespace dn on dn.oid = dst.relnamespace"
            " where con.contype = 'f' and n.nspname = %(s)s and dn.nspname = %(s)s"
            " order by 2, 1",
            {"s": self.schema},
        )
        tenant_tables = self.tenant_tables
        for name, source, target, columns, referenced in keys:
            if source not in tenant_tables and source != self.tenant_root:
                continue
            pairs = list(zip(columns, referenced, strict=True))
            if target == self.tenant_root:
                if source == self.tenant_root:
                    continue
                # The tenant column itself references the tenants (whatever their key's name).
                ok = self.tenant_column in columns
            elif target in tenant_tables:
                ok = (self.tenant_column, self.tenant_column) in pairs
            else:
                continue
            if not ok:
                self.add(
                    "fk_without_tenant",
                    f"foreign key {_ident(name)} on {self.q(source)}",
                    f"({', '.join(columns)}) -> {self.q(target)} ({', '.join(referenced)}) "
                    f"leaves out {self.tenant_column}: FK checks run without RLS, so a row can "
                    "point at (and probe for) another tenant's row",
                    f"reference {self.q(target)} ({self.tenant_column}, ...) from "
                    f"({self.tenant_column}, ...), with a UNIQUE ({self.tenant_column}, id) "
                    "on the target",
                )

    # -- unique keys

    def check_unique_keys(self) -> None:
        keys = self.rows(
            "select t.relname, i.relname, coalesce(con.contype, 'i'),"
            " array(select pg_get_indexdef(x.indexrelid, g, true)"
            "  from generate_series(1, x.indnkeyatts) g order by g),"
            " x.indnkeyatts = 1 and x.indkey[0] <> 0 and exists ("
            "  select 1 from pg_attribute a left join pg_attrdef d"
            "   on d.adrelid = a.attrelid and d.adnum = a.attnum"
            "  where a.attrelid = x.indrelid and a.attnum = x.indkey[0]"
            "   and (a.attidentity <> '' or pg_get_expr(d.adbin, d.adrelid) ~ %(generated)s))"
            " from pg_index x join pg_class t on t.oid = x.indrelid"
            " join pg_class i on i.oid = x.indexrelid"
            " join pg_namespace n on n.oid = t.relnamespace"
            " left join pg_constraint con on con.conindid = x.indexrelid"
            "  and con.conrelid = x.indrelid and con.contype in ('p', 'u')"
            " where n.nspname = %(s)s and x.indisunique order by 1, 2",
            {"s": self.schema, "generated": GENERATED_DEFAULT.pattern},
        )
        kinds = {"p": "primary key", "u": "unique constraint", "i": "unique index"}
        for table, index, kind, columns, generated in keys:
            if table not in self.tenant_tables or table == self.tenant_root or generated:
                continue
            if _ident(self.tenant_column) in columns:
                continue
            tokens = all(re.fullmatch(r"\w*token\w*", column) for column in columns)
            self.add(
                "unique_without_tenant",
                f"{kinds[kind]} {_ident(index)} on {self.q(table)}",
                f"({', '.join(columns)}) is unique across tenants, leaving out "
                f"{self.tenant_column}: writing a value another tenant already uses fails "
                "with a unique violation, which tells the caller it exists there "
                "(a cross-tenant existence oracle)"
                + (
                    "; only harmless if the values are random secrets nobody can guess"
                    if tokens
                    else ""
                ),
                f"make it unique per tenant: CREATE UNIQUE INDEX ON {self.q(table)} "
                f"({self.tenant_column}, {', '.join(columns)}); then drop "
                f"{_ident(index)}",
                severity=NOTE if tokens else ERROR,
            )

    # -- the function that sets the tenant context

    def check_context_functions(self) -> None:
        for function in self.functions:
            sets = _settings_set(function.body)
            if not any(name in self.tenant_settings for name, _ in sets):
                continue
            session = sorted({name for name, local in sets if not local})
            if session:
                self.add(
                    "context_session_level",
                    f"function {function.signature}",
                    f"sets the tenant context ({', '.join(session)}) for the session "
                    "(set_config(..., false) or SET without LOCAL): a pooled connection "
                    "carries one request's tenant into the next request",
                    "set every value for the transaction only: set_config(name, value, true) "
                    f"or SET LOCAL, in {function.signature}",
                )

    # -- secret columns

    def check_secret_columns(self) -> None:
        readable = self.rows(
            "select c.relname, a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %(s)s and c.relkind in ('r', 'p', 'v', 'm', 'f')"
            " and a.attnum > 0 and not a.attisdropped and a.attname = any(%(secrets)s)"
            " and has_column_privilege(%(role)s, c.oid, a.attnum, 'SELECT') order by 1, 2",
            {
                "s": self.schema,
                "secrets": list(self.conventions.secret_columns),
                "role": self.app_role,
            },
        )
        for table, column in readable:
            role = _ident(self.app_role)
            self.add(
                "secret_readable",
                f"column {self.q(table)}.{_ident(column)}",
                f"the service role can SELECT the secret column {column}: one injection or "
                "logging mistake in a service exposes every hash of the tenant",
                f"REVOKE SELECT ON {self.q(table)} FROM {role}; (and from PUBLIC) then GRANT "
                f"SELECT (<every column but {column}>) ON {self.q(table)} TO {role}; read "
                "it only through a SECURITY DEFINER lookup",
            )

    # -- the audit trail

    def check_audit(self, tables: list[str]) -> None:
        if self.conventions.audit_table is not None:
            audit_tables = {self.conventions.audit_table} & set(tables)
            if tables and not audit_tables:
                self.add(
                    "name_not_found",
                    f"table {self.q(self.conventions.audit_table)}",
                    "the audit table given with --audit-table does not exist",
                    "name the audit trail's table with --audit-table",
                )
        else:
            audit_tables = {table for table in tables if "audit" in table}
        audit_functions = [
            function
            for function in self.functions
            if function.is_trigger
            and any(
                re.search(
                    rf'\binsert\s+into\s+(?:"?{re.escape(self.schema)}"?\.)?"?'
                    rf'{re.escape(table)}"?(?![\w$])',
                    function.body,
                    re.I,
                )
                for table in audit_tables
            )
        ]
        if self.role_exists:
            for table in sorted(audit_tables):
                self.check_audit_writable(table)
        for function in audit_functions:
            self.check_audit_actor(function)
        if audit_tables and not audit_functions:
            self.add(
                "audit_trigger_missing",
                f"table {self.q(min(audit_tables))}",
                "no trigger function writes the audit table: changes to the tenant tables "
                "are audited only where the services write rows themselves",
                "audit every change with an AFTER INSERT OR UPDATE OR DELETE trigger",
                severity=NOTE,
            )
            return
        audited = self.tenant_tables | ({self.tenant_root} & set(tables))
        audited -= audit_tables | set(self.conventions.unaudited)
        if audit_functions:
            self.check_audit_triggers(sorted(audited), audit_functions)

    def check_audit_writable(self, table: str) -> None:
        granted = [
            privilege
            for privilege in ("UPDATE", "DELETE", "TRUNCATE")
            if self.rows(
                "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = %(s)s and c.relname = %(t)s"
                " and (has_table_privilege(%(role)s, c.oid, %(p)s)"
                "  or (%(p)s = 'UPDATE' and has_any_column_privilege(%(role)s, c.oid, %(p)s)))",
                {"s": self.schema, "t": table, "role": self.app_role, "p": privilege},
            )
        ]
        if granted:
            self.add(
                "audit_writable",
                f"table {self.q(table)}",
                f"the service role has {', '.join(granted)} on the audit table: a service "
                "(or whoever takes it over) can edit or erase the trail of its own actions",
                f"REVOKE {', '.join(granted)} ON {self.q(table)} FROM {_ident(self.app_role)};"
                " (and from PUBLIC; the audit trail is append only: SELECT, INSERT)",
            )

    def check_audit_triggers(self, tables: list[str], functions: list[_Function]) -> None:
        triggers = self.rows(
            "select c.relname, t.tgtype from pg_trigger t join pg_class c on c.oid = t.tgrelid"
            " join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s"
            " and not t.tgisinternal and t.tgenabled <> 'D' and t.tgfoid = any(%s)",
            [self.schema, [function.oid for function in functions]],
        )
        events = {"INSERT": 4, "DELETE": 8, "UPDATE": 16}  # pg_trigger.tgtype bits
        names = ", ".join(f"{function.signature}" for function in functions)
        for table in tables:
            covered = {
                event
                for relname, tgtype in triggers
                if relname == table and tgtype & 1  # FOR EACH ROW
                for event, bit in events.items()
                if tgtype & bit
            }
            missing = [event for event in ("INSERT", "UPDATE", "DELETE") if event not in covered]
            if missing:
                self.add(
                    "audit_trigger_missing",
                    f"table {self.q(table)}",
                    f"no enabled row-level audit trigger for {' / '.join(missing)}: those "
                    "changes leave no trace in the audit trail",
                    f"CREATE TRIGGER {table}_audit AFTER INSERT OR UPDATE OR DELETE ON "
                    f"{self.q(table)} FOR EACH ROW EXECUTE FUNCTION {names};"
                    " (or --unaudited if it is meant to be)",
                )

    def check_audit_actor(self, function: _Function) -> None:
        if re.search(r"\b(current_user|session_user|current_role)\b", function.body, re.I):
            return
        settings = self.settings_read(function.body) - self.tenant_settings
        called = set(_CALL.findall(function.body)) & {f.name for f in self.functions}
        if any(ACTOR.search(name) for name in settings | called):
            return
        self.add(
            "audit_no_actor",
            f"function {function.signature}",
            "the audit function records no acting user (it reads no current_user, nor a "
            "setting or function naming the user or actor): its rows cannot say who did it",
            f"record the acting user in every audit row {function.signature} writes, from "
            "the request context (e.g. current_setting('<prefix>.user_id', true))",
        )


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Function:
    """A function of the database, with its body (comments removed) to read."""

    oid: int
    signature: str
    schema: str
    name: str
    is_trigger: bool
    body: str


#: ``current_setting('name'`` as written in a body or printed by ``pg_get_expr``.
_SETTING_READ = re.compile(r"current_setting\s*\(\s*'([^']+)'", re.I)
#: The name of a called function (``schema.name(``, ``name (``).
_CALL = re.compile(r'([A-Za-z_][\w$]*)"?\s*\(')
#: ``SET [SESSION | LOCAL] prefix.name {= | TO}`` (custom settings have a dot).
_SET_STATEMENT = re.compile(
    r"\bset\s+(?:(session|local)\s+)?([a-z_][\w$]*(?:\.[a-z_][\w$]*)+)\s*(?:=|\bto\b)", re.I
)
_TRUE_LITERALS = {"true", "t", "on", "yes", "y", "1"}


def _strip_comments(body: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", re.sub(r"--[^\n]*", " ", body), flags=re.S)


def _settings_set(body: str) -> list[tuple[str, bool]]:
    """``(setting, for the transaction only)`` for each ``set_config``/``SET`` in ``body``."""
    found = []
    for arguments in _call_arguments(body, "set_config"):
        name = re.fullmatch(r"'([^']+)'(?:::\w+)?", arguments[0]) if arguments else None
        if name and len(arguments) == 3:
            local = re.sub(r"::\w+$", "", arguments[2]).strip("'").lower() in _TRUE_LITERALS
            found.append((name.group(1).lower(), local))
    for scope, name in _SET_STATEMENT.findall(body):
        found.append((name.lower(), scope.lower() == "local"))
    return found


def _call_arguments(text: str, function: str) -> list[list[str]]:
    """The top-level arguments of every call to ``function`` in ``text``."""
    calls = []
    for match in re.finditer(rf"\b{function}\s*\(", text, re.I):
        arguments, current, depth, quoted = [], "", 0, False
        for char in text[match.end() :]:
            if char == "'":
                quoted = not quoted
            elif not quoted and char in "()":
                depth += 1 if char == "(" else -1
                if depth < 0:
                    break
            elif not quoted and char == "," and depth == 0:
                arguments.append(current.strip())
                current = ""
                continue
            current += char
        calls.append([*arguments, current.strip()])
    return calls


_TRUE_FORMS = re.compile(r"^(true|\d+\s*=\s*\d+|'(\w*)'::text\s*=\s*'\2'::text|not\s+false)$", re.I)


def _always_true(expression: str) -> bool:
    """Whether a policy expression (as ``pg_get_expr`` prints it) is a constant truth."""
    text = expression.strip()
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    if not _TRUE_FORMS.match(text):
        return False
    match = re.match(r"^(\d+)\s*=\s*(\d+)$", text)
    return match is None or match.group(1) == match.group(2)


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _search_path(config: Sequence[str]) -> list[str] | None:
    for item in config:
        key, _, value = item.partition("=")
        if key.strip().lower() == "search_path":
            return [part.strip().strip('"') for part in value.split(",") if part.strip()]
    return None


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- command line


def _option(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that reports ``parse``'s ValueError as the option's error."""

    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _names(what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        return tuple(check_identifier(n.strip(), what) for n in value.split(",") if n.strip())

    return _option(parse)


def build_parser(prog: str = "atendeai lint-rls") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a live database's row level security setup (DESIGN.md section 7) "
        "and print every finding with the fix. Exits 1 when there are errors. The defaults "
        "fit this platform; for another schema give its --schema, --app-role and "
        "--tenant-column (the tenant context, the table of tenants and the audit table "
        "are detected, or can be named).",
    )
    parser.add_argument(
        "--dsn", required=True, help="database to check (any role that can connect will do)"
    )
    parser.add_argument(
        "--app-role", default=DEFAULT_APP_ROLE, help=f"the services' role ({DEFAULT_APP_ROLE})"
    )
    parser.add_argument(
        "--schema", default=DEFAULT_SCHEMA, help=f"tenant schema ({DEFAULT_SCHEMA})"
    )
    parser.add_argument(
        "--tenant-column",
        metavar="NAME",
        default=DEFAULT_TENANT_COLUMN,
        type=_option(lambda v: check_identifier(v, "tenant column")),
        help=f"the column naming a row's tenant ({DEFAULT_TENANT_COLUMN})",
    )
    parser.add_argument(
        "--tenant-root",
        metavar="TABLE",
        type=_option(lambda v: check_identifier(v, "tenant root")),
        help="the table of tenants (default: the table the tenant column references)",
    )
    parser.add_argument(
        "--tenant-setting",
        metavar="NAME",
        type=_option(check_setting_name),
        help="the setting holding the request's tenant, e.g. app.current_tenant (default: "
        "the settings the policies compare the tenant column with, directly or through a "
        "function such as atendeai.current_clinic_id())",
    )
    parser.add_argument(
        "--secret-columns",
        metavar="A,B",
        default=DEFAULT_SECRET_COLUMNS,
        type=_names("secret column"),
        help="columns the service role must not read; replaces the default "
        f"{','.join(DEFAULT_SECRET_COLUMNS)} ('' for none)",
    )
    parser.add_argument(
        "--audit-table",
        metavar="TABLE",
        type=_option(lambda v: check_identifier(v, "audit table")),
        help="the audit trail's table (default: the tables whose name contains 'audit')",
    )
    parser.add_argument(
        "--unaudited",
        metavar="A,B",
        default=DEFAULT_UNAUDITED,
        type=_names("unaudited table"),
        help="tenant tables deliberately without an audit trigger (default "
        f"{','.join(DEFAULT_UNAUDITED)}; '' for none)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``atendeai lint-rls``: 0 clean, 1 findings of severity error, 2 could not run."""
    args = build_parser().parse_args(argv)
    conventions = Conventions(
        tenant_column=args.tenant_column,
        tenant_root=args.tenant_root,
        tenant_setting=args.tenant_setting,
        secret_columns=args.secret_columns,
        audit_table=args.audit_table,
        unaudited=args.unaudited,
    )
    try:
        report = lint_database(
            args.dsn, app_role=args.app_role, schema=args.schema, conventions=conventions
        )
    except LintError as error:
        print(f"rls-lint: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0 if report.ok else 1


__all__ = [
    "ERROR",
    "NOTE",
    "Conventions",
    "Finding",
    "LintError",
    "LintReport",
    "lint_database",
    "main",
    "redact_dsn",
    "server_version_findings",
]


if __name__ == "__main__":
    sys.exit(main())
