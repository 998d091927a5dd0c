"""The one error shape every service answers with.

    ApiError                 any 4xx/5xx we answer on purpose
    ├── BadRequest           400 malformed_json / bad_request
    ├── Unauthorized         401 not signed in, bad or revoked token, bad credentials
    ├── Forbidden            403 signed in, role not allowed
    ├── NotFound             404 not there *or not yours* (never tell which)
    ├── Conflict             409 unique value taken
    ├── PayloadTooLarge      413
    ├── UnsupportedMediaType 415
    ├── ValidationFailed     422 with ``details`` naming each field
    ├── RateLimited          429 with Retry-After
    └── Unavailable          503 a dependency is down, with Retry-After
        ├── DatabaseUnavailable  503 database_unavailable (PostgreSQL away or too slow)
        └── StoreUnavailable     503 Redis away: the check that needs it fails closed

Bodies look like ``{"error": {"code", "message", "request_id", "details"}}``
and never carry a stack trace or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class FieldProblem:
    field: str
    message: str


@dataclass
class ApiError(Exception):
    message: str
    code: str = ""
    details: list[FieldProblem] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __post_init__(self) -> None:
        self.code = self.code or self.default_code

    def body(self, request_id: str) -> dict:
        error: dict = {"code": self.code, "message": self.message, "request_id": request_id}
        if self.details:
            error["details"] = [{"field": d.field, "message": d.message} for d in self.details]
        return {"error": error}


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    default_code = "forbidden"


class NotFound(ApiError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    default_code = "unsupported_media_type"


class ValidationFailed(ApiError):
    status = 422
    default_code = "validation_error"


class RateLimited(ApiError):
    status = 429
    default_code = "rate_limited"


class Unavailable(ApiError):
    status = 503
    default_code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """PostgreSQL did not answer in time, or the connection broke (never a hang)."""

    default_code = "database_unavailable"


class StoreUnavailable(Unavailable):
    """Redis (rate limits, revocation marks, cache) is away and the request needs it.

    Raised by ``system_under_test.redisguard``; the callers that can do without
    Redis catch it and fall back, the rest answer it (fail closed).
    """

    default_code = "store_unavailable"


ERROR_STATUSES: dict[int, str] = {
    cls.status: cls.default_code
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        ApiError,
        Unavailable,
    )
}
