"""Request and response bodies. Pydantic validates them and writes their JSON
Schema into each service's OpenAPI document, so the two never drift apart."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, field_validator

from system_under_test.passwords import MAX_PASSWORD_BYTES

Role = Literal["platform_admin", "admin", "manager", "staff"]
TenantRole = Literal["admin", "manager", "staff"]
UserStatus = Literal["active", "inactive"]
ClinicStatus = Literal["active", "inactive", "suspended"]


def _fits_bcrypt(value: str) -> str:
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    return value


NewPassword = Annotated[str, Field(min_length=8), AfterValidator(_fits_bcrypt)]
LoginPassword = Annotated[str, Field(min_length=1), AfterValidator(_fits_bcrypt)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(max_length=200)]
LongText = Annotated[str, Field(max_length=5000)]
#: A clinic's public login name: lower-case letters and digits in dash-separated words.
Slug = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]


def _unstorable(value: Any) -> str | None:
    """Why PostgreSQL would refuse ``value`` (a 500 if it got that far), or None.

    text and jsonb cannot hold U+0000, and jsonb has no NaN or Infinity
    (which Python's JSON parser accepts, as do ``1e400`` and friends).
    """
    if isinstance(value, str):
        return "must not contain the NUL character (U+0000)" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite (no NaN or Infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key) or _unstorable(item)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _unstorable(item)
            if problem:
                return problem
    return None


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_in_postgres(cls, value: Any) -> Any:
        problem = _unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


class PageQuery(BaseModel):
    """``?limit=&offset=`` on list routes; other query parameters are ignored."""

    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


# --- auth -----------------------------------------------------------------


class LoginRequest(Request):
    # Not checked against the slug pattern: any string that names no clinic
    # gets the same 401 as a wrong password (nothing to learn from a 422).
    clinic_slug: Annotated[str, Field(min_length=1, max_length=63)]
    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: LoginPassword


class RefreshRequest(Request):
    refresh_token: Annotated[str, Field(min_length=1, max_length=200)]


class User(BaseModel):
    id: UUID
    clinic_id: UUID
    name: str
    email: str
    role: Role
    status: UserStatus
    last_login: datetime | None
    created_at: datetime
    updated_at: datetime


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_expires_in: int
    user: User


# --- users ----------------------------------------------------------------


class UserCreate(Request):
    name: Name
    email: EmailStr
    password: NewPassword
    role: TenantRole


class UserUpdate(Request):
    name: Name | None = None
    role: TenantRole | None = None
    status: UserStatus | None = None
    password: NewPassword | None = None


class UserPage(BaseModel):
    items: list[User]
    total: int
    limit: int
    offset: int


# --- clinics --------------------------------------------------------------

JsonObject = dict[str, Any]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional_not_null() -> Any:
    """A field that may be left out but not sent as null (no ``null`` in its schema,
    and no ``default: null`` either, which would contradict its type)."""
    return Field(default=None, json_schema_extra=_drop_default)


class ClinicFields(Request):
    """Every editable clinic column of the spec; all optional on update.

    The columns that are NOT NULL in the database (name, the jsonb objects,
    status) are optional but not nullable: absent means "leave it", and a JSON
    ``null`` is a 422 naming the field (it used to reach the database: a 500,
    and for the jsonb columns a stored JSON null that broke every later read).
    """

    name: Name = _optional_not_null()
    type: ShortText | None = None
    specialty: ShortText | None = None
    description: LongText | None = None
    mission: LongText | None = None
    values: LongText | None = None
    differentials: LongText | None = None
    address_street: ShortText | None = None
    address_number: Annotated[str, Field(max_length=20)] | None = None
    address_complement: ShortText | None = None
    address_neighborhood: ShortText | None = None
    address_city: ShortText | None = None
    address_state: Annotated[str, Field(max_length=50)] | None = None
    address_zipcode: Annotated[str, Field(max_length=20)] | None = None
    phone: Annotated[str, Field(max_length=30)] | None = None
    whatsapp: Annotated[str, Field(max_length=30)] | None = None
    email: EmailStr | None = None
    website: Annotated[str, Field(max_length=300)] | None = None
    department_emails: dict[str, EmailStr] = _optional_not_null()
    working_hours: JsonObject = _optional_not_null()
    ai_personality: JsonObject = _optional_not_null()
    ai_behavior: JsonObject = _optional_not_null()
    status: ClinicStatus = _optional_not_null()


class ClinicUpdate(ClinicFields):
    pass


class FirstAdmin(Request):
    name: Name
    email: EmailStr
    password: NewPassword


class ClinicCreate(ClinicFields):
    name: Name
    #: Made from the name when left out (with a suffix when that one is taken).
    slug: Slug = _optional_not_null()
    admin: FirstAdmin


class Clinic(BaseModel):
    id: UUID
    slug: str
    name: str
    type: str | None
    specialty: str | None
    description: str | None
    mission: str | None
    values: str | None
    differentials: str | None
    address_street: str | None
    address_number: str | None
    address_complement: str | None
    address_neighborhood: str | None
    address_city: str | None
    address_state: str | None
    address_zipcode: str | None
    phone: str | None
    whatsapp: str | None
    email: str | None
    website: str | None
    department_emails: JsonObject
    working_hours: JsonObject
    ai_personality: JsonObject
    ai_behavior: JsonObject
    status: ClinicStatus
    created_at: datetime
    updated_at: datetime


CLINIC_COLUMNS = tuple(Clinic.model_fields)
CLINIC_EDITABLE = tuple(f for f in ClinicFields.model_fields)


class ClinicCreated(BaseModel):
    clinic: Clinic
    admin: User


class ClinicSummary(BaseModel):
    id: UUID
    name: str
    status: ClinicStatus
    created_at: datetime


class ClinicPage(BaseModel):
    items: list[ClinicSummary]
    limit: int
    offset: int


# --- health ---------------------------------------------------------------


class Liveness(BaseModel):
    status: Literal["ok"]
    service: str


class CheckResult(BaseModel):
    status: Literal["ok", "down"]
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "down"]
    service: str
    checks: dict[str, CheckResult]


class PlatformStatus(BaseModel):
    status: Literal["ok", "degraded", "down"]
    services: dict[str, CheckResult]
    dependencies: dict[str, CheckResult]


# --- errors ---------------------------------------------------------------


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    request_id: str
    details: list[ErrorDetail] | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo
