"""Cross-tenant existence oracles of unique constraints (DESIGN.md 7.9).

A unique constraint that spans clinics makes a write answer differently when
a value is already used in *another* clinic (409 instead of 201): any clinic
can then learn what other clinics hold (whether a person has an account
there, for an e-mail address). The check is built from what the platform
declares, not from a list of known routes:

1. the catalog: every column under a unique index of the schema
   (``unique_columns``, expression indexes such as ``lower(email)`` included);
2. the OpenAPI documents: every write a clinic role may make whose request
   body has a property named like one of those columns (``oracle_probes``);
3. the probe (``check_no_uniqueness_oracle``): as the attacker clinic's admin,
   a valid body with a fresh value, then the same body with a value the victim
   clinic has just written. Both must answer alike: same status, same body
   shape. The fresh writes must succeed (a control: else the probe never
   built a valid request). A write that accepts the same value twice in one
   clinic is under no unique constraint (its field only shares a name with a
   unique column of another table) and is reported as such.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from harness.security import SecurityCheckFailed
from harness.security.bola import example_body, resolve_schema, shape
from harness.tenants import Tenant

WRITE_METHODS = ("post", "put", "patch")
CLINIC_ROLES = ("admin", "manager", "staff")


@dataclass(frozen=True)
class UniqueColumn:
    """A column under a unique index, and the column naming its row's clinic."""

    table: str
    column: str
    index: str
    tenant_column: str


@dataclass(frozen=True)
class OracleProbe:
    """A write a clinic role may make that sends a value under a unique index."""

    service: str
    method: str
    path: str
    field: tuple[str, ...]  # where the value goes in the body (``("email",)``)
    target: UniqueColumn
    role: str

    def describe(self) -> str:
        field = ".".join(self.field)
        return (
            f"{self.method.upper()} {self.path} {field} "
            f"({self.target.table}.{self.target.column}, index {self.target.index})"
        )


def unique_columns(
    superuser_dsn: str,
    *,
    schema: str = "atendeai",
    tenant_table: str = "clinics",
    tenant_column: str = "clinic_id",
) -> list[UniqueColumn]:
    """Every column under a unique index of ``schema``'s tables that name a clinic.

    A row's clinic is ``tenant_column``, or ``id`` in ``tenant_table`` itself;
    tables with neither are left out (they hold no clinic's data).
    """
    import psycopg

    query = """
        select distinct t.relname, a.attname, i.relname,
               case when t.relname = %(tenant_table)s then 'id' else %(tenant_column)s end
          from pg_index as x
          join pg_class as i on i.oid = x.indexrelid
          join pg_class as t on t.oid = x.indrelid
          join pg_namespace as n on n.oid = t.relnamespace
          join pg_attribute as a on a.attrelid = t.oid and a.attnum > 0
         where x.indisunique
           and n.nspname = %(schema)s
           and (a.attnum = any(x.indkey)
                or exists (select 1 from pg_depend as d
                            where d.classid = 'pg_class'::regclass and d.objid = x.indexrelid
                              and d.refobjid = t.oid and d.refobjsubid = a.attnum))
           and (t.relname = %(tenant_table)s or exists (
                select 1 from pg_attribute as c
                 where c.attrelid = t.oid and c.attname = %(tenant_column)s and not c.attisdropped))
         order by 1, 2, 3
    """
    params = {"schema": schema, "tenant_table": tenant_table, "tenant_column": tenant_column}
    with psycopg.connect(superuser_dsn) as conn:
        rows = conn.execute(query, params).fetchall()
    return [UniqueColumn(table, column, index, tenant) for table, column, index, tenant in rows]


def oracle_probes(
    docs: Mapping[str, dict[str, Any]], columns: Iterable[UniqueColumn]
) -> list[OracleProbe]:
    """The writes clinic roles may make that carry a value of a unique column.

    The tenant's own key (``clinic_id``, and ``id``) is never sent by a client
    as a value to be stored, so it is left out.
    """
    by_name: dict[str, list[UniqueColumn]] = {}
    for column in columns:
        if column.column not in (column.tenant_column, "id"):
            by_name.setdefault(column.column, []).append(column)
    probes = []
    for service, doc in sorted(docs.items()):
        for path, operations in sorted(doc.get("paths", {}).items()):
            for method in WRITE_METHODS:
                operation = operations.get(method)
                if operation is None:
                    continue
                role = next((r for r in CLINIC_ROLES if r in operation.get("x-roles", [])), None)
                schema = _body_schema(doc, operation)
                if role is None or schema is None:
                    continue
                for field in _property_paths(doc, schema):
                    for target in by_name.get(field[-1], []):
                        probes.append(OracleProbe(service, method, path, field, target, role))
    return probes


def check_no_uniqueness_oracle(
    probes: Iterable[OracleProbe],
    *,
    docs: Mapping[str, dict[str, Any]],
    attacker: Tenant,
    victim: Tenant,
    domain: str = "oracle.example",
) -> list[str]:
    """Each probe's write answers alike for a fresh value and for one the victim
    clinic already has; ``SecurityCheckFailed`` names every probe that does not.

    Every value is made by the probe (e-mail addresses at ``domain``) and
    written through the API, so it passes the API's own validation: the
    attacker writes a fresh value (a control: it must be accepted), then the
    same value again (refused when the write is under a unique constraint),
    the victim writes a value of its own, and the attacker tries that one.
    Returns one line per probe (for the tally).
    """
    found, lines = [], []
    for probe in probes:
        doc = docs[probe.service]
        schema = _body_schema(doc, doc["paths"][probe.path][probe.method])
        assert schema is not None
        attackers = attacker.client(probe.service, probe.role)
        victims = victim.client(probe.service, probe.role)

        value = _fresh_value(probe, domain)
        fresh = _send(attackers, _concrete_path(probe, attacker), probe, doc, schema, value)
        _expect_accepted(fresh, probe, "the attacker's fresh value")
        again = _send(attackers, _concrete_path(probe, attacker), probe, doc, schema, value)
        if 200 <= again.status_code < 300:
            # The field only shares its name with a unique column (of another
            # table): this write is under no unique constraint.
            lines.append(f"{probe.describe()}: not unique on this route ({again.status_code})")
            continue

        victims_value = _fresh_value(probe, domain)
        planted = _send(victims, _concrete_path(probe, victim), probe, doc, schema, victims_value)
        _expect_accepted(planted, probe, "the victim's own value")
        used = _send(attackers, _concrete_path(probe, attacker), probe, doc, schema, victims_value)
        line = (
            f"{probe.describe()}: fresh {fresh.status_code}, own clinic's {again.status_code}, "
            f"another clinic's {used.status_code}"
        )
        lines.append(line)
        if (used.status_code, _shape(used)) != (fresh.status_code, _shape(fresh)):
            found.append(f"{line} ({used.text[:200]})")
    if found:
        raise SecurityCheckFailed(
            "a value already used in another clinic answers differently from a fresh one "
            "(a cross-tenant existence oracle; make the unique constraint include the "
            "clinic): " + "; ".join(found)
        )
    return lines


def _expect_accepted(response: httpx.Response, probe: OracleProbe, what: str) -> None:
    if not 200 <= response.status_code < 300:
        raise SecurityCheckFailed(
            f"control failed: {probe.describe()} with {what} answered "
            f"{response.status_code}: {response.text[:300]}"
        )


# --- building requests --------------------------------------------------------------


def _components(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("components", {}).get("schemas", {})


def _body_schema(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return None if schema is None else resolve_schema(schema, _components(doc))


def _property_paths(
    doc: dict[str, Any], schema: dict[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    paths = []
    for name, sub in resolve_schema(schema, _components(doc)).get("properties", {}).items():
        sub = resolve_schema(sub, _components(doc))
        paths.append((*prefix, name))
        if sub.get("type") == "object":
            paths.extend(_property_paths(doc, sub, (*prefix, name)))
    return paths


def _fresh_value(probe: OracleProbe, domain: str) -> str:
    if "email" in probe.target.column:
        return f"fresh-{uuid.uuid4().hex[:12]}@{domain}"
    return f"fresh-{uuid.uuid4().hex[:12]}"


def _concrete_path(probe: OracleProbe, attacker: Tenant) -> str:
    """The path with the attacker's own ids (its clinic, its staff user)."""
    ids = {"clinic_id": attacker.clinic_id, "user_id": attacker.user("staff").id}
    path = probe.path
    for name, value in ids.items():
        path = path.replace("{" + name + "}", str(value))
    if "{" in path:
        raise SecurityCheckFailed(
            f"cannot probe {probe.describe()}: unknown path parameters in {path}"
        )
    return path


def _send(
    client: httpx.Client,
    path: str,
    probe: OracleProbe,
    doc: dict[str, Any],
    schema: dict[str, Any],
    value: Any,
) -> httpx.Response:
    body = example_body(schema, _components(doc))
    node = body
    for key in probe.field[:-1]:
        node = node.setdefault(key, {})
    node[probe.field[-1]] = value
    return client.request(probe.method.upper(), path, json=body)


def _shape(response: httpx.Response) -> Any:
    """The body's structure without its values (keys, and the JSON type of each leaf)."""
    try:
        return shape(response.json())
    except ValueError:
        return ("not json", response.headers.get("Content-Type"))


__all__ = [
    "OracleProbe",
    "UniqueColumn",
    "check_no_uniqueness_oracle",
    "oracle_probes",
    "unique_columns",
]
