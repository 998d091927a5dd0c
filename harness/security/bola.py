"""Object-level authorization sweep (OWASP API1), built from the OpenAPI documents.

Every operation whose path takes an id, in every service's document, is tried
with clinic A's tokens (each tenant role the operation allows) against:

- clinic B's ids, right after B itself has read them (the warm-up: B's
  user GETs the same path, so every cache-aside layer holds B's object and a
  read path that serves from the cache before checking ownership leaks it
  here; a cold cache would hide it): the answer must be 404, exactly as for
- ids that exist nowhere (fresh uuids): same status, same body shape, same
  error code and message (no "not yours" vs "not there" oracle);
- and, as the control, A's own ids: 2xx, so the route and the body are ones
  that would have worked.

B's rows (every table with a ``clinic_id`` and B's clinic row) are
snapshotted by the superuser before and after: they must be unchanged.

Nothing is listed by hand: a new route with an id is swept as soon as it is in
a document. Its path parameter must name a known kind of id (``ID_SOURCES``)
or follow ``<thing>_id`` -> table ``atendeai.<thing>s``; anything else fails
the sweep with a message saying what to add. Request bodies are built from the
documented schema (``example_body``: required fields, or one optional field).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.security import SecurityCheckFailed

TENANT_ROLES = ("admin", "manager", "staff")
TIMEOUT_S = 10.0
#: How to find a clinic's ids for a path parameter: SQL run as the superuser,
#: ``%(clinic)s`` is the clinic; the first row is used. Staff users are chosen as
#: targets because every role that may touch users may touch a staff user.
ID_SOURCES: dict[str, str] = {
    "clinic_id": "select id from atendeai.clinics where id = %(clinic)s",
    "user_id": "select id from atendeai.users where clinic_id = %(clinic)s"
    " order by (role = 'staff') desc, created_at limit 1",
}
SAFE_STRING = "Sweep value"


@dataclass(frozen=True)
class IdOperation:
    service: str
    method: str
    path: str
    params: tuple[str, ...]
    roles: tuple[str, ...]
    body_schema: dict[str, Any] | None
    components: dict[str, Any] = field(repr=False, hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.service} {self.method} {self.path}"


def id_operations(docs: Mapping[str, dict[str, Any]]) -> list[IdOperation]:
    """Every operation with a path parameter, DELETEs last (they remove the control's row)."""
    operations = []
    for service, doc in sorted(docs.items()):
        components = doc.get("components", {}).get("schemas", {})
        for path, methods in sorted(doc.get("paths", {}).items()):
            for method, operation in sorted(methods.items()):
                params = tuple(
                    p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"
                )
                if not params:
                    continue
                roles = tuple(r for r in TENANT_ROLES if r in operation.get("x-roles", ()))
                body = operation.get("requestBody", {}).get("content", {}).get("application/json")
                operations.append(
                    IdOperation(
                        service=service,
                        method=method.upper(),
                        path=path,
                        params=params,
                        roles=roles,
                        body_schema=body["schema"] if body else None,
                        components=components,
                    )
                )
    return sorted(operations, key=lambda op: (op.method == "DELETE", op.service, op.path))


def resolve_schema(node: dict[str, Any], components: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` followed and an optional field's ``anyOf: [X, null]``
    (or ``oneOf``, ``allOf``) reduced to X: the schema a value must match."""
    while "$ref" in node:
        node = components[node["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if resolve_schema(o, components).get("type") != "null"]
            return resolve_schema(options[0], components)
    if "allOf" in node:
        return resolve_schema(node["allOf"][0], components)
    return node


def example_body(schema: dict[str, Any], components: Mapping[str, Any]) -> Any:
    """A small valid instance of ``schema``: the required properties, or (when none
    is required) the first optional string property, so an update does something."""

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        return resolve_schema(node, components)

    def value(node: dict[str, Any], name: str = "") -> Any:
        node = resolve(node)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return node["enum"][0]
        kind = node.get("type")
        if kind == "string":
            if node.get("format") == "email":
                return f"sweep-{uuid.uuid4().hex[:10]}@sweep.example"
            if node.get("format") == "uuid":
                return str(uuid.uuid4())
            text = SAFE_STRING if "password" not in name else "Sweep-Passw0rd!"
            return text[: node.get("maxLength", len(text))].ljust(node.get("minLength", 0), "x")
        if kind in ("integer", "number"):
            return node.get("minimum", 1)
        if kind == "boolean":
            return False
        if kind == "array":
            return []
        if kind == "object" or "properties" in node:
            properties = node.get("properties", {})
            required = list(node.get("required", []))
            if not required:
                strings = [n for n, p in properties.items() if resolve(p).get("type") == "string"]
                required = strings[:1]
            return {n: value(properties[n], n) for n in required}
        return None

    return value(schema)


def _ids_of(superuser_dsn: str, params: Sequence[str], clinic: uuid.UUID) -> dict[str, str]:
    import psycopg

    ids = {}
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for param in params:
            query = ID_SOURCES.get(param)
            if query is None:
                thing = param.removesuffix("_id")
                if thing == param:
                    raise SecurityCheckFailed(
                        f"path parameter {param!r} names no kind of id: add it to "
                        "harness.security.bola.ID_SOURCES"
                    )
                table = f"atendeai.{thing}s"
                exists = conn.execute("select to_regclass(%s)", [table]).fetchone()
                if not exists or exists[0] is None:
                    raise SecurityCheckFailed(
                        f"no table {table} for path parameter {param!r}: add an id source "
                        "to harness.security.bola.ID_SOURCES"
                    )
                query = f"select id from {table} where clinic_id = %(clinic)s limit 1"
            row = conn.execute(query, {"clinic": clinic}).fetchone()
            if row is None:
                raise SecurityCheckFailed(f"clinic {clinic} has no row for {param!r}")
            ids[param] = str(row[0])
    return ids


def snapshot(superuser_dsn: str, clinic: uuid.UUID) -> dict[str, list[str]]:
    """Every row of ``clinic`` in every tenant table, as JSON text, in a stable order."""
    import psycopg

    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "select c.relname from pg_class c join pg_attribute a on a.attrelid = c.oid"
                " where c.relnamespace = 'atendeai'::regnamespace and c.relkind = 'r'"
                " and a.attname = 'clinic_id' and not a.attisdropped order by 1"
            )
        ]
        rows = {
            table: [
                text
                for (text,) in conn.execute(
                    f"select row_to_json(t)::text from atendeai.{table} t"
                    " where clinic_id = %s order by 1",
                    [clinic],
                )
            ]
            for table in tables
        }
        rows["clinics"] = [
            text
            for (text,) in conn.execute(
                "select row_to_json(c)::text from atendeai.clinics c where id = %s", [clinic]
            )
        ]
    return rows


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


def _error_identity(response: httpx.Response) -> tuple[int, Any, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.status_code, response.text[:200], None
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return response.status_code, shape(body), (error.get("code"), error.get("message"))


@dataclass
class SweepReport:
    operations: list[str] = field(default_factory=list)
    requests: int = 0
    warm_ups: int = 0  # reads of B's objects by B itself, just before each attempt


def check_object_level_authorization(
    docs: Mapping[str, dict[str, Any]],
    base_urls: Mapping[str, str],
    *,
    token_for: Callable[[str], str],
    attacker: uuid.UUID,
    victim: uuid.UUID,
    superuser_dsn: str,
    client_ip: str,
    victim_token_for: Callable[[str], str],
    victim_client_ip: str,
    warm_up: bool = True,
) -> SweepReport:
    """The sweep (module docstring); raises ``SecurityCheckFailed`` with every problem found.

    ``token_for``/``client_ip`` are clinic A's (the attacker), ``victim_token_for``/
    ``victim_client_ip`` clinic B's, for the warm-up reads. ``warm_up=False`` only
    exists to show what a sweep on cold caches misses (the proofs use it).
    """
    report = SweepReport()
    problems: list[str] = []
    operations = id_operations(docs)
    if not operations:
        raise SecurityCheckFailed("no operation with a path parameter in the documents")
    readers = {(op.service, op.path): op for op in operations if op.method == "GET" and op.roles}
    with (
        httpx.Client(timeout=TIMEOUT_S, headers={"X-Forwarded-For": client_ip}) as client,
        httpx.Client(timeout=TIMEOUT_S, headers={"X-Forwarded-For": victim_client_ip}) as owner,
    ):

        def send(
            op: IdOperation,
            role: str,
            ids: Mapping[str, str],
            *,
            via: httpx.Client = client,
            token: Callable[[str], str] = token_for,
        ) -> httpx.Response:
            report.requests += 1
            body = example_body(op.body_schema, op.components) if op.body_schema else None
            return via.request(
                op.method,
                base_urls[op.service] + op.path.format(**ids),
                json=body,
                headers={"Authorization": f"Bearer {token(role)}"},
            )

        def warm(op: IdOperation, ids: Mapping[str, str]) -> str | None:
            """B reads its own object at ``op``'s path; a problem when it cannot."""
            reader = readers.get((op.service, op.path))
            if reader is None:
                return None  # nothing reads this path: no cache to fill through it
            report.warm_ups += 1
            read = send(reader, reader.roles[0], ids, via=owner, token=victim_token_for)
            if 200 <= read.status_code < 300:
                return None
            return (
                f"warm-up: {reader.name} as clinic B's {reader.roles[0]} on B's own ids "
                f"answered {read.status_code}: {read.text[:200]} (B's object is not in any "
                "cache, so a cache read before the ownership check would go unseen)"
            )

        for op in operations:
            if not op.roles:
                continue  # platform-admin only: no tenant token may call it at all
            report.operations.append(op.name)
            victim_ids = _ids_of(superuser_dsn, op.params, victim)
            for role in op.roles:
                if warm_up and (problem := warm(op, victim_ids)) is not None:
                    problems.append(problem)
                before = snapshot(superuser_dsn, victim)
                foreign = send(op, role, victim_ids)
                missing = send(op, role, {p: str(uuid.uuid4()) for p in op.params})
                after = snapshot(superuser_dsn, victim)
                where = f"{op.name} as {role}"
                if foreign.status_code != 404:
                    problems.append(
                        f"{where} with clinic B's ids answered {foreign.status_code} "
                        f"(not 404): {foreign.text[:200]}"
                    )
                if _error_identity(foreign) != _error_identity(missing):
                    problems.append(
                        f"{where}: B's ids and ids that do not exist answer differently "
                        f"(an existence oracle): {_error_identity(foreign)} vs "
                        f"{_error_identity(missing)}"
                    )
                changed = sorted(t for t in after if after[t] != before.get(t))
                if changed:
                    problems.append(f"{where} changed clinic B's rows in {changed}")
            own_ids = _ids_of(superuser_dsn, op.params, attacker)
            control = send(op, op.roles[0], own_ids)
            if not 200 <= control.status_code < 300:
                problems.append(
                    f"control: {op.name} as {op.roles[0]} on clinic A's own ids answered "
                    f"{control.status_code}: {control.text[:200]} (the sweep's request "
                    "would not have worked on any clinic)"
                )
    if problems:
        raise SecurityCheckFailed(
            f"object-level authorization: {len(problems)} problem(s):\n" + "\n".join(problems)
        )
    return report


__all__ = [
    "ID_SOURCES",
    "IdOperation",
    "SweepReport",
    "check_object_level_authorization",
    "example_body",
    "id_operations",
    "shape",
    "snapshot",
]
