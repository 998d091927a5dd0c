"""Clinics service: read and update your own clinic (cache-aside in Redis,
invalidated on every write); list and create clinics as a platform admin.

The cache is an optimisation: while Redis is away a read goes to PostgreSQL
(``X-Cache: MISS``), a read's cache fill is skipped, and an update is saved
and answered as usual, its invalidation kept by ``RedisGuard.delete_later``
and sent before anything else once Redis answers this process again.

A clinic's slug is its public login name (``POST /auth/login`` names the
clinic): unique across the platform, set when the clinic is created, never
changed by the clinic itself.

Another clinic's id answers exactly like an id that does not exist: the
cache is only consulted for the caller's own clinic, and RLS hides the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from aiohttp import web
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from system_under_test.errors import Conflict, NotFound, StoreUnavailable, ValidationFailed
from system_under_test.metrics import CACHE_HIT_DURATION, CACHE_REQUESTS
from system_under_test.routing import ALL_ROLES, Call, Route, json_response
from system_under_test.schemas import (
    CLINIC_EDITABLE,
    Clinic,
    ClinicCreate,
    ClinicCreated,
    ClinicPage,
    ClinicSummary,
    ClinicUpdate,
    PageQuery,
    User,
)
from system_under_test.services.queries import CLINIC_SELECT_LIST, INSERT_USER, SELECT_CLINIC

log = logging.getLogger("atendeai.clinics")
ADMINS = frozenset({"admin"})
PLATFORM_ADMINS = frozenset({"platform_admin"})
#: Room for "-" and 8 hex digits of the id within the 63 characters of a slug.
MAX_DERIVED_SLUG = 54
JSON_COLUMNS = frozenset({"department_emails", "working_hours", "ai_personality", "ai_behavior"})
_HIT_SECONDS = CACHE_HIT_DURATION.labels("clinic")
#: Set by ``slow_cache_reads()``: this request's cache read answers that many
#: seconds late (the ``slow_cache`` fault of ``ATENDEAI_FAULTS``).
_CACHE_READS_LATE: ContextVar[float] = ContextVar("atendeai_cache_reads_late", default=0.0)


def cache_key(clinic_id: uuid.UUID) -> str:
    return f"atendeai:cache:clinic:{clinic_id}"


@contextmanager
def slow_cache_reads(seconds: float) -> Iterator[None]:
    """Within this block (this request's task), the cache read answers ``seconds``
    late, after its Redis ``GET``, as from a slow Redis: for ``ATENDEAI_FAULTS``
    ``slow_cache`` only."""
    token = _CACHE_READS_LATE.set(seconds)
    try:
        yield
    finally:
        _CACHE_READS_LATE.reset(token)


async def _read_cache(call: Call, key: str) -> str | None:
    """The cached JSON (None: a miss, or Redis away). A hit is timed into
    ``cache_hit_duration_seconds``: a Redis connection, the ``GET`` and its decoding."""
    started = time.perf_counter()
    try:
        async with call.platform.redis_guard.available("clinic cache") as redis:
            cached = await redis.get(key)
            if late := _CACHE_READS_LATE.get():
                await asyncio.sleep(late)
    except StoreUnavailable:  # the cache is an optimisation: read the database
        return None
    if cached is not None:
        _HIT_SECONDS.observe(time.perf_counter() - started)
    return cached


def _target_clinic(call: Call) -> uuid.UUID:
    """The clinic named by the path (``me`` or an id); not the caller's is not found."""
    if "clinic_id" not in call.request.match_info:
        return call.user.clinic_id
    clinic_id = call.path_id("clinic_id")
    if clinic_id != call.user.clinic_id:
        raise NotFound("no such clinic")
    return clinic_id


async def get_clinic(call: Call) -> web.Response:
    clinic_id = _target_clinic(call)
    guard = call.platform.redis_guard
    key = cache_key(clinic_id)
    cached = await _read_cache(call, key)
    if cached is not None:
        CACHE_REQUESTS.labels("clinic", "hit").inc()
        return web.Response(
            text=cached, content_type="application/json", headers={"X-Cache": "HIT"}
        )
    CACHE_REQUESTS.labels("clinic", "miss").inc()
    rows = await call.platform.db.read(call.tenant(), SELECT_CLINIC, (clinic_id,))
    if not rows:
        raise NotFound("no such clinic")
    row = rows[0]
    body = Clinic.model_validate(row).model_dump_json()
    try:
        async with guard.available("clinic cache") as redis:
            await redis.set(key, body, ex=call.platform.settings.clinic_cache_ttl_seconds)
    except StoreUnavailable:
        pass  # answered from the database; the next read fills the cache
    return web.Response(text=body, content_type="application/json", headers={"X-Cache": "MISS"})


def _column_values(fields: dict) -> dict:
    return {k: Jsonb(v) if k in JSON_COLUMNS else v for k, v in fields.items()}


async def update_clinic(call: Call) -> web.Response:
    clinic_id = _target_clinic(call)
    changes = call.body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed("send at least one field to change")
    assignments = ", ".join(f'"{column}" = %({column})s' for column in changes)
    async with call.platform.db.tenant(call.tenant()) as conn:
        cursor = await conn.execute(
            f"UPDATE atendeai.clinics SET {assignments}, updated_at = now() "
            f"WHERE id = %(id)s RETURNING {CLINIC_SELECT_LIST}",
            {**_column_values(changes), "id": clinic_id},
        )
        row = await cursor.fetchone()
        # Inside the transaction: a row that does not read back as a Clinic is
        # rolled back, never committed (it would break every later read).
        clinic = None if row is None else Clinic.model_validate(row)
    if clinic is None:
        raise NotFound("no such clinic")
    guard = call.platform.redis_guard
    try:
        async with guard.available("clinic cache") as redis:
            await redis.delete(cache_key(clinic_id))
    except StoreUnavailable:  # saved: the stale copy is dropped once Redis answers again
        guard.delete_later(cache_key(clinic_id))
    return json_response(clinic)


async def list_clinics(call: Call) -> web.Response:
    page: PageQuery = call.query
    # The listing function checks the context itself: an active platform_admin.
    async with call.platform.db.tenant(call.tenant()) as conn:
        cursor = await conn.execute(
            "SELECT * FROM atendeai.platform_list_clinics(%s, %s)", (page.limit, page.offset)
        )
        rows = await cursor.fetchall()
    items = [ClinicSummary.model_validate(row) for row in rows]
    return json_response(ClinicPage(items=items, limit=page.limit, offset=page.offset))


def slug_from_name(name: str) -> str:
    """``"Clínica São José"`` -> ``"clinica-sao-jose"`` (``"clinic"`` when nothing is left)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_name.lower())
    return "-".join(words)[:MAX_DERIVED_SLUG].strip("-") or "clinic"


async def create_clinic(call: Call) -> web.Response:
    body: ClinicCreate = call.body
    fields = body.model_dump(exclude_unset=True, exclude={"admin", "slug"})
    clinic_id = uuid.uuid4()
    password_hash = await call.platform.passwords.hash(body.admin.password)
    if "slug" in body.model_fields_set:
        candidates = [body.slug]
    else:  # the name's slug, then with a part of the id when another clinic has it
        derived = slug_from_name(body.name)
        candidates = [derived, f"{derived}-{clinic_id.hex[:8]}"]
    for slug in candidates:
        try:
            created = await _insert_clinic(call, clinic_id, {**fields, "slug": slug}, password_hash)
        except pg_errors.UniqueViolation as error:
            if error.diag.constraint_name != "clinics_slug_key":
                raise
            continue
        return json_response(created, status=201)
    raise Conflict(f"the slug {candidates[-1]!r} is already in use", code="slug_taken")


async def _insert_clinic(
    call: Call, clinic_id: uuid.UUID, fields: dict, password_hash: str
) -> ClinicCreated:
    """The clinic and its first admin, in one transaction of the new clinic's context."""
    body: ClinicCreate = call.body
    columns = ", ".join(f'"{c}"' for c in ("id", *fields))
    placeholders = ", ".join(f"%({c})s" for c in ("id", *fields))
    async with call.platform.db.tenant(call.tenant(clinic_id)) as conn:
        cursor = await conn.execute(
            f"INSERT INTO atendeai.clinics ({columns}) VALUES ({placeholders}) "
            f"RETURNING {CLINIC_SELECT_LIST}",
            {**_column_values(fields), "id": clinic_id},
        )
        clinic = Clinic.model_validate(await cursor.fetchone())
        cursor = await conn.execute(
            INSERT_USER,
            {
                "name": body.admin.name,
                "email": body.admin.email.lower(),
                "password_hash": password_hash,
                "role": "admin",
            },
        )
        admin = User.model_validate(await cursor.fetchone())
    return ClinicCreated(clinic=clinic, admin=admin)


assert set(CLINIC_EDITABLE) <= set(Clinic.model_fields), "editable fields must be columns"

ROUTES = [
    Route(
        "GET",
        "/clinics",
        list_clinics,
        "Every clinic (platform admins)",
        PLATFORM_ADMINS,
        query=PageQuery,
        responses={200: ClinicPage},
    ),
    Route(
        "POST",
        "/clinics",
        create_clinic,
        "Create a clinic and its first admin (platform admins)",
        PLATFORM_ADMINS,
        body=ClinicCreate,
        responses={201: ClinicCreated},
        errors=(409,),
    ),
    Route("GET", "/clinics/me", get_clinic, "Your clinic", ALL_ROLES, responses={200: Clinic}),
    Route(
        "PATCH",
        "/clinics/me",
        update_clinic,
        "Change your clinic (admins)",
        ADMINS,
        body=ClinicUpdate,
        responses={200: Clinic},
    ),
    Route(
        "GET",
        "/clinics/{clinic_id}",
        get_clinic,
        "A clinic by id (yours only)",
        ALL_ROLES,
        responses={200: Clinic},
    ),
    Route(
        "PATCH",
        "/clinics/{clinic_id}",
        update_clinic,
        "Change a clinic by id (yours only; admins)",
        ADMINS,
        body=ClinicUpdate,
        responses={200: Clinic},
    ),
]
