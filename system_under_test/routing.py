"""Routes declared once: the aiohttp handler, its roles and bodies, and the
OpenAPI operation describing it, all from the same ``Route``.

Deny by default: a route states ``roles`` (who may call it) or ``PUBLIC``;
there is no third way. Handlers receive a ``Call`` with the parsed body and
the verified caller.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from system_under_test.errors import (
    ERROR_STATUSES,
    BadRequest,
    FieldProblem,
    Forbidden,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from system_under_test.schemas import ErrorBody

if TYPE_CHECKING:
    from system_under_test.app import Platform
    from system_under_test.db import TenantContext
    from system_under_test.tokens import Principal

PUBLIC: frozenset[str] = frozenset()
ALL_ROLES = frozenset({"platform_admin", "admin", "manager", "staff"})
_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass
class Call:
    """One request as a handler sees it."""

    request: web.Request
    platform: Platform
    body: Any
    principal: Principal | None
    query: Any = None

    @property
    def request_id(self) -> str:
        return self.request["request_id"]

    @property
    def client_ip(self) -> str:
        return self.request["client_ip"]

    @property
    def user(self) -> Principal:
        assert self.principal is not None, "route is PUBLIC; there is no caller"
        return self.principal

    def tenant(self, clinic_id: UUID | None = None) -> TenantContext:
        """The RLS + audit context: the caller's clinic unless told otherwise."""
        from system_under_test.db import TenantContext

        principal = self.principal
        return TenantContext(
            clinic_id=clinic_id or self.user.clinic_id,
            user_id=principal.user_id if principal else None,
            ip_address=self.client_ip,
            user_agent=self.request.headers.get("User-Agent", "")[:500] or None,
            request_id=self.request_id,
        )

    def path_id(self, name: str) -> UUID:
        """A uuid path parameter; anything else is simply not found."""
        try:
            return UUID(self.request.match_info[name])
        except ValueError:
            raise NotFound("not found") from None


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RawBody:
    """A body that is not one of our models: Prometheus text, the OpenAPI JSON."""

    media_type: str
    schema: dict[str, Any] = field(default_factory=dict)


PROMETHEUS_TEXT = RawBody("text/plain", {"type": "string"})
JSON_OBJECT = RawBody("application/json", {"type": "object"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[str]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    # status -> body model, a RawBody (documented by media type), or None (no body)
    responses: dict[int, type[BaseModel] | RawBody | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    #: Uses PostgreSQL or Redis, so may answer 503 while one is away
    #: (``database_unavailable``...); only /health, /metrics and /openapi.json do not.
    uses_dependencies: bool = True

    @property
    def public(self) -> bool:
        return self.roles is PUBLIC


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=model.model_dump_json(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _validation_problems(error: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(".".join(str(p) for p in item["loc"]) or "body", item["msg"])
        for item in error.errors(include_url=False, include_input=False)
    ]


def _invalid(error: ValidationError, where: str) -> ValidationFailed:
    problems = _validation_problems(error)
    names = ", ".join(p.field for p in problems)
    return ValidationFailed(f"invalid {where} field(s): {names}", details=problems)


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as error:
        raise _invalid(error, "query") from None


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise BadRequest("the body is not valid JSON", code="malformed_json") from None
        if any(item["type"] == "model_type" for item in error.errors()):
            raise ValidationFailed("the body must be a JSON object") from None
        raise _invalid(error, "body") from None


def to_aiohttp(route: Route, platform: Platform) -> web.RouteDef:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        if not route.public:
            principal = await platform.authenticate(request)
            if principal.role not in route.roles:
                await platform.audit_denied(request, principal, route)
                raise Forbidden("your role may not do this")
        query = parse_query(request, route.query) if route.query else None
        body = await parse_body(request, route.body) if route.body else None
        return await route.handler(Call(request, platform, body, principal, query))

    return web.route(route.method, route.path, handle)


# --- OpenAPI ---------------------------------------------------------------

_REF = "#/components/schemas/{model}"


def openapi_document(service: str, version: str, routes: Iterable[Route]) -> dict[str, Any]:
    routes = list(routes)
    models: list[tuple[type[BaseModel], str]] = [(ErrorBody, "serialization")]
    for route in routes:
        if route.body:
            models.append((route.body, "validation"))
        models += [(m, "serialization") for m in route.responses.values() if isinstance(m, type)]
    keys, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=_REF)

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return keys[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": [service],
            "responses": {},
        }
        params = _PATH_PARAM.findall(route.path)
        if params:
            operation["parameters"] = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
                for name in params
            ]
        if route.query:
            schema = route.query.model_json_schema()
            operation.setdefault("parameters", []).extend(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "schema": prop,
                }
                for name, prop in schema["properties"].items()
            )
            error_statuses_query = True
        else:
            error_statuses_query = False
        if route.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.body, "validation")}},
            }
        if not route.public:
            operation["security"] = [{"bearerAuth": []}]
            operation["x-roles"] = sorted(route.roles)
        for status, model in route.responses.items():
            response: dict[str, Any] = {"description": _describe(status)}
            if isinstance(model, RawBody):
                response["content"] = {model.media_type: {"schema": model.schema}}
            elif model is not None:
                response["content"] = {"application/json": {"schema": ref(model, "serialization")}}
            operation["responses"][str(status)] = response
        error_statuses = set(route.errors) | {500}
        if route.uses_dependencies and 503 not in route.responses:
            error_statuses.add(503)
        if route.body:
            error_statuses |= {400, 413, 415, 422}
        if error_statuses_query:
            error_statuses.add(422)
        if params:
            error_statuses.add(404)
        if not route.public:
            error_statuses |= {401, 403}
        for status in sorted(error_statuses):
            operation["responses"][str(status)] = {
                "description": ERROR_STATUSES.get(status, "error"),
                "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": f"AtendeAI {service} service", "version": version},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation_id(route: Route) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", route.path).strip("_")
    return f"{route.method.lower()}_{words}"


def _describe(status: int) -> str:
    return {200: "OK", 201: "Created", 204: "No Content", 503: "Unavailable"}.get(
        status, str(status)
    )
