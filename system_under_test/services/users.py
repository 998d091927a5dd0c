"""Users service: CRUD inside the caller's clinic.

RBAC: admins manage everyone but platform admins; managers see everyone and
manage managers and staff; staff have no access here (deny by default).
RLS scopes every statement to the caller's clinic, so another clinic's user
id is simply not found.
"""

from __future__ import annotations

from aiohttp import web
from psycopg import errors as pg_errors

from system_under_test.errors import Conflict, Forbidden, NotFound, ValidationFailed
from system_under_test.routing import Call, Route, json_response
from system_under_test.schemas import PageQuery, User, UserCreate, UserPage, UserUpdate
from system_under_test.services.queries import INSERT_USER, SELECT_USER, USER_COLUMNS

MANAGERS = frozenset({"admin", "manager"})
ADMINS = frozenset({"admin"})
MANAGER_MAY_ASSIGN = frozenset({"manager", "staff"})


def _email_taken() -> Conflict:
    return Conflict("that e-mail is already in use", code="email_taken")


async def list_users(call: Call) -> web.Response:
    page: PageQuery = call.query
    db, tenant = call.platform.db, call.tenant()
    rows = await db.read(
        tenant,
        f"SELECT {USER_COLUMNS}, count(*) OVER () AS total FROM atendeai.users "
        "ORDER BY created_at, id LIMIT %s OFFSET %s",
        (page.limit, page.offset),
    )
    if rows:
        total = rows[0]["total"]
    else:  # a page past the end: how many there are
        total = (await db.read(tenant, "SELECT count(*) AS total FROM atendeai.users"))[0]["total"]
    items = [User.model_validate(row) for row in rows]
    return json_response(UserPage(items=items, total=total, limit=page.limit, offset=page.offset))


async def create_user(call: Call) -> web.Response:
    body: UserCreate = call.body
    if call.user.role == "manager" and body.role not in MANAGER_MAY_ASSIGN:
        raise Forbidden("managers may create managers and staff only")
    password_hash = await call.platform.passwords.hash(body.password)
    try:
        async with call.platform.db.tenant(call.tenant()) as conn:
            cursor = await conn.execute(
                INSERT_USER,
                {
                    "name": body.name,
                    "email": body.email.lower(),
                    "password_hash": password_hash,
                    "role": body.role,
                },
            )
            row = await cursor.fetchone()
    except pg_errors.UniqueViolation:
        raise _email_taken() from None
    return json_response(User.model_validate(row), status=201)


async def get_user(call: Call) -> web.Response:
    user_id = call.path_id("user_id")
    rows = await call.platform.db.read(call.tenant(), SELECT_USER, (user_id,))
    if not rows:
        raise NotFound("no such user")
    row = rows[0]
    return json_response(User.model_validate(row))


async def update_user(call: Call) -> web.Response:
    body: UserUpdate = call.body
    user_id = call.path_id("user_id")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if not changes:
        raise ValidationFailed("send at least one field to change")
    caller_is_manager = call.user.role == "manager"
    if caller_is_manager and changes.get("role", "staff") not in MANAGER_MAY_ASSIGN:
        raise Forbidden("managers may assign the manager and staff roles only")
    if "password" in changes:
        changes["password_hash"] = await call.platform.passwords.hash(changes.pop("password"))
    assignments = ", ".join(f"{column} = %({column})s" for column in changes)
    async with call.platform.db.tenant(call.tenant()) as conn:
        cursor = await conn.execute(
            "SELECT role FROM atendeai.users WHERE id = %s FOR UPDATE", (user_id,)
        )
        target = await cursor.fetchone()
        if target is None:
            raise NotFound("no such user")
        if caller_is_manager and target["role"] not in MANAGER_MAY_ASSIGN:
            raise Forbidden("managers may not change admins")
        cursor = await conn.execute(
            f"UPDATE atendeai.users SET {assignments}, updated_at = now() "
            f"WHERE id = %(id)s RETURNING {USER_COLUMNS}",
            {**changes, "id": user_id},
        )
        row = await cursor.fetchone()
    return json_response(User.model_validate(row))


async def delete_user(call: Call) -> web.Response:
    user_id = call.path_id("user_id")
    if user_id == call.user.user_id:
        raise Conflict("you cannot delete your own account", code="cannot_delete_self")
    async with call.platform.db.tenant(call.tenant()) as conn:
        cursor = await conn.execute("DELETE FROM atendeai.users WHERE id = %s", (user_id,))
        deleted = cursor.rowcount
    if deleted == 0:
        raise NotFound("no such user")
    return web.Response(status=204)


ROUTES = [
    Route(
        "GET",
        "/users",
        list_users,
        "Users of your clinic",
        MANAGERS,
        query=PageQuery,
        responses={200: UserPage},
    ),
    Route(
        "POST",
        "/users",
        create_user,
        "Create a user in your clinic",
        MANAGERS,
        body=UserCreate,
        responses={201: User},
        errors=(409,),
    ),
    Route(
        "GET",
        "/users/{user_id}",
        get_user,
        "One user of your clinic",
        MANAGERS,
        responses={200: User},
    ),
    Route(
        "PATCH",
        "/users/{user_id}",
        update_user,
        "Change a user of your clinic",
        MANAGERS,
        body=UserUpdate,
        responses={200: User},
    ),
    Route(
        "DELETE",
        "/users/{user_id}",
        delete_user,
        "Delete a user of your clinic",
        ADMINS,
        responses={204: None},
        errors=(409,),
    ),
]
