"""Request and response bodies. Pydantic validates them and writes their JSON
Schema into each service's OpenAPI document, so the two never drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

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


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PageQuery(BaseModel):
    """``?limit=&offset=`` on list routes; other query parameters are ignored."""

    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


# --- auth -----------------------------------------------------------------


class LoginRequest(Request):
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


class ClinicFields(Request):
    """Every editable clinic column of the spec; all optional on update."""

    name: Name | None = None
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
    department_emails: dict[str, EmailStr] | None = None
    working_hours: JsonObject | None = None
    ai_personality: JsonObject | None = None
    ai_behavior: JsonObject | None = None
    status: ClinicStatus | None = None


class ClinicUpdate(ClinicFields):
    pass


class FirstAdmin(Request):
    name: Name
    email: EmailStr
    password: NewPassword


class ClinicCreate(ClinicFields):
    name: Name
    admin: FirstAdmin


class Clinic(BaseModel):
    id: UUID
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
    status: Literal["ok", "down"]
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
