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

How it runs: ``read_catalog`` reads everything once into a frozen ``Catalog``
(``harness.security.rls_catalog``, with what is detected), then each check of
``CHECKS`` (``harness.security.rls_checks``, one function per check) returns its
findings from the catalog alone; ``lint_catalog`` collects them in that order.

Command line (wired as ``atendeai lint-rls``)::

    python -m harness.security.rls_lint --dsn DSN [--app-role atendeai_app] [--schema atendeai]
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
from harness.security.rls_catalog import (
    DEFAULT_APP_ROLE,
    DEFAULT_CONVENTIONS,
    DEFAULT_SCHEMA,
    DEFAULT_SECRET_COLUMNS,
    DEFAULT_TENANT_COLUMN,
    DEFAULT_TENANT_ROOT,
    DEFAULT_UNAUDITED,
    Catalog,
    Conventions,
    LintOptions,
    check_identifier,
    check_setting_name,
    read_catalog,
)
from harness.security.rls_checks import (
    CHECKS,
    ERROR,
    NOTE,
    Finding,
    Severity,
    server_version_findings,
)


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


# --------------------------------------------------------------------------- lint


def lint_database(
    dsn: str,
    *,
    app_role: str = DEFAULT_APP_ROLE,
    schema: str = DEFAULT_SCHEMA,
    conventions: Conventions = DEFAULT_CONVENTIONS,
    min_server_version: int | None = None,
) -> LintReport:
    """Connect to ``dsn``, read the catalogs, and return every finding."""
    import psycopg

    if not dsn.strip():
        # libpq would fall back to PG* variables and the default socket: never guess.
        raise LintError("an empty DSN: say which database to check")
    options = LintOptions(
        schema=schema,
        app_role=app_role,
        conventions=conventions,
        min_server_version=min_server_version,
    )
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as error:
        raise LintError(f"cannot connect to {redact_dsn(dsn)}: {error}".strip()) from error
    with conn:
        try:
            # Names print schema-qualified (functions in public too), and nothing the
            # lint reads resolves through a schema the database's users can write.
            conn.execute("set search_path = pg_catalog")
            catalog = read_catalog(conn, options)
        except psycopg.Error as error:
            raise LintError(f"reading the catalogs of {redact_dsn(dsn)} failed: {error}") from error
    return lint_catalog(catalog, options, target=redact_dsn(dsn))


def lint_catalog(catalog: Catalog, options: LintOptions, *, target: str) -> LintReport:
    """Run every check of ``CHECKS`` in order on ``catalog``; the report of ``target``."""
    findings = [finding for check in CHECKS for finding in check(catalog, options)]
    return LintReport(
        target=target,
        schema=options.schema,
        app_role=options.app_role,
        server_version=catalog.server_version,
        findings=tuple(findings),
        tables=catalog.table_names,
        tenant_column=options.tenant_column,
        tenant_root=catalog.tenant_root,
        tenant_settings=tuple(sorted(catalog.tenant_settings)),
    )


# --------------------------------------------------------------------------- command line

DESCRIPTION = (
    "Check a live database's row level security setup (DESIGN.md section 7) "
    "and print every finding with the fix. Exits 1 when there are errors. The defaults "
    "fit this platform; for another schema give its --schema, --app-role and "
    "--tenant-column (the tenant context, the table of tenants and the audit table "
    "are detected, or can be named)."
)
#: The line ``atendeai --help`` shows for the command.
COMMAND_HELP = (
    "check a live database's row level security setup (--dsn DSN; options: "
    "lint-rls --help); exit 1 on findings"
)


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


def add_options(parser: argparse.ArgumentParser) -> None:
    """The command's options (``--dsn`` and the schema's conventions)."""
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


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lint-rls`` on ``atendeai``'s subcommands (``handler``: ``cmd_lint_rls``)."""
    lint = commands.add_parser("lint-rls", help=COMMAND_HELP, description=DESCRIPTION)
    add_options(lint)
    lint.set_defaults(handler=cmd_lint_rls)


def build_parser(prog: str = "atendeai lint-rls") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_options(parser)
    return parser


def cmd_lint_rls(args: argparse.Namespace) -> int:
    """Lint as ``args`` say and print the report: 0 clean, 1 errors found, 2 could not run."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """``atendeai lint-rls``: 0 clean, 1 findings of severity error, 2 could not run."""
    return cmd_lint_rls(build_parser().parse_args(argv))


__all__ = [
    "CHECKS",
    "ERROR",
    "NOTE",
    "Catalog",
    "Conventions",
    "Finding",
    "LintError",
    "LintOptions",
    "LintReport",
    "Severity",
    "add_parser",
    "build_parser",
    "cmd_lint_rls",
    "lint_catalog",
    "lint_database",
    "main",
    "read_catalog",
    "redact_dsn",
    "server_version_findings",
]


if __name__ == "__main__":
    sys.exit(main())
