"""The RLS lint's checks: one function per check, each taking the ``Catalog``
and the ``LintOptions`` and returning its findings. They run no queries and
share no state; ``CHECKS`` lists them in the order the report lists findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from harness.security.rls_catalog import (
    AUDIT_WRITE_PRIVILEGES,
    DANGEROUS_PRIVILEGES,
    Catalog,
    Function,
    LintOptions,
    called_names,
    quote_ident,
    settings_read,
)

#: A setting or function naming who changed the row (``app.user_id``, ``current_actor``,
#: ``auth.uid``; not ``app.user_agent``).
ACTOR = re.compile(r"(^|[._])((user|actor|member|account)(_?id|_?name)?|uid)$", re.I)
#: The first release of each major with the fixes for CVE-2023-2455 and
#: CVE-2024-10976 (RLS policies applied for the wrong role); ``server_version_num``.
MIN_SERVER_VERSION = {15: 150009, 16: 160005, 17: 170001}
#: Predefined roles that read or write every table regardless of grants.
BROAD_PREDEFINED_ROLES = ("pg_read_all_data", "pg_write_all_data")


class Severity(StrEnum):
    """``error`` fails the lint; ``note`` is reported for a look."""

    ERROR = "error"
    NOTE = "note"


ERROR = Severity.ERROR
NOTE = Severity.NOTE


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or fact worth a look (``note``), with its fix."""

    check: str
    severity: Severity
    object: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.severity.upper():5} {self.check:22} {self.object}: {self.problem}"


#: A check: the catalog and the options in, its findings out.
Check = Callable[[Catalog, LintOptions], list[Finding]]


# --------------------------------------------------------------------------- the server


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


def check_server_version(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """server_version: PostgreSQL has the RLS CVE fixes (or ``min_server_version``)."""
    return server_version_findings(catalog.server_version_num, minimum=options.min_server_version)


# --------------------------------------------------------------------------- names given


def check_tenant_names(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """name_not_found: the tenant column is some table's; the --tenant-root table exists."""
    findings = []
    if catalog.tables and not catalog.tenant_tables:
        findings.append(
            Finding(
                "name_not_found",
                ERROR,
                f"schema {quote_ident(options.schema)}",
                f"no table has a column {options.tenant_column}: the tenant checks have "
                "nothing to check",
                "name the column that holds a row's tenant with --tenant-column",
            )
        )
    given = options.conventions.tenant_root
    if given is not None and catalog.tables and given not in catalog.table_names:
        findings.append(
            Finding(
                "name_not_found",
                ERROR,
                f"table {options.qualified(given)}",
                "the table of tenants given with --tenant-root does not exist",
                "name the table the tenant column references with --tenant-root",
            )
        )
    return findings


def check_audit_table_name(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """name_not_found: the --audit-table table exists."""
    given = options.conventions.audit_table
    if given is None or not catalog.tables or catalog.audit_tables:
        return []
    return [
        Finding(
            "name_not_found",
            ERROR,
            f"table {options.qualified(given)}",
            "the audit table given with --audit-table does not exist",
            "name the audit trail's table with --audit-table",
        )
    ]


# --------------------------------------------------------------------------- tables, policies


def check_row_security(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """schema_missing, rls_enabled, rls_forced."""
    if not catalog.schema_exists or not catalog.tables:
        what = "does not exist" if not catalog.schema_exists else "has no tables"
        return [
            Finding(
                "schema_missing",
                ERROR,
                f"schema {quote_ident(options.schema)}",
                f"the schema {what}: nothing to check (wrong --schema or database?)",
                "point --dsn at the platform's database and --schema at its tenant schema",
            )
        ]
    findings = []
    for table in catalog.tables:
        qualified = options.qualified(table.name)
        if not table.rls_enabled:
            findings.append(
                Finding(
                    "rls_enabled",
                    ERROR,
                    f"table {qualified}",
                    "row level security is not enabled: every role with a grant sees every row",
                    f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;",
                )
            )
        elif not table.rls_forced:
            findings.append(
                Finding(
                    "rls_forced",
                    ERROR,
                    f"table {qualified}",
                    "row level security is enabled but not forced: the table's owner "
                    "(and anything running as it) bypasses every policy",
                    f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY;",
                )
            )
    return findings


def check_restrictive_policies(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """policy_not_restrictive: every table has a RESTRICTIVE policy for all commands."""
    restrictive_all = {
        policy.table
        for policy in catalog.policies
        if not policy.permissive and policy.command == "*"
    }
    column = options.tenant_column
    return [
        Finding(
            "policy_not_restrictive",
            ERROR,
            f"table {options.qualified(table)}",
            "no RESTRICTIVE policy for all commands: permissive policies are OR'ed, "
            "so any permissive policy added later (a stray USING (true)) widens access",
            f"CREATE POLICY tenant_guard ON {options.qualified(table)} AS RESTRICTIVE FOR ALL "
            f"USING ({column} = <tenant context>) WITH CHECK ({column} = <tenant context>);",
        )
        for table in catalog.table_names
        if table not in restrictive_all
    ]


_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def check_policy_expressions(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """policy_without_check, policy_always_true, policy_not_tenant (per policy)."""
    if not catalog.tables:
        return []
    column, settings = options.tenant_column, catalog.tenant_settings
    context = (
        f"the tenant context (setting {', '.join(sorted(settings))})"
        if settings
        else f"a tenant context: none was detected (no policy compares {column} "
        "with a current_setting(...), in itself or through a function it calls)"
    )
    findings = []
    for policy in catalog.policies:
        name, table = quote_ident(policy.name), options.qualified(policy.table)
        obj = f"policy {name} on {table}"
        kind = "PERMISSIVE" if policy.permissive else "RESTRICTIVE"
        command = _COMMANDS.get(policy.command, policy.command)
        if command == "INSERT" and policy.with_check is None:
            findings.append(
                Finding(
                    "policy_without_check",
                    ERROR,
                    obj,
                    f"{kind} policy for INSERT has no WITH CHECK: it states nothing about what "
                    "may be inserted (as RESTRICTIVE it restricts nothing)",
                    f"ALTER POLICY {name} ON {table} WITH CHECK ({column} = <tenant context>);",
                )
            )
        elif command in ("ALL", "UPDATE") and policy.with_check is None:
            findings.append(
                Finding(
                    "policy_without_check",
                    NOTE,
                    obj,
                    f"{kind} policy for {command} has no WITH CHECK: PostgreSQL checks new "
                    "and changed rows with its USING instead, which is safe while USING stays "
                    "tenant-scoped",
                    f"optional: ALTER POLICY {name} ON {table} WITH CHECK "
                    "(<the USING predicate>); to say so explicitly",
                )
            )
        for clause, expression in (("USING", policy.using), ("WITH CHECK", policy.with_check)):
            if expression is None:
                continue
            if _always_true(expression):
                findings.append(
                    Finding(
                        "policy_always_true",
                        ERROR,
                        obj,
                        f"{kind} policy {clause} ({expression}) is always true: "
                        "it lets every row through",
                        f"DROP POLICY {name} ON {table};  (or scope it to the tenant context)",
                    )
                )
            elif not settings_read(expression, catalog.functions) & settings:
                findings.append(
                    Finding(
                        "policy_not_tenant",
                        ERROR,
                        obj,
                        f"{kind} policy {clause} ({expression}) does not refer to {context}",
                        f"make the {clause} predicate compare {column} with the "
                        "tenant context, or drop the policy"
                        + ("" if settings else "; or name it with --tenant-setting"),
                    )
                )
    return findings


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


# --------------------------------------------------------------------------- the service role


def check_role_attributes(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """role_missing, role_superuser, role_bypassrls, role_createrole."""
    obj, role = f"role {quote_ident(options.app_role)}", quote_ident(options.app_role)
    if catalog.service_role is None:
        return [
            Finding(
                "role_missing",
                ERROR,
                obj,
                "the service role does not exist, so its rights cannot be checked",
                "pass the role the services connect as with --app-role",
            )
        ]
    findings = []
    if catalog.service_role.superuser:
        findings.append(
            Finding(
                "role_superuser",
                ERROR,
                obj,
                "the service role is a superuser: row level security does not apply to it",
                f"ALTER ROLE {role} NOSUPERUSER;",
            )
        )
    if catalog.service_role.bypassrls:
        findings.append(
            Finding(
                "role_bypassrls",
                ERROR,
                obj,
                "the service role has BYPASSRLS: every policy is skipped",
                f"ALTER ROLE {role} NOBYPASSRLS;",
            )
        )
    if catalog.service_role.createrole:
        findings.append(
            Finding(
                "role_createrole",
                ERROR,
                obj,
                "the service role has CREATEROLE: it can grant itself membership in "
                "the owner's role and act as it",
                f"ALTER ROLE {role} NOCREATEROLE;",
            )
        )
    return findings


def check_role_memberships(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """role_member: no role the service role is a member of gets around isolation."""
    findings = []
    for member_of in catalog.memberships:
        if member_of.name == "pg_database_owner":
            continue  # reported as role_owns (the database)
        reasons = []
        if member_of.superuser:
            reasons.append("a superuser")
        if member_of.bypassrls:
            reasons.append("has BYPASSRLS")
        if member_of.createrole:
            reasons.append("has CREATEROLE")
        if member_of.name in catalog.schema_owners:
            reasons.append(f"owns objects in schema {options.schema}")
        if member_of.name in BROAD_PREDEFINED_ROLES:
            reasons.append("reads or writes every table regardless of grants")
        if reasons:
            name = quote_ident(member_of.name)
            findings.append(
                Finding(
                    "role_member",
                    ERROR,
                    f"role {quote_ident(options.app_role)}",
                    f"the service role is a member of {name}, which "
                    f"{' and '.join(reasons)}: SET ROLE {name} gets around isolation",
                    f"REVOKE {name} FROM {quote_ident(options.app_role)};",
                )
            )
    return findings


def check_role_ownership(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """role_owns: the service role owns nothing in the schema, nor the database."""
    return [
        Finding(
            "role_owns",
            ERROR,
            f"{owned.kind} {owned.name}",
            f"owned by the service role {options.app_role}: an owner is exempt from "
            "non-forced RLS and can change or drop the policies",
            f"ALTER {owned.kind.upper()} {owned.name} OWNER TO <the migration owner role>;",
        )
        for owned in catalog.owned_by_service_role
    ]


# --------------------------------------------------------------------------- functions


def check_definer_functions(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """definer_search_path, definer_public, definer_executable (per function)."""
    findings = []
    for function in catalog.definer_functions:
        obj, signature, owner = f"function {function.signature}", function.signature, function.owner
        search_path = _search_path(function.config)
        if search_path is None:
            findings.append(
                Finding(
                    "definer_search_path",
                    ERROR,
                    obj,
                    f"SECURITY DEFINER (runs as {owner}) without a pinned search_path: "
                    "the caller can put objects of its own in front of the ones it means",
                    f"ALTER FUNCTION {signature} SET search_path = pg_catalog, pg_temp;",
                )
            )
        else:
            risky = [
                s
                for s in search_path
                if s in catalog.writable_schemas
                or s == "$user"
                or (s != "pg_temp" and s.startswith("pg_temp"))
            ]
            if risky or (search_path and search_path[0] == "pg_temp"):
                findings.append(
                    Finding(
                        "definer_search_path",
                        ERROR,
                        obj,
                        f"SECURITY DEFINER search_path {', '.join(search_path)} contains "
                        f"{', '.join(risky) or 'pg_temp first'}, where the caller can create "
                        "objects",
                        f"ALTER FUNCTION {signature} SET search_path = pg_catalog, pg_temp;",
                    )
                )
        if function.public_execute:
            findings.append(
                Finding(
                    "definer_public",
                    ERROR,
                    obj,
                    f"SECURITY DEFINER (runs as {owner}) and executable by PUBLIC: every "
                    "role that can connect gets its owner's rights through it",
                    f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC; then GRANT EXECUTE "
                    "to the roles that need it",
                )
            )
        if function.service_role_executes:
            bypass = " (which bypasses RLS)" if function.owner_bypasses_rls else ""
            findings.append(
                Finding(
                    "definer_executable",
                    NOTE,
                    obj,
                    f"the service role can execute it; it runs as {owner}{bypass}: make sure "
                    "it cannot return or change another tenant's rows for any argument",
                    "review its body; revoke EXECUTE from the service role if it does not need it",
                )
            )
    return findings


def _search_path(config: Sequence[str]) -> list[str] | None:
    for item in config:
        key, _, value = item.partition("=")
        if key.strip().lower() == "search_path":
            return [part.strip().strip('"') for part in value.split(",") if part.strip()]
    return None


def check_trigger_definers(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """trigger_definer: trigger functions on the tables run as the invoker."""
    return [
        Finding(
            "trigger_definer",
            ERROR,
            f"function {trigger.signature} (trigger on {options.qualified(trigger.table)})",
            f"the trigger function is SECURITY DEFINER (runs as {trigger.owner}): rows it "
            "writes (audit rows) skip the caller's RLS and can land in any clinic",
            f"ALTER FUNCTION {trigger.signature} SECURITY INVOKER;",
        )
        for trigger in catalog.definer_triggers
    ]


#: ``SET [SESSION | LOCAL] prefix.name {= | TO}`` (custom settings have a dot).
_SET_STATEMENT = re.compile(
    r"\bset\s+(?:(session|local)\s+)?([a-z_][\w$]*(?:\.[a-z_][\w$]*)+)\s*(?:=|\bto\b)", re.I
)
_TRUE_LITERALS = {"true", "t", "on", "yes", "y", "1"}


def check_context_functions(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """context_session_level: the tenant context is set for the transaction only."""
    findings = []
    for function in catalog.functions:
        sets = _settings_set(function.body)
        if not any(name in catalog.tenant_settings for name, _ in sets):
            continue
        session = sorted({name for name, local in sets if not local})
        if session:
            findings.append(
                Finding(
                    "context_session_level",
                    ERROR,
                    f"function {function.signature}",
                    f"sets the tenant context ({', '.join(session)}) for the session "
                    "(set_config(..., false) or SET without LOCAL): a pooled connection "
                    "carries one request's tenant into the next request",
                    "set every value for the transaction only: set_config(name, value, true) "
                    f"or SET LOCAL, in {function.signature}",
                )
            )
    return findings


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


# --------------------------------------------------------------------------- views, grants


def check_views(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """materialized_view, view_security_invoker (per view)."""
    findings = []
    for view in catalog.views:
        qualified = options.qualified(view.name)
        if view.materialized:
            findings.append(
                Finding(
                    "materialized_view",
                    ERROR,
                    f"materialized view {qualified}",
                    "a materialized view holds a copy of the rows with no row level security",
                    f"DROP MATERIALIZED VIEW {qualified}; (use a security_invoker view)",
                )
            )
            continue
        settings = dict(option.split("=", 1) for option in view.options if "=" in option)
        if settings.get("security_invoker", "false").lower() not in ("true", "on", "1", "yes"):
            findings.append(
                Finding(
                    "view_security_invoker",
                    ERROR,
                    f"view {qualified}",
                    "the view runs with its owner's rights: the owner's RLS (or none) "
                    "applies, not the caller's",
                    f"ALTER VIEW {qualified} SET (security_invoker = true);",
                )
            )
    return findings


def check_dangerous_grants(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """dangerous_grant: no TRUNCATE, REFERENCES or TRIGGER for the service role."""
    return [
        Finding(
            "dangerous_grant",
            ERROR,
            f"table {options.qualified(granted.relation)}",
            f"the service role has {privilege}, which acts outside row level "
            "security (TRUNCATE empties every tenant; REFERENCES probes other "
            "tenants' keys; TRIGGER runs code on their rows)",
            f"REVOKE {privilege} ON {options.qualified(granted.relation)} FROM "
            f"{quote_ident(options.app_role)}; (and from PUBLIC)",
        )
        for granted in catalog.service_role_privileges
        for privilege in DANGEROUS_PRIVILEGES
        if privilege in granted.privileges
    ]


def check_secret_columns(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """secret_readable: the service role cannot SELECT a secret column."""
    role = quote_ident(options.app_role)
    findings = []
    for column in catalog.readable_secret_columns:
        table = options.qualified(column.table)
        findings.append(
            Finding(
                "secret_readable",
                ERROR,
                f"column {table}.{quote_ident(column.name)}",
                f"the service role can SELECT the secret column {column.name}: one injection "
                "or logging mistake in a service exposes every hash of the tenant",
                f"REVOKE SELECT ON {table} FROM {role}; (and from PUBLIC) then GRANT "
                f"SELECT (<every column but {column.name}>) ON {table} TO {role}; read "
                "it only through a SECURITY DEFINER lookup",
            )
        )
    return findings


# --------------------------------------------------------------------------- keys


def check_foreign_keys(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """fk_without_tenant: every FK between tenant tables includes the tenant column."""
    column, root = options.tenant_column, catalog.tenant_root
    findings = []
    for key in catalog.foreign_keys:
        if key.table not in catalog.tenant_tables and key.table != root:
            continue
        if key.target == root:
            if key.table == root:
                continue
            # The tenant column itself references the tenants (whatever their key's name).
            ok = column in key.columns
        elif key.target in catalog.tenant_tables:
            ok = (column, column) in zip(key.columns, key.referenced, strict=True)
        else:
            continue
        if not ok:
            target = options.qualified(key.target)
            findings.append(
                Finding(
                    "fk_without_tenant",
                    ERROR,
                    f"foreign key {quote_ident(key.name)} on {options.qualified(key.table)}",
                    f"({', '.join(key.columns)}) -> {target} ({', '.join(key.referenced)}) "
                    f"leaves out {column}: FK checks run without RLS, so a row can "
                    "point at (and probe for) another tenant's row",
                    f"reference {target} ({column}, ...) from ({column}, ...), with a "
                    f"UNIQUE ({column}, id) on the target",
                )
            )
    return findings


_KEY_KINDS = {"p": "primary key", "u": "unique constraint", "i": "unique index"}


def check_unique_keys(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """unique_without_tenant: unique keys of tenant tables include the tenant column."""
    column = options.tenant_column
    findings = []
    for key in catalog.unique_keys:
        if (
            key.table not in catalog.tenant_tables
            or key.table == catalog.tenant_root
            or key.generated
            or quote_ident(column) in key.columns
        ):
            continue
        tokens = all(re.fullmatch(r"\w*token\w*", name) for name in key.columns)
        table, columns = options.qualified(key.table), ", ".join(key.columns)
        findings.append(
            Finding(
                "unique_without_tenant",
                NOTE if tokens else ERROR,
                f"{_KEY_KINDS[key.kind]} {quote_ident(key.index)} on {table}",
                f"({columns}) is unique across tenants, leaving out {column}: writing a "
                "value another tenant already uses fails with a unique violation, which "
                "tells the caller it exists there (a cross-tenant existence oracle)"
                + (
                    "; only harmless if the values are random secrets nobody can guess"
                    if tokens
                    else ""
                ),
                f"make it unique per tenant: CREATE UNIQUE INDEX ON {table} ({column}, "
                f"{columns}); then drop {quote_ident(key.index)}",
            )
        )
    return findings


# --------------------------------------------------------------------------- the audit trail


def check_audit_writable(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """audit_writable: the service role cannot UPDATE, DELETE or TRUNCATE the audit table."""
    held = {granted.relation: granted.privileges for granted in catalog.service_role_privileges}
    findings = []
    for table in sorted(catalog.audit_tables):
        granted = [p for p in AUDIT_WRITE_PRIVILEGES if p in held.get(table, ())]
        if granted:
            privileges, qualified = ", ".join(granted), options.qualified(table)
            findings.append(
                Finding(
                    "audit_writable",
                    ERROR,
                    f"table {qualified}",
                    f"the service role has {privileges} on the audit table: a service "
                    "(or whoever takes it over) can edit or erase the trail of its own actions",
                    f"REVOKE {privileges} ON {qualified} FROM {quote_ident(options.app_role)};"
                    " (and from PUBLIC; the audit trail is append only: SELECT, INSERT)",
                )
            )
    return findings


def check_audit_actor(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """audit_no_actor: every audit function records the acting user."""
    return [
        Finding(
            "audit_no_actor",
            ERROR,
            f"function {function.signature}",
            "the audit function records no acting user (it reads no current_user, nor a "
            "setting or function naming the user or actor): its rows cannot say who did it",
            f"record the acting user in every audit row {function.signature} writes, from "
            "the request context (e.g. current_setting('<prefix>.user_id', true))",
        )
        for function in catalog.audit_functions
        if not _records_actor(function, catalog)
    ]


def _records_actor(function: Function, catalog: Catalog) -> bool:
    if re.search(r"\b(current_user|session_user|current_role)\b", function.body, re.I):
        return True
    settings = settings_read(function.body, catalog.functions) - catalog.tenant_settings
    called = called_names(function.body) & {f.name for f in catalog.functions}
    return any(ACTOR.search(name) for name in settings | called)


def check_audit_triggers(catalog: Catalog, options: LintOptions) -> list[Finding]:
    """audit_trigger_missing: every audited table has a row-level audit trigger for INSERT,
    UPDATE and DELETE; a note when no trigger function writes the audit table at all."""
    if not catalog.audit_tables:
        return []
    if not catalog.audit_functions:
        return [
            Finding(
                "audit_trigger_missing",
                NOTE,
                f"table {options.qualified(min(catalog.audit_tables))}",
                "no trigger function writes the audit table: changes to the tenant tables "
                "are audited only where the services write rows themselves",
                "audit every change with an AFTER INSERT OR UPDATE OR DELETE trigger",
            )
        ]
    audited = catalog.tenant_tables | ({catalog.tenant_root} & set(catalog.table_names))
    audited -= catalog.audit_tables | set(options.conventions.unaudited)
    oids = {function.oid for function in catalog.audit_functions}
    names = ", ".join(function.signature for function in catalog.audit_functions)
    events = {"INSERT": 4, "DELETE": 8, "UPDATE": 16}  # pg_trigger.tgtype bits
    findings = []
    for table in sorted(audited):
        covered = {
            event
            for trigger in catalog.triggers
            if trigger.table == table and trigger.function_oid in oids and trigger.type_bits & 1
            for event, bit in events.items()
            if trigger.type_bits & bit
        }  # FOR EACH ROW (bit 1) triggers only
        missing = [event for event in ("INSERT", "UPDATE", "DELETE") if event not in covered]
        if missing:
            qualified = options.qualified(table)
            findings.append(
                Finding(
                    "audit_trigger_missing",
                    ERROR,
                    f"table {qualified}",
                    f"no enabled row-level audit trigger for {' / '.join(missing)}: those "
                    "changes leave no trace in the audit trail",
                    f"CREATE TRIGGER {table}_audit AFTER INSERT OR UPDATE OR DELETE ON "
                    f"{qualified} FOR EACH ROW EXECUTE FUNCTION {names};"
                    " (or --unaudited if it is meant to be)",
                )
            )
    return findings


#: Every check, in the order the report lists their findings.
CHECKS: tuple[Check, ...] = (
    check_server_version,
    check_tenant_names,
    check_row_security,
    check_restrictive_policies,
    check_policy_expressions,
    check_role_attributes,
    check_role_memberships,
    check_role_ownership,
    check_definer_functions,
    check_trigger_definers,
    check_context_functions,
    check_views,
    check_dangerous_grants,
    check_secret_columns,
    check_foreign_keys,
    check_unique_keys,
    check_audit_table_name,
    check_audit_writable,
    check_audit_actor,
    check_audit_triggers,
)
